"""Fixtures for the eval tests: the character tokenizer and a saved tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from tests.eval.eval_fixtures import EVAL_LLAMA, char_tokenizer
from tests.fixtures.tiny_llama import save_model, tiny_llama

# Tiny models gain nothing from intra-op threads, and on a shared machine the threads only fight each other.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def chars() -> PreTrainedTokenizerFast:
    return char_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, chars: PreTrainedTokenizerFast) -> Path:
    """A randomly initialised tiny Llama with the character tokenizer, saved as an HF directory."""
    return save_model(tiny_llama(len(chars), **EVAL_LLAMA), chars, tmp_path_factory.mktemp("tiny-model"))
