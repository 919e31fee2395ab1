"""Write every requested GGUF type, check each file, and measure the paper's quantization table."""

from __future__ import annotations

import gc
import math
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import torch
from transformers import PreTrainedTokenizerBase

from zhllama.errors import UserError
from zhllama.eval.perplexity import PerplexityResult, document_ids, per_char_perplexity
from zhllama.models.provenance import quantized_source
from zhllama.quantize.checks import compare_logits, load_with_transformers, model_logits, read_back
from zhllama.quantize.export import NUMPY_TYPES, export_gguf
from zhllama.quantize.llamacpp import (
    K_QUANTS,
    LLAMA_FTYPES,
    LlamaCppFailed,
    check_file,
    llama_quantize,
    unavailable_reason,
)
from zhllama.quantize.parity import compare_quantizers
from zhllama.quantize.report import write_report

VALID_TYPES = (*NUMPY_TYPES, *K_QUANTS)
CHECK_TOKENS = 128
"""Tokens of held-out text whose logits are compared with the HF model's."""
TOKENIZER_PROBE = "中文分词测试：人工智能（AI）正在改变世界，北京大学的研究者在2023年发布了模型。Hello, world! 12345"

Progress = Callable[[Iterable[str]], Iterable[str]]


@dataclass(frozen=True)
class HeldOut:
    """The text every file is scored on, and what the HF model predicted for it."""

    tokenizer: PreTrainedTokenizerBase
    documents: list[str]
    document_tokens: list[list[int]]
    logits_ids: list[int]
    reference_logits: torch.Tensor
    window: int
    stride: int

    @property
    def characters(self) -> int:
        return sum(len(text) for text in self.documents)


def check_types(types: list[str]) -> None:
    unknown = [t for t in types if t not in VALID_TYPES]
    if unknown or not types:
        raise UserError(f"quantize: unknown GGUF type(s) {unknown or '[]'}; valid types: {', '.join(VALID_TYPES)}")


def gguf_path(out_dir: Path, qtype: str) -> Path:
    return out_dir / f"model-{qtype}.gguf"


def quantize_all(
    model_dir: Path,
    out_dir: Path,
    types: list[str],
    documents: list[str],
    *,
    check_llama_cpp: bool = True,
    window: int = 512,
    stride: int = 384,
    workdir: Path | None = None,
    progress: Progress = lambda items: items,
) -> dict[str, Any]:
    """Write `types` of `model_dir` into `out_dir` as model-<TYPE>.gguf plus report.json and report.md.

    Each file is read back with gguf.GGUFReader and loaded, where llama-cpp-python is installed and
    `check_llama_cpp`, by llama.cpp (tokenization against the HF tokenizer, logits against the HF model's,
    per-character perplexity on `documents`, generation speed), else by transformers (its own GGUF reader and
    Q/K un-permutation: logits and perplexity). K-quants need llama.cpp and are skipped without it. Each type
    this exporter quantizes itself is also made by llama.cpp's quantizer from the F16 file and compared with
    ours (`llama_quantizer`: the bytes that differ, both files' error against float32, its perplexity). Δ is
    against the F16 file; the float32 HF model is scored on `documents` only when no F16 file is written, as
    the reference then.
    """
    check_types(types)
    if not any(documents):
        raise UserError("quantize: the held-out text is empty; pass at least one document for the perplexity table")
    llama_reason = unavailable_reason()
    use_llama_cpp = check_llama_cpp and llama_reason is None
    heldout, hf_tokens, source_ppl = _reference(model_dir, documents, window, stride, scored="F16" not in types)
    report: dict[str, Any] = {
        "model": str(model_dir),
        "heldout": {"documents": len(documents), "characters": heldout.characters, "window": window, "stride": stride},
        "hf": {"ppl_per_char": source_ppl.per_char, "tokens": source_ppl.tokens} if source_ppl else {},
        "llama_cpp": {"available": llama_reason is None, "reason": llama_reason, "checked": check_llama_cpp},
        # weights dequantized from a quantized base and quantized again here: a double quantization
        "source_quantization": quantized_source(model_dir),
        "types": [],
    }
    # numpy types first: a K-quant is made from the F16 file
    ordered = sorted(types, key=lambda t: t in K_QUANTS)
    with tempfile.TemporaryDirectory(dir=workdir, prefix="quantize-") as scratch:
        for qtype in progress(ordered):
            row: dict[str, Any] = {"type": qtype, "via": "llama.cpp" if qtype in K_QUANTS else "gguf"}
            report["types"].append(row)
            started = time.monotonic()
            skipped = _write_file(model_dir, out_dir, qtype, types, Path(scratch), llama_reason)
            if skipped is not None:
                row["skipped"] = skipped
                continue
            path = gguf_path(out_dir, qtype)
            row.update(file=path.name, bytes=path.stat().st_size, seconds=round(time.monotonic() - started, 1))
            reader = gguf.GGUFReader(path)  # one parse per file (seconds for a 50k-token vocabulary), shared
            row["readback"] = read_back(reader, hf_tokens)
            # Each file is loaded and scored once, by the engine its users run. llama.cpp's logits on the F16 file
            # against the HF model's check the exporter's layout (Q/K permutation, vocabulary) as transformers'
            # reader would; the quantized files share that layout, and `llama_quantizer` checks their bytes.
            if use_llama_cpp:
                row["llama_cpp"] = _llama_cpp_row(path, heldout)
            else:
                row["transformers"] = _transformers_row(path, heldout)
            if use_llama_cpp and qtype in LLAMA_FTYPES and qtype not in (*K_QUANTS, "F16"):
                ours = row["llama_cpp"].get("ppl_per_char")
                row["llama_quantizer"] = _llama_quantizer_row(
                    model_dir, out_dir, qtype, types, Path(scratch), heldout, reader, ours
                )
    _add_deltas(report)
    write_report(report, out_dir)
    return report


