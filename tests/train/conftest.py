"""Fixtures of the training tests. The session fixture `tiny` (tokenizers, base model, corpora) lives in
tests/conftest.py, shared with tests/e2e."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from zhllama.data import BlockData, DocumentEncoder, blocks_of_files, list_data_files


@pytest.fixture(autouse=True)
def one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two shared cores: one thread per process is several times faster than two fighting over them."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def blocks(tiny: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> BlockData:
    """The tiny corpus as 32-token blocks of the extended tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny["zh_tokenizer"])
    out = tmp_path_factory.mktemp("blocks")
    encoder = DocumentEncoder(tokenizer.backend_tokenizer, tokenizer.eos_token_id)
    return BlockData(blocks_of_files(list_data_files([tiny["corpus"]]), encoder, 32, out))
