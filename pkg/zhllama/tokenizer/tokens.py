"""Count tokens the same way for every tokenizer the stage handles, so figures are comparable."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sentencepiece as spm
from tokenizers import Tokenizer


def encode_lines(tokenizer: Any, lines: Sequence[str]) -> list[list[int]]:
    """Ids of each line without special tokens, for a `tokenizers.Tokenizer`, a SentencePieceProcessor or a
    transformers tokenizer."""
    if isinstance(tokenizer, Tokenizer):
        return [e.ids for e in tokenizer.encode_batch(list(lines), add_special_tokens=False)]
    if isinstance(tokenizer, spm.SentencePieceProcessor):
        ids: list[list[int]] = tokenizer.encode(list(lines))
        return ids
    encoded: list[list[int]] = tokenizer(list(lines), add_special_tokens=False)["input_ids"]
    return encoded


def tokens_per_char(tokenizer: Any, lines: Sequence[str]) -> float:
    """Tokens per character of `lines` as one text: each line encoded on its own, characters counted with the
    newlines between lines (the convention of Chinese-LLaMA-style vocabulary comparisons)."""
    characters = len("\n".join(lines))
    if characters == 0:
        raise ValueError("no text to measure")
    return sum(len(ids) for ids in encode_lines(tokenizer, lines)) / characters