def _reference(
    model_dir: Path, documents: list[str], window: int, stride: int, *, scored: bool
) -> tuple[HeldOut, list[str], PerplexityResult | None]:
    """What every quantized file is compared with: the HF model's logits, and its perplexity on the held-out text
    when `scored` (the Δ reference where no F16 file is written)."""
    from transformers import AutoModelForCausalLM

    from zhllama.models.loading import load_tokenizer

    tokenizer = load_tokenizer(model_dir, field="model")
    hf_tokens = list(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))))
    document_tokens = [document_ids(tokenizer, text) for text in documents]
    logits_ids = document_tokens[0][:CHECK_TOKENS]
    source = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    source_ppl = per_char_perplexity(source, tokenizer, documents, window, stride) if scored else None
    heldout = HeldOut(
        tokenizer, documents, document_tokens, logits_ids, model_logits(source, logits_ids), window, stride
    )
    del source  # the float32 model is the largest thing in memory: gone before the first export
    gc.collect()
    return heldout, hf_tokens, source_ppl


def _write_file(
    model_dir: Path, out_dir: Path, qtype: str, types: list[str], scratch: Path, llama_reason: str | None
) -> str | None:
    """Write model-<qtype>.gguf; the reason it was skipped, or None."""
    path = gguf_path(out_dir, qtype)
    if qtype not in K_QUANTS:
        export_gguf(model_dir, path, qtype)
        return None
    if llama_reason is not None:
        return f"K-quants are made only by llama.cpp's quantizer: {llama_reason}"
    try:
        llama_quantize(_f16_file(model_dir, out_dir, types, scratch), path, qtype)
    except LlamaCppFailed as error:
        return str(error)
    return None


def _f16_file(model_dir: Path, out_dir: Path, types: list[str], scratch: Path) -> Path:
    """The F16 file llama.cpp's quantizer reads: the published one when F16 was asked for, else one in scratch."""
    f16 = gguf_path(out_dir, "F16") if "F16" in types else scratch / "model-F16.gguf"
    if not f16.is_file():
        export_gguf(model_dir, f16, "F16")
    return f16


