"""Prove the written tokenizer directory behaves as intended, as `transformers.AutoTokenizer` loads it.

SentencePiece bases: tokenizer.json must give exactly SentencePiece's ids. Byte-level BPE bases: text without
Chinese must get exactly the base's ids, and held-out text must decode back to itself.
"""

from __future__ import annotations

import pydoc_data.topics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import sentencepiece as spm
from tokenizers import Tokenizer

from zhllama.tokenizer.bpe_extend import is_chinese_char
from zhllama.tokenizer.tokens import encode_lines

MAX_EXAMPLES = 3
PROBES = [
    "", " ", "  ", "a  b", " leading", "trailing ", "\t tab", "line\nbreak", "crlf\r\nend", "12345 67.8", "3.14",
    "😀👍🏽 emoji", "𠀀𪚥 rare", "é vs e\u0301", "ｆｕｌｌ　ｗｉｄｔｈ", "日本語のテキスト", "한국어",
    "zero\u200bwidth", "no\u00a0break", "中国 人民", "  两个空格  ",
    "人民日报1998年1月1日，新年贺词。", "“引号”《书名》——破折号……",
]
"""Text that trips tokenizer conversions: whitespace runs, byte fallback, normalization, mixed scripts."""


@dataclass
class ParityCheck:
    name: str
    checked: int = 0
    matched: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.matched == self.checked

    def record(self, text: str, expected: Any, got: Any) -> None:
        self.checked += 1
        if expected == got:
            self.matched += 1
        elif len(self.examples) < MAX_EXAMPLES:
            self.examples.append({"text": text[:200], "expected": expected, "got": got})

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def load_hf_tokenizer(directory: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory))


def english_sample() -> list[str]:
    """English text every Python ships: the documentation topics of `pydoc`, one paragraph a line."""
    return [block.strip() for topic in pydoc_data.topics.topics.values() for block in topic.split("\n\n")
            if block.strip()]


def sentencepiece_parity(sp: spm.SentencePieceProcessor, tokenizer: Any, lines: Sequence[str],
                         name: str = "tokenizer.json ids == SentencePiece ids") -> ParityCheck:
    """Ids of each line without special tokens, `tokenizer` (any kind `encode_lines` takes) against SentencePiece."""
    check = ParityCheck(name)
    for text, expected, got in zip(lines, sp.encode(list(lines)), encode_lines(tokenizer, lines), strict=True):
        check.record(text, expected, got)
    return check


def applied_parity(sp: spm.SentencePieceProcessor, directory: Path, lines: Sequence[str]) -> list[ParityCheck]:
    """SentencePiece's ids through every way zhllama and transformers apply the tokenizer in `directory`:
    AutoTokenizer and zhllama's loader (SFT, perplexity, exams, generation) with BOS first, as a model sees a
    document; the prepare stage's document encoder, eos after each document."""
    from zhllama.data.encode import load_document_encoder
    from zhllama.models.loading import load_tokenizer

    eos = sp.eos_id()
    appliers = {"AutoTokenizer ids == BOS + SentencePiece ids": load_hf_tokenizer(directory),
                "zhllama tokenizer ids (SFT, eval, generation) == BOS + SentencePiece ids": load_tokenizer(directory)}
    encoder = load_document_encoder(directory, eos)
    checks = [ParityCheck(name) for name in appliers] + [ParityCheck("prepare encoder ids == SentencePiece ids + eos")]
    for text, want in zip(lines, sp.encode(list(lines)), strict=True):
        for check, tokenizer in zip(checks, appliers.values(), strict=False):
            check.record(text, [sp.bos_id(), *want], list(tokenizer(text)["input_ids"]))
        checks[-1].record(text, [*want, eos], encoder.encode([text]).tolist())
    return checks


def base_identity(base: Tokenizer, hf_tokenizer: Any, lines: Sequence[str]) -> ParityCheck:
    """Ids on text without Chinese characters must be the base's, token for token."""
    sample = [line for line in lines if not any(is_chinese_char(c) for c in line)]
    check = ParityCheck("ids == base ids on text without Chinese")
    for text, expected, got in zip(sample, encode_lines(base, sample), encode_lines(hf_tokenizer, sample),
                                   strict=True):
        check.record(text, expected, got)
    return check


def round_trip(hf_tokenizer: Any, lines: Sequence[str]) -> ParityCheck:
    check = ParityCheck("decode(encode(text)) == text")
    for text, ids in zip(lines, encode_lines(hf_tokenizer, lines), strict=True):
        check.record(text, text, hf_tokenizer.decode(ids))
    return check
