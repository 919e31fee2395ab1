"""Gather what a finished pipeline's steps wrote: the small JSON files each stage publishes beside its outputs.

Only the report files are read (never the models or GGUF files next to them), each checked against its
artifact's manifest, so a report of a 33B run on S3 downloads kilobytes.
"""

from __future__ import annotations

import datetime
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zhllama.errors import ArtifactError
from zhllama.run import run_key
from zhllama.spec import StageSpec, TrainSpec
from zhllama.store import ArtifactStore, join_key
from zhllama.store.base import check_file

TRAIN_METRICS = ("metrics", "metrics.jsonl")
"""Training stages publish runs/<id>/metrics/metrics.jsonl (an artifact of its own)."""
STAGE_REPORTS = {"tokenizer": ("outputs/tokenizer", "report.json"), "quantize": ("outputs/gguf", "report.json"),
                 "eval": ("outputs/eval", "report.json"), "prepare": ("outputs/dataset", "dataset.json")}


@dataclass(frozen=True)
class StepRecord:
    step: str
    run_id: str
    stage: str
    state: str
    seconds: float | None
    reused: bool


@dataclass
class PipelineResults:
    steps: list[StepRecord] = field(default_factory=list)
    tokenizer: dict[str, Any] | None = None
    training: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """Training step name (pretrain, sft) -> its metrics records, in step order."""
    evals: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Model label (base, pretrain, sft: the eval step's name without `eval-`) -> the eval report."""
    quantize: dict[str, Any] | None = None
    dataset: dict[str, Any] | None = None
    """The prepare step's dataset.json: its sources in spec order, each with weight and counts (blocks, tokens)."""
    dataset_uri: str | None = None
    pretrain_sources: list[dict[str, Any]] = field(default_factory=list)
    """[{uri, weight}] of a pretrain step that tokenized its own data (no prepared dataset)."""
    missing: list[str] = field(default_factory=list)
    """What could not be read, one line each (shown in the report instead of a section)."""


def read_artifact_file(store: ArtifactStore, artifact: str, name: str) -> bytes:
    """One file of a complete artifact, verified against the manifest's size and sha256 as every fetch is."""
    meta = store.read_manifest(artifact).get("files", {}).get(name)
    uri = store.uri(join_key(artifact, name))
    if meta is None:
        raise ArtifactError(f"{uri} is not in its artifact's manifest; the stage that writes it is older or failed")
    data = store.read_bytes(join_key(artifact, name))
    # check_file reads a local file; a report file is kilobytes, so the detour costs nothing.
    with tempfile.TemporaryDirectory(prefix="zhllama-report-") as scratch:
        local = Path(scratch) / "file"
        local.write_bytes(data)
        check_file(local, meta, uri)
    return data


def step_record(store: ArtifactStore, step: str, spec: StageSpec) -> StepRecord:
    try:
        status = store.read_json(run_key(spec.run_id, "status.json"))
    except FileNotFoundError:
        status = {}
    seconds = None
    if "started" in status and "finished" in status:
        started = datetime.datetime.fromisoformat(status["started"])
        seconds = (datetime.datetime.fromisoformat(status["finished"]) - started).total_seconds()
    return StepRecord(step, spec.run_id, spec.stage, status.get("state", "Unknown"), seconds,
                      bool(status.get("reused")))


def collect(store: ArtifactStore, steps: list[tuple[str, StageSpec]]) -> PipelineResults:
    results = PipelineResults()
    for step, spec in steps:
        results.steps.append(step_record(store, step, spec))
        if isinstance(spec, TrainSpec) and spec.stage == "pretrain" and not spec.dataset:
            results.pretrain_sources = [{"uri": source.uri, "weight": source.weight} for source in spec.data]
        try:
            if spec.stage in ("pretrain", "sft"):
                text = read_artifact_file(store, run_key(spec.run_id, TRAIN_METRICS[0]), TRAIN_METRICS[1]).decode()
                records = [json.loads(line) for line in text.splitlines() if line.strip()]
                results.training[step] = sorted(records, key=lambda r: r["step"])
            elif spec.stage in STAGE_REPORTS:
                output, name = STAGE_REPORTS[spec.stage]
                report = json.loads(read_artifact_file(store, run_key(spec.run_id, output), name))
                if spec.stage == "eval":
                    results.evals[step.removeprefix("eval-")] = report
                elif spec.stage == "prepare":
                    results.dataset_uri = f"run://{spec.run_id}/{output}"
                    if not isinstance(report, dict) or not isinstance(report.get("sources"), list):
                        raise ArtifactError(f"{results.dataset_uri}/{name} lists no sources")
                    results.dataset = report
                elif spec.stage == "tokenizer":
                    results.tokenizer = report
                else:
                    results.quantize = report
        except (ArtifactError, FileNotFoundError) as error:
            results.missing.append(f"{step}: {error}")
    return results
