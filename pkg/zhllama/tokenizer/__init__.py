"""The tokenizer stage: extend a base vocabulary with Chinese pieces (Chinese-LLaMA's recipe), or take a ready
tokenizer (Chinese-LLaMA's own) as it is; either way written so that every stage gets SentencePiece's exact ids.

`build_tokenizer` is the whole stage as a plain function; `run_tokenizer` is its job glue.
"""

from zhllama.tokenizer.base import load_base_tokenizer, load_base_tokenizer_kind
from zhllama.tokenizer.build import build_tokenizer
from zhllama.tokenizer.stage import run_tokenizer
from zhllama.tokenizer.tokens import encode_lines, tokens_per_char

__all__ = [
    "build_tokenizer",
    "encode_lines",
    "load_base_tokenizer",
    "load_base_tokenizer_kind",
    "run_tokenizer",
    "tokens_per_char",
]
