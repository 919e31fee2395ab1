"""Fixtures for the generate tests: a character tokenizer for their prompts and a saved random tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from tests.fixtures.char_tokenizer import chunk_tokenizer
from tests.fixtures.tiny_llama import save_model, tiny_llama
from zhllama.prompts import ALPACA_PROLOGUE

PROMPT_TEXT = "中国的首都是你好再见重来介绍唐朝翻译秦朝写一首诗北京我爱你答案"

# Tiny models gain nothing from intra-op threads, and on a shared machine the threads only fight each other.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def chars() -> PreTrainedTokenizerFast:
    """One token per character of ASCII, the Alpaca template and the tests' prompts, <s> in front."""
    return chunk_tokenizer(sorted(set("".join(map(chr, range(32, 127))) + "\n" + ALPACA_PROLOGUE + PROMPT_TEXT)))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, chars: PreTrainedTokenizerFast) -> Path:
    """A randomly initialised tiny Llama with the character tokenizer, saved as an HF directory."""
    return save_model(tiny_llama(len(chars)), chars, tmp_path_factory.mktemp("tiny-model"))
