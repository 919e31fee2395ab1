"""Whether a SentencePiece BPE model's merges can be written as a tokenizer.json merge list.

SentencePiece merges, at every step, the adjacent pair whose concatenation is the best-scoring piece; among equal
scores the leftmost pair goes first. A tokenizer.json BPE gives every merge one global rank instead. The two agree
whenever no two different pieces share a score, and may disagree when they do: Chinese-LLaMA's merge gives its
~18K new pieces score 0, so which of two tied merges SentencePiece applies depends on where they sit in the text.

Ties alone do not decide it (LLaMA-2's whitespace-run pieces all score -1e9, yet merge to the same pieces in any
order). The decision here: two tied merges *compete* when one piece ends with the symbol the other begins with
(A = x|m, B = m|y, A != B); the model is order-ambiguous when some competing pair tokenizes its own witness text
x+m+y differently in SentencePiece and in the rank order. The witness is the proof, and the report shows it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import sentencepiece as spm
from tokenizers import Tokenizer

from zhllama.tokenizer.proto import ModelProto, sp_pb2

Piece = sp_pb2.ModelProto.SentencePiece
SPACE = "▁"
BATCH = 4096
MAX_WITNESSES = 200_000
"""Competing pairs checked at most (a model without a witness among them is reported as such, with the count)."""


@dataclass(frozen=True)
class MergeOrder:
    tied_pieces: int
    """Mergeable pieces that share their score with another mergeable piece."""
    competing_pairs_checked: int
    """Competing tied merges whose witness text was tokenized both ways."""
    witness: dict[str, Any] | None
    """The first witness where SentencePiece and the rank order differ: pieces, text and both id lists."""

    @property
    def ambiguous(self) -> bool:
        return self.witness is not None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ambiguous": self.ambiguous}

    def describe(self) -> str:
        if self.witness is not None:
            first, second = self.witness["pieces"]
            return (f"order-ambiguous: {self.tied_pieces} mergeable pieces share a score; tied merges {first!r} and "
                    f"{second!r} compete in {self.witness['text']!r}, which SentencePiece tokenizes as "
                    f"{self.witness['sentencepiece']} and a merge list as {self.witness['tokenizer_json']}")
        if self.tied_pieces:
            return (f"not order-ambiguous: {self.tied_pieces} mergeable pieces share a score, but none of "
                    f"{self.competing_pairs_checked} competing tied merges tokenizes differently in a merge list")
        return "not order-ambiguous: every mergeable piece has a score of its own"


def merge_order(model: ModelProto, fast: Tokenizer) -> MergeOrder:
    """Decide whether `fast` (the model's merge list, as `hf_export.sentencepiece_to_fast` writes it) can match
    SentencePiece on every text, as far as tied merges go; stops at the first witness."""
    groups = _tied_groups(model)
    tied = sum(len(pieces) for pieces in groups)
    processor = spm.SentencePieceProcessor(model_proto=model.SerializeToString())
    checked = 0
    pending: list[tuple[str, str, str]] = []
    for candidate in _competing_pairs(groups, model):
        pending.append(candidate)
        if len(pending) == BATCH or checked + len(pending) >= MAX_WITNESSES:
            checked, witness = checked + len(pending), _first_difference(processor, fast, pending)
            pending = []
            if witness is not None or checked >= MAX_WITNESSES:
                return MergeOrder(tied, checked, witness)
    checked, witness = checked + len(pending), _first_difference(processor, fast, pending)
    return MergeOrder(tied, checked, witness)


def _tied_groups(model: ModelProto) -> list[list[str]]:
    """Mergeable pieces (a split into two vocabulary pieces) grouped by score, groups of two or more only."""
    vocab = {p.piece for p in model.pieces if p.type in (Piece.NORMAL, Piece.USER_DEFINED)}
    by_score: dict[float, list[str]] = defaultdict(list)
    for piece in model.pieces:
        text = piece.piece
        if piece.type == Piece.NORMAL and any(text[:cut] in vocab and text[cut:] in vocab
                                              for cut in range(1, len(text))):
            by_score[piece.score].append(text)
    return [pieces for pieces in by_score.values() if len(pieces) > 1]


def _competing_pairs(groups: list[list[str]], model: ModelProto) -> Iterator[tuple[str, str, str]]:
    """(A, B, witness text) for tied pieces A = x|m and B = m|y that compete for the symbol m."""
    vocab = {p.piece for p in model.pieces if p.type in (Piece.NORMAL, Piece.USER_DEFINED)}
    prefix = model.normalizer_spec.add_dummy_prefix
    for pieces in groups:
        ending: dict[str, list[tuple[str, str]]] = defaultdict(list)
        starting: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for piece in pieces:
            for cut in range(1, len(piece)):
                left, right = piece[:cut], piece[cut:]
                if left in vocab and right in vocab:
                    ending[right].append((piece, left))
                    starting[left].append((piece, right))
        for middle in sorted(ending.keys() & starting.keys()):
            for first, left in ending[middle]:
                for second, right in starting[middle]:
                    if first != second:
                        yield first, second, _text(left + middle + right, prefix)


def _text(pieces: str, dummy_prefix: bool) -> str:
    """The text whose normalized form is `pieces` (SentencePiece adds the leading ▁ itself when it prefixes)."""
    text = pieces.replace(SPACE, " ")
    return text[1:] if dummy_prefix and text.startswith(" ") else text


def _first_difference(processor: spm.SentencePieceProcessor, fast: Tokenizer,
                      pending: list[tuple[str, str, str]]) -> dict[str, Any] | None:
    if not pending:
        return None
    texts = [text for *_, text in pending]
    expected = processor.encode(texts)
    for (first, second, text), want, got in zip(pending, expected,
                                                fast.encode_batch_fast(texts, add_special_tokens=False),
                                                strict=True):
        if want != got.ids:
            return {"pieces": [first, second], "text": text, "sentencepiece": want, "tokenizer_json": got.ids}
    return None
