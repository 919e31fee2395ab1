"""The eval tests' vocabulary and model variant: a character tokenizer covering the exam fixtures and prompts, and
the tiny LLaMA (tests.fixtures.tiny_llama) with a context long enough for whole exam prompts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerFast

from tests.fixtures.char_tokenizer import chunk_tokenizer
from zhllama.prompts import ALPACA_PROLOGUE

DATA = Path(__file__).parent / "data"
EXAM_DIR = DATA / "cmmlu_tiny"
CEVAL_DIR = DATA / "ceval_tiny"
EVAL_LLAMA: dict[str, Any] = {"tied": False, "num_key_value_heads": 4, "max_position_embeddings": 2048}
"""tests.fixtures.tiny_llama's parameters for the eval tests: 5-shot exam prompts need the long context."""


def char_tokenizer(extra_text: str = "") -> PreTrainedTokenizerFast:
    """One token per character: ASCII, the exam fixtures, the prompt templates and `extra_text`."""
    text = "".join(chr(code) for code in range(32, 127)) + "\n" + ALPACA_PROLOGUE + extra_text
    # the harness's CMMLU and C-Eval descriptions for the fixture subjects
    text += "以下是关于农学中国历史的单项选择题，请直接给出正确答案的选项。"
    text += "以下是中国关于高中生物的单项选择题，请选出其中的正确答案。"
    text += "".join(path.read_text(encoding="utf-8") for path in sorted(DATA.rglob("*.csv")))
    return chunk_tokenizer(sorted(set(text)))
