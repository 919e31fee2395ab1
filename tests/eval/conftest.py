"""Fixtures for the eval tests: the character tokenizer and a saved tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from tests.eval.tiny_lm import char_tokenizer, save_model, tiny_llama

# Tiny models gain nothing from intra-op threads, and on a shared machine the threads only fight each other.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def chars() -> PreTrainedTokenizerFast:
    return char_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, chars: PreTrainedTokenizerFast) -> Path:
    """A randomly initialised tiny Llama with the character tokenizer, saved as an HF directory."""
    return save_model(tiny_llama(len(chars)), chars, tmp_path_factory.mktemp("tiny-model"))
