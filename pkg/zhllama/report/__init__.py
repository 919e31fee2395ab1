"""The run report of a finished pipeline: runs/<pipeline-id>/report/ (report.md and its PNG figures).

It answers one question: did the model get better at Chinese (and how much English did it keep)? Tokens per
character of the two vocabularies, the pretraining data mixture, the training curves, held-out Chinese
per-character and English per-token perplexity before and after pretraining and SFT, held-out task scores of
the base and the tuned model with the exact prompt, the quantization table, and sample generations.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from zhllama.report.collect import PipelineResults, collect
from zhllama.report.markdown import (
    languages_section,
    mixture_section,
    perplexity_section,
    quantize_section,
    samples_section,
    steps_table,
    summary,
    tasks_section,
    tokenizer_section,
    training_section,
)
from zhllama.run import run_key, spec_record
from zhllama.spec import PipelineSpec, StageSpec
from zhllama.store import ArtifactStore

REPORT = "report"


def render(pipeline: PipelineSpec, results: PipelineResults, out_dir: Path) -> str:
    """report.md for `results`, drawing the figures it links into `out_dir`."""
    lines = [f"# Pipeline {pipeline.run_id}", "",
             f"Size preset `{pipeline.size}`, store `{pipeline.store}`, stages: {', '.join(pipeline.stages)}.", ""]
    lines += steps_table(results) + [""]
    headline = summary(results)
    if headline:
        lines += ["## Summary", "", *headline, ""]
    if results.tokenizer:
        lines += tokenizer_section(results.tokenizer) + [""]
    mixture = mixture_section(results)
    if mixture:
        lines += mixture + [""]
    if results.training:
        lines += training_section(results.training, out_dir) + [""]
    if results.evals:
        lines += languages_section(results)
        lines += perplexity_section(results, out_dir)
        lines += tasks_section(results, out_dir)
    if results.quantize:
        lines += quantize_section(results.quantize) + [""]
    lines += samples_section(results)
    if results.missing:
        lines += ["## Not available", "", *(f"- {line}" for line in results.missing), ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def write_report(store: ArtifactStore, pipeline: PipelineSpec, steps: list[tuple[str, StageSpec]]) -> str:
    """Build the report from the steps' outputs and publish it as runs/<pipeline-id>/report; returns its key."""
    results = collect(store, steps)
    key = run_key(pipeline.run_id, REPORT)
    with tempfile.TemporaryDirectory(prefix="zhllama-report-") as tmp:
        out_dir = Path(tmp)
        (out_dir / "report.md").write_text(render(pipeline, results, out_dir), encoding="utf-8")
        extra: dict[str, Any] = {"steps": {step: spec.run_id for step, spec in steps}}
        store.publish_dir(out_dir, key, spec=spec_record(pipeline), extra=extra, progress=False)
    return key


__all__ = ["REPORT", "PipelineResults", "collect", "render", "write_report"]
