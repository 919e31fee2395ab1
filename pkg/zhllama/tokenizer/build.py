"""build_tokenizer: from a base tokenizer and Chinese text (or a ready Chinese model) to a verified HF directory."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sentencepiece as spm
from tokenizers import AddedToken, Tokenizer

from zhllama.errors import UserError
from zhllama.tokenizer.base import BaseTokenizer, load_base_tokenizer
from zhllama.tokenizer.bpe_extend import extend_bytelevel_bpe
from zhllama.tokenizer.corpus import CorpusSplit, split_corpus
from zhllama.tokenizer.hf_export import (
    DEFAULT_PAD,
    add_pad_token,
    sentencepiece_to_fast,
    write_hf_directory,
    write_sentencepiece_directory,
)
from zhllama.tokenizer.merge_order import merge_order
from zhllama.tokenizer.parity import (
    PROBES,
    ParityCheck,
    applied_parity,
    base_identity,
    english_sample,
    load_hf_tokenizer,
    round_trip,
    sentencepiece_parity,
)
from zhllama.tokenizer.proto import ModelProto, load_sentencepiece
from zhllama.tokenizer.report import sample_segmentations, write_report
from zhllama.tokenizer.sentencepiece_merge import (
    NewPieceScores,
    chinese_text_pieces,
    merge_sentencepiece,
    train_chinese_sentencepiece,
)
from zhllama.tokenizer.tokens import tokens_per_char

CHINESE_MODEL_FILE = "chinese_sp.model"
OUTPUT_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                "added_tokens.json", CHINESE_MODEL_FILE, "report.json", "report.md")


@dataclass(frozen=True)
class Extended:
    fast: Tokenizer
    pieces_added: int
    special_tokens: dict[str, str]
    extra_config: dict[str, Any]
    details: dict[str, Any]


def build_tokenizer(base: Path, out_dir: Path, *, corpus: Sequence[Path], chinese_sp_model: Path | None = None,
                    extend: bool = True, new_piece_scores: NewPieceScores = "ordered",
                    heldout: Sequence[Path] = (), heldout_lines: int = 3000, vocab_size: int = 20000,
                    model_type: str = "bpe", character_coverage: float = 0.9995,
                    max_training_sentences: int = 2_000_000, add_pad_token: bool = True,
                    parity_lines: int | None = None, num_threads: int = 2, seed: int = 0) -> dict[str, Any]:
    """Write a verified HF tokenizer directory plus report to `out_dir`: `base` extended with Chinese pieces, or
    (extend=False) `base` as it is, ready, e.g. Chinese-LLaMA's own tokenizer.model.

    Extending trains a Chinese SentencePiece model on `corpus` (less the held-out lines) unless `chinese_sp_model`
    is given and merges it into the base. A SentencePiece result is written as tokenizer.json when a merge list
    matches SentencePiece, else for SentencePiece itself (merge_order.py); either way it is checked, as every stage
    applies it, against SentencePiece. A failed check raises UserError and leaves `out_dir` empty.
    """
    started = time.perf_counter()
    base_tokenizer = load_base_tokenizer(base)
    if extend and new_piece_scores == "zero" and base_tokenizer.sp_model is None:
        raise UserError(f"new_piece_scores: 'zero' is Chinese-LLaMA's layout for SentencePiece bases; base_tokenizer "
                        f"{base} is byte-level BPE, which has no scores: use 'ordered'")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="zhllama-tokenizer-") as scratch:
        # A ready tokenizer trains nothing: the corpus is read only for held-out lines, when none are given.
        split = split_corpus(list(corpus) if extend or not heldout else [], list(heldout), heldout_lines,
                             Path(scratch) / "train.txt")
        chinese, chinese_source = (_chinese_model(split, corpus, chinese_sp_model, Path(scratch), base_tokenizer,
                                                  vocab_size=vocab_size, model_type=model_type,
                                                  character_coverage=character_coverage,
                                                  max_training_sentences=max_training_sentences,
                                                  num_threads=num_threads, seed=seed)
                                   if extend else (None, ""))
    try:
        if chinese is not None:
            (out_dir / CHINESE_MODEL_FILE).write_bytes(chinese.SerializeToString())
        if base_tokenizer.sp_model is not None:
            report = _write_sentencepiece(base_tokenizer, chinese, new_piece_scores, out_dir, split.heldout,
                                          add_pad_token, parity_lines)
        else:
            report = _write_bpe(base_tokenizer, chinese, out_dir, split.heldout, add_pad_token, parity_lines)
    except BaseException:
        _empty(out_dir)
        raise
    report["chinese_model"] = (None if chinese is None else
                               {"source": chinese_source, "pieces": len(chinese.pieces), "file": CHINESE_MODEL_FILE})
    report["build_seconds"] = round(time.perf_counter() - started, 2)
    write_report(out_dir, report)
    return report


def _chinese_model(split: CorpusSplit, corpus: Sequence[Path], chinese_sp_model: Path | None, scratch: Path,
                   base: BaseTokenizer, **training: Any) -> tuple[ModelProto, str]:
    """The Chinese SentencePiece model to merge, and where it came from."""
    if chinese_sp_model is not None:
        return load_sentencepiece(chinese_sp_model, "chinese_sp_model"), str(chinese_sp_model)
    if split.train_file is None:
        raise UserError("no corpus to train the Chinese SentencePiece model on; set `corpus` or `chinese_sp_model`")
    model_file = train_chinese_sentencepiece(split.train_file, scratch / "chinese",
                                             corpus_label=", ".join(map(str, corpus)),
                                             split_digits=_splits_digits(base), **training)
    return load_sentencepiece(model_file), f"trained ({training['model_type']}) on {split.train_lines} corpus lines"


def _write_sentencepiece(base: BaseTokenizer, chinese: ModelProto | None, scores: NewPieceScores, out_dir: Path,
                         heldout: list[str], add_pad: bool, parity_lines: int | None) -> dict[str, Any]:
    """The merged (or ready) SentencePiece model as the directory that applies it exactly, checked every way."""
    assert base.sp_model is not None
    merged = None if chinese is None else merge_sentencepiece(base.sp_model, chinese, scores)
    model = base.sp_model if merged is None else merged.model
    processor = spm.SentencePieceProcessor(model_proto=model.SerializeToString())
    checked = heldout if parity_lines is None else heldout[:parity_lines]
    application, fast = decide_application(model, processor, checked)
    special_tokens = _sentencepiece_specials(model, base)
    pad = special_tokens.pop("pad_token", DEFAULT_PAD if add_pad else None)
    carried = {key: (base.config or {})[key] for key in ("chat_template",) if key in (base.config or {})}
    if application["backend"] == "tokenizers":
        for content, special in base.added_tokens:
            token = AddedToken(content, special=special, normalized=False)
            if special:
                fast.add_special_tokens([token])
            else:
                fast.add_tokens([token])
        pad_id = add_pad_token(fast, pad) if pad is not None else None
        write_hf_directory(out_dir, fast, sp_model=model,
                           special_tokens={**special_tokens, **({"pad_token": pad} if pad else {})},
                           extra_config={"add_bos_token": True, "add_eos_token": False, **carried})
    else:
        pad_id = write_sentencepiece_directory(out_dir, model, special_tokens=special_tokens,
                                               added_tokens=list(base.added_tokens), pad=pad, extra_config=carried)
    checks = applied_parity(processor, out_dir, checked)
    _raise_failed(checks, out_dir, base)
    base_measure = spm.SentencePieceProcessor(model_proto=base.sp_model.SerializeToString())
    return {
        "base": {"path": str(base.source), "kind": base.kind, "vocab_size": base.vocab_size},
        "mode": "ready" if merged is None else "extended",
        "new_piece_scores": None if merged is None else scores,
        "pieces_added": 0 if merged is None else len(merged.added),
        "merged_vocab_size": len(model.pieces),
        "pad_token": None if pad is None else {"token": pad, "id": pad_id},
        "vocab_size": len(load_hf_tokenizer(out_dir)),
        "added_sample": [] if merged is None else merged.added[:20],
        "application": application,
        "heldout": {"lines": len(heldout), "characters": len("\n".join(heldout))},
        "tokens_per_char": {"base": tokens_per_char(base_measure, heldout),
                            "extended": tokens_per_char(processor, heldout)},
        "checks": [check.as_dict() for check in checks],
        "samples": sample_segmentations(base_measure, processor, heldout),
    }


def decide_application(model: ModelProto, processor: spm.SentencePieceProcessor,
                       lines: list[str]) -> tuple[dict[str, Any], Tokenizer]:
    """How the model will be applied: "tokenizers" (tokenizer.json, fast) when its merge list matches
    SentencePiece on the competing tied merges, the probes and `lines`; else "sentencepiece" (SentencePiece itself,
    through transformers' SentencePieceBackend). Never a failure: the report says which and why."""
    fast = sentencepiece_to_fast(model)
    order = merge_order(model, fast)
    fast_check = sentencepiece_parity(processor, fast, PROBES + lines)
    if order.ambiguous:
        backend, reason = "sentencepiece", order.describe()
    elif not fast_check.ok:
        backend = "sentencepiece"
        reason = (f"a merge list differs from SentencePiece on {fast_check.checked - fast_check.matched}/"
                  f"{fast_check.checked} probe and held-out lines (first: {fast_check.examples[0]['text'][:60]!r})")
    else:
        backend, reason = "tokenizers", f"{order.describe()}; a merge list matches SentencePiece on every line checked"
    return {"backend": backend, "reason": reason, "merge_order": order.as_dict(),
            "tokenizer_json_parity": fast_check.as_dict()}, fast


def _sentencepiece_specials(model: ModelProto, base: BaseTokenizer) -> dict[str, str]:
    """bos/eos/unk as the model's trainer spec names them, overridden (and pad added) by an HF base's config."""
    spec = model.trainer_spec
    named = {f"{name}_token": model.pieces[index].piece
             for name, index in (("bos", spec.bos_id), ("eos", spec.eos_id), ("unk", spec.unk_id)) if index >= 0}
    config = base.config or {}
    named.update({key: str(config[key]) for key in ("bos_token", "eos_token", "unk_token", "pad_token")
                  if isinstance(config.get(key), str)})
    return named


def _raise_failed(checks: Sequence[ParityCheck], out_dir: Path, base: BaseTokenizer) -> None:
    for check in checks:
        if not check.ok:
            example = check.examples[0]
            raise UserError(f"tokenizer check failed for {out_dir}: {check.name} on {check.matched}/{check.checked} "
                            f"lines (first: {example['text'][:60]!r}); report this with the base tokenizer "
                            f"{base.source}")


def _write_bpe(base: BaseTokenizer, chinese: ModelProto | None, out_dir: Path, heldout: list[str], add_pad: bool,
               parity_lines: int | None) -> dict[str, Any]:
    assert base.fast is not None
    extended = _extend_bpe(base, chinese)
    merged_vocab_size = extended.fast.get_vocab_size(with_added_tokens=True)
    special_tokens = dict(extended.special_tokens)
    pad = None
    if add_pad:
        pad_id = add_pad_token(extended.fast)
        special_tokens["pad_token"] = DEFAULT_PAD
        pad = {"token": DEFAULT_PAD, "id": pad_id}
    write_hf_directory(out_dir, extended.fast, sp_model=None, special_tokens=special_tokens,
                       extra_config=extended.extra_config)
    loaded = load_hf_tokenizer(out_dir)
    checked = heldout if parity_lines is None else heldout[:parity_lines]
    checks = [base_identity(base.fast, loaded, english_sample() + checked), round_trip(loaded, checked)]
    _raise_failed(checks, out_dir, base)
    return {
        "base": {"path": str(base.source), "kind": base.kind, "vocab_size": base.vocab_size},
        "mode": "extended" if chinese is not None else "ready",
        "pieces_added": extended.pieces_added,
        "merged_vocab_size": merged_vocab_size,
        "pad_token": pad,
        "vocab_size": len(loaded),
        **extended.details,
        "application": {"backend": "tokenizers", "reason": "byte-level BPE: tokenizer.json is the tokenizer"},
        "heldout": {"lines": len(heldout), "characters": len("\n".join(heldout))},
        "tokens_per_char": {"base": tokens_per_char(base.fast, heldout), "extended": tokens_per_char(loaded, heldout)},
        "checks": [check.as_dict() for check in checks],
        "samples": sample_segmentations(base.fast, loaded, heldout),
    }


def _extend_bpe(base: BaseTokenizer, chinese: ModelProto | None) -> Extended:
    assert base.fast is not None
    config = base.config or {}
    special_tokens = {key: str(config[key]) for key in ("bos_token", "eos_token", "unk_token")
                      if isinstance(config.get(key), str)}
    carried = ("chat_template", "add_bos_token", "add_eos_token")
    extra: dict[str, Any] = {key: config[key] for key in carried if key in config}
    if chinese is None:
        return Extended(Tokenizer.from_str(base.fast.to_str()), 0, special_tokens, extra, {})
    extended = extend_bytelevel_bpe(base.fast, chinese_text_pieces(chinese))
    details = {"helper_tokens": extended.helper_tokens, "chinese_pieces_skipped": extended.skipped,
               "added_sample": extended.added[:20]}
    return Extended(extended.tokenizer, len(extended.added) + extended.helper_tokens, special_tokens, extra, details)


def _splits_digits(base: BaseTokenizer) -> bool:
    """Train the Chinese model the way the base treats numbers, so new pieces do not re-merge digits."""
    return bool(base.sp_model.trainer_spec.split_digits) if base.sp_model is not None else True


def _empty(out_dir: Path) -> None:
    for name in OUTPUT_FILES:
        (out_dir / name).unlink(missing_ok=True)
