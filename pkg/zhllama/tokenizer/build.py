"""build_tokenizer: from a base tokenizer and Chinese text (or a ready Chinese model) to a verified HF directory."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sentencepiece as spm
from tokenizers import Tokenizer

from zhllama.errors import UserError
from zhllama.tokenizer.base import BaseTokenizer, load_base_tokenizer
from zhllama.tokenizer.bpe_extend import extend_bytelevel_bpe
from zhllama.tokenizer.corpus import split_corpus
from zhllama.tokenizer.hf_export import DEFAULT_PAD, add_pad_token, sentencepiece_to_fast, write_hf_directory
from zhllama.tokenizer.parity import (
    ParityCheck,
    base_identity,
    english_sample,
    load_hf_tokenizer,
    round_trip,
    sentencepiece_parity,
)
from zhllama.tokenizer.proto import ModelProto, load_sentencepiece
from zhllama.tokenizer.report import sample_segmentations, write_report
from zhllama.tokenizer.sentencepiece_merge import (
    chinese_text_pieces,
    merge_sentencepiece,
    train_chinese_sentencepiece,
)
from zhllama.tokenizer.tokens import tokens_per_char

CHINESE_MODEL_FILE = "chinese_sp.model"
OUTPUT_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                CHINESE_MODEL_FILE, "report.json", "report.md")


@dataclass(frozen=True)
class Extended:
    fast: Tokenizer
    sp_model: ModelProto | None
    pieces_added: int
    special_tokens: dict[str, str]
    extra_config: dict[str, Any]
    details: dict[str, Any]


def build_tokenizer(base: Path, out_dir: Path, *, corpus: Sequence[Path], chinese_sp_model: Path | None = None,
                    heldout: Sequence[Path] = (), heldout_lines: int = 3000, vocab_size: int = 20000,
                    model_type: str = "bpe", character_coverage: float = 0.9995,
                    max_training_sentences: int = 2_000_000, add_pad_token: bool = True,
                    parity_lines: int | None = None, num_threads: int = 2, seed: int = 0) -> dict[str, Any]:
    """Extend `base` with Chinese pieces and write a verified HF tokenizer directory plus report to `out_dir`.

    Trains a Chinese SentencePiece model on `corpus` (less the held-out lines) unless `chinese_sp_model` is given,
    merges it into the base, writes tokenizer.json (+ tokenizer.model for SentencePiece bases), checks it as
    transformers loads it, and returns the report. A failed check raises UserError and leaves `out_dir` empty.
    """
    started = time.perf_counter()
    base_tokenizer = load_base_tokenizer(base)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="zhllama-tokenizer-") as scratch:
        split = split_corpus(list(corpus), list(heldout), heldout_lines, Path(scratch) / "train.txt")
        if chinese_sp_model is not None:
            chinese = load_sentencepiece(chinese_sp_model, "chinese_sp_model")
            chinese_source = str(chinese_sp_model)
        elif split.train_file is None:
            raise UserError("no corpus to train the Chinese SentencePiece model on; set `corpus` or "
                            "`chinese_sp_model`")
        else:
            model_file = train_chinese_sentencepiece(
                split.train_file, Path(scratch) / "chinese", corpus_label=", ".join(map(str, corpus)),
                vocab_size=vocab_size, model_type=model_type,
                character_coverage=character_coverage, max_training_sentences=max_training_sentences,
                num_threads=num_threads, seed=seed, split_digits=_splits_digits(base_tokenizer))
            chinese = load_sentencepiece(model_file)
            chinese_source = f"trained ({model_type}) on {split.train_lines} corpus lines"
    try:
        report = _write_and_check(base_tokenizer, chinese, out_dir, split.heldout, add_pad_token, parity_lines)
    except BaseException:
        _empty(out_dir)
        raise
    report["chinese_model"] = {"source": chinese_source, "pieces": len(chinese.pieces), "file": CHINESE_MODEL_FILE}
    report["build_seconds"] = round(time.perf_counter() - started, 2)
    write_report(out_dir, report)
    return report


def _write_and_check(base: BaseTokenizer, chinese: ModelProto, out_dir: Path, heldout: list[str],
                     add_pad: bool, parity_lines: int | None) -> dict[str, Any]:
    (out_dir / CHINESE_MODEL_FILE).write_bytes(chinese.SerializeToString())
    extended = _extend_sentencepiece(base, chinese) if base.sp_model is not None else _extend_bpe(base, chinese)
    merged_vocab_size = extended.fast.get_vocab_size(with_added_tokens=True)
    special_tokens = dict(extended.special_tokens)
    pad = None
    if add_pad:
        pad_id = add_pad_token(extended.fast)
        special_tokens["pad_token"] = DEFAULT_PAD
        pad = {"token": DEFAULT_PAD, "id": pad_id}
    write_hf_directory(out_dir, extended.fast, sp_model=extended.sp_model, special_tokens=special_tokens,
                       extra_config=extended.extra_config)
    loaded = load_hf_tokenizer(out_dir)
    checked = heldout if parity_lines is None else heldout[:parity_lines]
    checks: list[ParityCheck]
    if extended.sp_model is not None:
        processor = spm.SentencePieceProcessor(model_proto=extended.sp_model.SerializeToString())
        base_measure: Any = spm.SentencePieceProcessor(model_proto=base.sp_model.SerializeToString())  # type: ignore[union-attr]
        checks = [sentencepiece_parity(processor, loaded, checked)]
        extended_measure: Any = processor
    else:
        assert base.fast is not None
        base_measure = base.fast
        checks = [base_identity(base.fast, loaded, english_sample() + checked), round_trip(loaded, checked)]
        extended_measure = loaded
    for check in checks:
        if not check.ok:
            example = check.examples[0]
            raise UserError(f"tokenizer check failed for {out_dir}: {check.name} on {check.matched}/{check.checked} "
                            f"lines (first: {example['text'][:60]!r}); report this with the base tokenizer "
                            f"{base.source}")
    return {
        "base": {"path": str(base.source), "kind": base.kind, "vocab_size": base.vocab_size},
        "pieces_added": extended.pieces_added,
        "merged_vocab_size": merged_vocab_size,
        "pad_token": pad,
        "vocab_size": len(loaded),
        **extended.details,
        "heldout": {"lines": len(heldout), "characters": len("\n".join(heldout))},
        "tokens_per_char": {"base": tokens_per_char(base_measure, heldout),
                            "extended": tokens_per_char(extended_measure, heldout)},
        "checks": [check.as_dict() for check in checks],
        "samples": sample_segmentations(base_measure, extended_measure, heldout),
    }


def _extend_sentencepiece(base: BaseTokenizer, chinese: ModelProto) -> Extended:
    assert base.sp_model is not None
    merged = merge_sentencepiece(base.sp_model, chinese)
    spec = merged.model.trainer_spec
    special_tokens = {f"{name}_token": merged.model.pieces[index].piece
                      for name, index in (("bos", spec.bos_id), ("eos", spec.eos_id), ("unk", spec.unk_id))
                      if index >= 0}
    return Extended(sentencepiece_to_fast(merged.model), merged.model, len(merged.added), special_tokens,
                    extra_config={"add_bos_token": True, "add_eos_token": False},
                    details={"added_sample": merged.added[:20]})


def _extend_bpe(base: BaseTokenizer, chinese: ModelProto) -> Extended:
    assert base.fast is not None
    extended = extend_bytelevel_bpe(base.fast, chinese_text_pieces(chinese))
    config = base.config or {}
    special_tokens = {key: str(config[key]) for key in ("bos_token", "eos_token", "unk_token")
                      if isinstance(config.get(key), str)}
    carried = ("chat_template", "add_bos_token", "add_eos_token")
    extra: dict[str, Any] = {key: config[key] for key in carried if key in config}
    details = {"helper_tokens": extended.helper_tokens, "chinese_pieces_skipped": extended.skipped,
               "added_sample": extended.added[:20]}
    return Extended(extended.tokenizer, None, len(extended.added) + extended.helper_tokens, special_tokens, extra,
                    details)


def _splits_digits(base: BaseTokenizer) -> bool:
    """Train the Chinese model the way the base treats numbers, so new pieces do not re-merge digits."""
    return bool(base.sp_model.trainer_spec.split_digits) if base.sp_model is not None else True


def _empty(out_dir: Path) -> None:
    for name in OUTPUT_FILES:
        (out_dir / name).unlink(missing_ok=True)