def _llama_quantizer_row(
    model_dir: Path, out_dir: Path, qtype: str, types: list[str], scratch: Path, heldout: HeldOut,
    ours: gguf.GGUFReader, our_ppl: float | None,
) -> dict[str, Any]:
    """llama.cpp's quantization of the F16 file to `qtype`, compared with ours and scored as ours is.

    A file whose quantized tensors equal ours byte for byte has our perplexity by construction: it is not
    scored again (`ppl_scored` false): one llama.cpp scoring pass saved per type."""
    theirs = scratch / f"model-{qtype}.llama-quantize.gguf"
    try:
        llama_quantize(_f16_file(model_dir, out_dir, types, scratch), theirs, qtype)
    except LlamaCppFailed as error:
        return {"made": False, "error": str(error)}
    row: dict[str, Any] = {"made": True, "bytes": theirs.stat().st_size,
                           **compare_quantizers(model_dir, ours, gguf.GGUFReader(theirs))}
    identical = row["bytes_differing_pct"] == 0.0 and not row["tensors_of_another_type"]
    row["ppl_scored"] = not identical
    row["ppl_per_char"] = our_ppl if identical else _llama_cpp_row(theirs, heldout).get("ppl_per_char")
    theirs.unlink()
    return row


def _transformers_row(path: Path, heldout: HeldOut) -> dict[str, Any]:
    try:
        model = load_with_transformers(path)
    except (ValueError, NotImplementedError, KeyError, RuntimeError) as error:
        return {"loaded": False, "error": f"{type(error).__name__}: {error}"}
    result = per_char_perplexity(model, heldout.tokenizer, heldout.documents, heldout.window, heldout.stride)
    row: dict[str, Any] = {"loaded": True, "ppl_per_char": result.per_char}
    row.update(compare_logits(model_logits(model, heldout.logits_ids), heldout.reference_logits))
    del model
    gc.collect()
    return row


def _llama_cpp_row(path: Path, heldout: HeldOut) -> dict[str, Any]:
    # every held-out document, whole: llama.cpp must tokenize them as the HF tokenizer does (tied SentencePiece
    # scores included, which both break by position)
    probe_texts = [TOKENIZER_PROBE, *heldout.documents]
    try:
        result = check_file(
            path, probe_texts, heldout.document_tokens, heldout.logits_ids, heldout.window, heldout.stride
        )
    except LlamaCppFailed as error:
        return {"loaded": False, "error": str(error)}
    hf_ids = [list(heldout.tokenizer(text, add_special_tokens=False).input_ids) for text in probe_texts]
    matched = sum(ours == theirs for ours, theirs in zip(result["token_ids"], hf_ids, strict=True))
    return {
        "loaded": True,
        "tokenization_matches_hf": matched == len(hf_ids),
        "tokenization_matched": f"{matched}/{len(hf_ids)} texts",
        "ppl_per_char": math.exp(result["nll"] / heldout.characters),
        "tokens_per_second": result["tokens_per_second"],
        **compare_logits(torch.from_numpy(result["logits"]), heldout.reference_logits),
    }


def _add_deltas(report: dict[str, Any]) -> None:
    """Δ perplexity in percent against the F16 file (the HF model when F16 was not written)."""
    rows = {row["type"]: row for row in report["types"]}
    for engine in ("transformers", "llama_cpp"):
        f16 = rows.get("F16", {}).get(engine, {}).get("ppl_per_char")
        reference = f16 if f16 is not None else report["hf"].get("ppl_per_char")
        report[f"{engine}_delta_reference"] = "F16" if f16 is not None else "HF model" if reference else None
        if reference is None:
            continue  # this engine scored no F16 file, and the float32 model was not scored: no Δ
        for row in rows.values():
            ppl = row.get(engine, {}).get("ppl_per_char")
            if ppl is not None:
                row[engine]["delta_pct"] = 100.0 * (ppl / reference - 1.0)
    for row in rows.values():
        theirs, ours = row.get("llama_quantizer", {}).get("ppl_per_char"), row.get("llama_cpp", {}).get("ppl_per_char")
        if theirs is not None and ours is not None:
            # both files scored by llama.cpp on the same windows: the quantizers' difference alone
            row["llama_quantizer"]["ours_vs_theirs_pct"] = 100.0 * (ours / theirs - 1.0)
