"""Tiny models for the GGUF export tests, built once per module."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.quantize.quantize_fixtures import bpe_tokenizer, sentencepiece_tokenizer, tiny_llama


@pytest.fixture(scope="module")
def bpe_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bpe")
    return tiny_llama(root / "model", bpe_tokenizer(root / "tokenizer"))


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Untied, with 3 more embedding rows than tokens (padded vocabularies are common)."""
    root = tmp_path_factory.mktemp("spm")
    return tiny_llama(root / "model", sentencepiece_tokenizer(root / "tokenizer"), extra_rows=3, tied=False)
