"""report.json and report.md: the paper's quantization table (size, per-character perplexity, Δ, speed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ENGINES = {"llama_cpp": "llama.cpp", "transformers": "transformers"}
"""The engines that score a file, by their report key: llama.cpp first, the one that scores where it runs."""


def write_report(report: dict[str, Any], out_dir: Path) -> None:
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    (out_dir / "report.md").write_text(markdown(report))


def markdown(report: dict[str, Any]) -> str:
    heldout = report["heldout"]
    llama = report["llama_cpp"]
    lines = [
        f"# GGUF quantization of {report['model']}",
        "",
        f"Per-character perplexity on {heldout['characters']} held-out characters ({heldout['documents']} documents, "
        f"window {heldout['window']}, stride {heldout['stride']}); {float32_reference(report)} Δ is against "
        + " and ".join(f"{report[f'{engine}_delta_reference']} ({name})" for engine, name in ENGINES.items()
                       if report.get(f"{engine}_delta_reference"))
        + ". Perplexity is scored by llama.cpp where it runs.",
        "",
        "| type | size (MB) | ppl/char (transformers) | Δ | ppl/char (llama.cpp) | Δ | tokens/s (llama.cpp) | checks |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in report["types"]:
        if "skipped" in row:
            lines.append(f"| {row['type']} | – | – | – | – | – | – | skipped: {row['skipped']} |")
            continue
        hf, cpp = row.get("transformers", {}), row.get("llama_cpp", {})
        lines.append(
            f"| {row['type']} | {row['bytes'] / 1e6:.1f} "
            f"| {_number(hf.get('ppl_per_char'))} | {_pct(hf.get('delta_pct'))} "
            f"| {_number(cpp.get('ppl_per_char'))} | {_pct(cpp.get('delta_pct'))} "
            f"| {_number(cpp.get('tokens_per_second'), 1)} | {_checks(row)} |"
        )
    if not llama["available"]:
        lines += ["", f"llama.cpp columns are empty: {llama['reason']}."]
    lines += comparison_lines(report) + double_quantization_note(report)
    return "\n".join(lines) + "\n"


def float32_reference(report: dict[str, Any]) -> str:
    """The float32 HF model's perplexity where it was scored (the reference without an F16 file)."""
    ppl = report["hf"].get("ppl_per_char")
    if ppl is None:
        return ("the float32 HF model is not scored (the F16 file is the reference; each file's logits are "
                "compared with the HF model's).")
    return f"the float32 HF model: {ppl:.4f}."


def comparison_lines(report: dict[str, Any]) -> list[str]:
    """The types this exporter writes itself against llama.cpp's quantizer on the same F16 file; [] if none ran."""
    rows = [row for row in report["types"] if row.get("llama_quantizer", {}).get("made")]
    if not rows:
        return []
    lines = [
        "",
        "Against llama.cpp's own quantizer (`llama_model_quantize` on the F16 file; both files scored by llama.cpp "
        "on the same windows). Both quantize the half-precision weights, so the files should agree byte for byte "
        "wherever they store a tensor as the same type; weight error is the relative RMS error against the "
        "float32 weights. A file identical to ours in every quantized byte has our perplexity by construction "
        "and is not scored again (marked =).",
        "",
        "| type | ppl/char (ours) | ppl/char (llama.cpp's) | ours vs theirs | bytes differing | weight error (ours) "
        "| weight error (llama.cpp's) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        theirs = row["llama_quantizer"]
        error = theirs["weight_relative_rmse"]
        same = "" if theirs.get("ppl_scored", True) else " (=)"
        lines.append(
            f"| {row['type']} | {_number(row.get('llama_cpp', {}).get('ppl_per_char'))} "
            f"| {_number(theirs.get('ppl_per_char'))}{same} | {_pct(theirs.get('ours_vs_theirs_pct'))} "
            f"| {theirs['bytes_differing_pct']:.2f}% | {error['ours']:.5f} | {error['llama_quantizer']:.5f} |"
        )
    other = {name: why for row in rows for name, why in row["llama_quantizer"]["tensors_of_another_type"].items()}
    if other:
        lines += ["", "Stored as another type by llama.cpp: " + "; ".join(f"{n} ({w})" for n, w in other.items())]
    return lines


def double_quantization_note(report: dict[str, Any]) -> list[str]:
    source = report.get("source_quantization")
    if not source:
        return []
    return ["", f"Double quantization: the base model was shipped as {source.removeprefix('MOSTLY_')} and "
            "dequantized to float32 for training, so every weight that training left untouched is quantized a "
            "second time here; a base shipped in float precision would lose less at each type."]


def _checks(row: dict[str, Any]) -> str:
    notes = ["reads back" if row["readback"]["ok"] else "READ-BACK FAILED"]
    hf = row.get("transformers")
    if hf is not None:
        notes.append(
            f"transformers top-1 {hf['top1_agreement']:.0%}" if hf["loaded"] else f"transformers: {hf.get('error')}"
        )
    cpp = row.get("llama_cpp")
    if cpp is not None:
        if not cpp.get("loaded"):
            notes.append(f"llama.cpp: {cpp.get('error')}")
        else:
            same = "same" if cpp["tokenization_matches_hf"] else "DIFFERENT"
            notes.append(f"llama.cpp tokens {same}, top-1 {cpp['top1_agreement']:.0%}")
    return "; ".join(notes)


def _number(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:+.2f}%"
