"""Train the Chinese SentencePiece model and merge its pieces into a SentencePiece base, Chinese-LLaMA style."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import sentencepiece as spm

from zhllama.errors import UserError
from zhllama.tokenizer.proto import ModelProto, load_sentencepiece, sp_pb2

Piece = sp_pb2.ModelProto.SentencePiece
# Pieces that are not text: unknown, control (<s>) and byte-fallback pieces are the base's business.
NON_TEXT_TYPES = (Piece.UNKNOWN, Piece.CONTROL, Piece.BYTE, Piece.UNUSED)
SP_TOO_LARGE = re.compile(r"Vocabulary size too high.*?(\d+)\D*$", re.DOTALL)
SP_TOO_SMALL = re.compile(r"Vocabulary size is smaller than required_chars\. \d+ vs (\d+)")
MAX_SENTENCE_BYTES = 1 << 16
NewPieceScores = Literal["ordered", "zero"]


def train_chinese_sentencepiece(train_file: Path, model_prefix: Path, *, corpus_label: str, vocab_size: int,
                                model_type: str,
                                character_coverage: float, max_training_sentences: int, num_threads: int,
                                seed: int, split_digits: bool) -> Path:
    """Train the Chinese model on `train_file` (one sentence a line); returns the .model path. Errors name
    `corpus_label`, the user's corpus, not the scratch file.

    Normalisation is the identity: the pieces must match text exactly as the base sees it (SentencePiece's default
    NFKC would learn "," where the text has "，", and those pieces would never match at encode time).
    """
    spm.set_random_generator_seed(seed)
    try:
        spm.SentencePieceTrainer.train(
            input=str(train_file), model_prefix=str(model_prefix), vocab_size=vocab_size, model_type=model_type,
            character_coverage=character_coverage, input_sentence_size=max_training_sentences,
            shuffle_input_sentence=True, num_threads=num_threads, normalization_rule_name="identity",
            split_digits=split_digits, max_sentence_length=MAX_SENTENCE_BYTES, byte_fallback=False,
            minloglevel=1,
        )
    except RuntimeError as error:
        text = str(error).strip()
        if too_large := SP_TOO_LARGE.search(text):
            raise UserError(f"corpus {corpus_label}: vocab_size {vocab_size} is too large for this corpus "
                            f"(sentencepiece allows at most {too_large.group(1)}); lower vocab_size or add "
                            "text") from error
        if too_small := SP_TOO_SMALL.search(text):
            raise UserError(f"corpus {corpus_label}: vocab_size {vocab_size} is smaller than the "
                            f"{too_small.group(1)} characters the corpus needs at character_coverage "
                            f"{character_coverage}; raise vocab_size or lower character_coverage") from error
        last = text.splitlines()[-1] if text else repr(error)
        raise UserError(f"corpus {corpus_label}: training the Chinese SentencePiece model failed ({last}); "
                        "check the corpus and vocab_size") from error
    model_file = model_prefix.with_suffix(".model")
    # SentencePiece records the scratch paths it trained from; drop them so the same corpus gives the same bytes
    # wherever the run's scratch directory is (a directory store, S3, another machine).
    proto = load_sentencepiece(model_file)
    del proto.trainer_spec.input[:]
    proto.trainer_spec.model_prefix = ""
    model_file.write_bytes(proto.SerializeToString())
    return model_file


def chinese_text_pieces(chinese: ModelProto) -> list[str]:
    """The Chinese model's text pieces in its own order (best-scoring first, as SentencePiece stores them)."""
    return [p.piece for p in chinese.pieces if p.type not in NON_TEXT_TYPES]


@dataclass(frozen=True)
class MergedSentencePiece:
    model: ModelProto
    added: list[str]


def merge_sentencepiece(base: ModelProto, chinese: ModelProto,
                        new_piece_scores: NewPieceScores = "ordered") -> MergedSentencePiece:
    """Append the Chinese pieces the base lacks, in the Chinese model's order; base pieces keep their ids.

    "ordered": each new text piece gets a distinct score below every scored base piece, in the Chinese model's
    order. The base merges first (its own text segments as before), then the Chinese pieces in the order the
    Chinese model ranks them, and a tokenizer.json merge list matches SentencePiece exactly.

    "zero": Chinese-LLaMA's merge_tokenizers.py, byte for byte: every piece the base lacks (whatever its type) is
    appended as a piece with score 0 and no type set. The new pieces tie, SentencePiece breaks ties by position,
    and only SentencePiece itself tokenizes like that (see merge_order.py).
    """
    merged = sp_pb2.ModelProto()
    merged.CopyFrom(base)
    existing = {p.piece for p in base.pieces}
    scored = [p.score for p in base.pieces if p.type == Piece.NORMAL and p.score > -1e8]
    next_score = (min(scored) if scored else 0.0) - 1.0
    added: list[str] = []
    for piece in chinese.pieces:
        if piece.piece in existing or (new_piece_scores == "ordered" and piece.type in NON_TEXT_TYPES):
            continue
        new = merged.pieces.add()
        new.piece = piece.piece
        if new_piece_scores == "zero":
            new.score = 0
        else:
            new.score, new.type = next_score, Piece.NORMAL
            next_score -= 1.0
        existing.add(piece.piece)
        added.append(piece.piece)
    return MergedSentencePiece(merged, added)
