"""Extend a byte-level BPE tokenizer (SmolLM2, LLaMA-3 kind) with the Chinese SentencePiece model's pieces.

A byte-level BPE only produces a token if a merge builds it, so every new piece gets new merges, appended after the
base's: first the bytes of each Chinese character are joined into one token, then words are built from two
shorter tokens, in the Chinese model's order. Every new merge yields a token whose bytes begin a Chinese character
(see `is_anchored`), so on text without Chinese characters no new merge can fire and the ids are exactly the
base's: English keeps its tokenization.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from tokenizers import Tokenizer

SPACE = "▁"
# Code point blocks counted as Chinese: CJK symbols and punctuation, CJK unified ideographs (with extension A),
# compatibility ideographs, half- and fullwidth forms (fullwidth digits and punctuation of Chinese text).
CHINESE_BLOCKS = ((0x3000, 0x303F), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0xFF00, 0xFFEF))


def is_chinese_char(char: str) -> bool:
    return any(low <= ord(char) <= high for low, high in CHINESE_BLOCKS)


@lru_cache(maxsize=1)
def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map of bytes to printable characters, which byte-level BPE vocabularies are written in."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


@lru_cache(maxsize=1)
def _unicode_to_byte() -> dict[str, int]:
    return {char: b for b, char in _byte_to_unicode().items()}


def to_byte_level(text: str) -> str:
    table = _byte_to_unicode()
    return "".join(table[b] for b in text.encode("utf-8"))


def token_bytes(token: str) -> bytes:
    table = _unicode_to_byte()
    return bytes(table[c] for c in token)


def is_anchored(data: bytes) -> bool:
    """True if `data` holds a UTF-8 lead byte and its first continuation byte that together can only start a
    Chinese character: text holding these bytes contains Chinese, so a merge producing them cannot fire elsewhere."""
    for lead, follow in zip(data, data[1:], strict=False):
        if 0xE0 <= lead <= 0xEF and 0x80 <= follow <= 0xBF:
            first = ((lead & 0x0F) << 12) | ((follow & 0x3F) << 6)
            if any(low <= first and first + 0x3F <= high for low, high in CHINESE_BLOCKS):
                return True
    return False


@dataclass(frozen=True)
class ExtendedBPE:
    tokenizer: Tokenizer
    added: list[str]
    """New Chinese words and characters, as text, in the order their tokens were appended."""
    helper_tokens: int
    """Partial-character tokens added only as steps towards a character."""
    skipped: int
    """Chinese model pieces left out: not all Chinese, or split apart by the base's pre-tokenizer."""


def candidate_words(pieces: Iterable[str], base: Tokenizer) -> tuple[list[str], int]:
    """The Chinese model's pieces that a byte-level BPE can hold as one token, in order, without duplicates."""
    pre_tokenizer = base.pre_tokenizer
    seen: set[str] = set()
    words: list[str] = []
    skipped = 0
    for piece in pieces:
        word = piece.lstrip(SPACE)
        if not word or word in seen:
            continue
        whole = pre_tokenizer is None or [s for s, _ in pre_tokenizer.pre_tokenize_str(word)] == [to_byte_level(word)]
        if not all(is_chinese_char(c) for c in word) or not whole:
            skipped += 1
            continue
        seen.add(word)
        words.append(word)
    return words, skipped


def extend_bytelevel_bpe(base: Tokenizer, pieces: list[str]) -> ExtendedBPE:
    """Append tokens and merges for the Chinese `pieces` (Chinese model order) to the byte-level BPE `base`."""
    data: dict[str, Any] = json.loads(base.to_str())
    model = data["model"]
    vocab: dict[str, int] = model["vocab"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    known_merges = set(merges)
    first_id = next_id = base.get_vocab_size(with_added_tokens=True)
    words, skipped = candidate_words(pieces, base)
    characters = list(dict.fromkeys(c for word in words for c in word))
    added: list[str] = []

    def add_merge(left: str, right: str) -> str:
        nonlocal next_id
        token = left + right
        if (left, right) not in known_merges:
            assert is_anchored(token_bytes(token)), token
            merges.append((left, right))
            known_merges.add((left, right))
        if token not in vocab:
            vocab[token] = next_id
            next_id += 1
        return token

    for char in characters:
        target = to_byte_level(char)
        if target in vocab:
            continue
        parts = base.model.tokenize(target)
        token = parts[0].value
        for part in parts[1:]:
            token = add_merge(token, part.value)
        added.append(char)
    formed = {to_byte_level(c) for c in characters}
    for word in words:
        if len(word) == 1 or to_byte_level(word) in vocab:
            continue
        steps = _build_steps(word, formed)
        for left, right in steps:
            formed.add(add_merge(to_byte_level(left), to_byte_level(right)))
        added.append(word)
    model["vocab"] = vocab
    model["merges"] = [list(m) for m in merges]
    return ExtendedBPE(Tokenizer.from_str(json.dumps(data)), added, next_id - first_id - len(added), skipped)


def _build_steps(word: str, formed: set[str]) -> list[tuple[str, str]]:
    """The merges that build `word` from tokens already formed: one merge of its most balanced split into two
    tokens, as a BPE Chinese model always has; else (a unigram Chinese model) a chain over its greedy longest-token
    segmentation, whose intermediate prefixes become helper tokens."""
    cuts = [cut for cut in range(1, len(word))
            if to_byte_level(word[:cut]) in formed and to_byte_level(word[cut:]) in formed]
    if cuts:
        cut = min(cuts, key=lambda c: abs(len(word) - 2 * c))
        return [(word[:cut], word[cut:])]
    parts: list[str] = []
    start = 0
    while start < len(word):
        end = next(end for end in range(len(word), start, -1) if to_byte_level(word[start:end]) in formed)
        parts.append(word[start:end])
        start = end
    steps = []
    prefix = parts[0]
    for part in parts[1:]:
        steps.append((prefix, part))
        prefix += part
    return steps
