"""The stage graph behind `ctl run pipeline` and `ctl submit pipeline`.

Each stage is a run of its own (`<pipeline-id>-<stage>`) whose inputs are the previous runs' outputs. The
pipeline's state is in the store (runs/<pipeline-id>/pipeline.json), and submitting a stage whose run already
succeeded with the same spec just attaches to it, so re-running a pipeline skips what is done and resumes what
was interrupted (training resumes from its newest checkpoint).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

from zhllama.backends.base import Backend
from zhllama.errors import UserError
from zhllama.run import RunStatus, changed_inputs, now, open_run, run_key, transition
from zhllama.run.heartbeat import Heartbeat
from zhllama.spec import PipelineSpec, StageSpec, TrainSpec, resolve_spec
from zhllama.spec.presets import deep_merge
from zhllama.store import ArtifactStore, open_store

EVAL_VARIANTS = ("base", "pretrain", "sft")


def stage_run_id(pipeline_id: str, step: str) -> str:
    return f"{pipeline_id}-{step}"


def plan(spec: PipelineSpec) -> list[tuple[str, StageSpec]]:
    """(step name, resolved spec) for every step, inputs wired to the previous steps' outputs."""
    pid = spec.run_id

    def output(step: str, name: str) -> str:
        return f"run://{stage_run_id(pid, step)}/outputs/{name}"

    def resolve(stage: str, step: str, wired: dict[str, Any]) -> StageSpec:
        values = deep_merge({"store": spec.store, "seed": spec.seed}, deep_merge(wired, spec.overrides.get(stage, {})))
        return resolve_spec(stage, size=spec.size, run_id=stage_run_id(pid, step), values=values)

    tokenizer = output("tokenizer", "tokenizer")
    # The pretrain step's spec decides the base every other step starts from (its preset, or its override), and
    # the data mixture and block size the prepare step tokenizes.
    pretrain = resolve("pretrain", "pretrain", {"tokenizer": tokenizer})
    assert isinstance(pretrain, TrainSpec)
    base_model, mixture = pretrain.base_model, pretrain
    if "prepare" in spec.stages:
        pretrain = resolve("pretrain", "pretrain", {"tokenizer": tokenizer, "dataset": output("prepare", "dataset")})
        assert isinstance(pretrain, TrainSpec)
    pt_adapter, sft_adapter = output("pretrain", "adapter"), output("sft", "adapter")
    wiring: dict[str, list[tuple[str, dict[str, Any]]]] = {
        "tokenizer": [("tokenizer", {})],
        "prepare": [("prepare", {"tokenizer": tokenizer, "block_size": mixture.block_size,
                                 "data": [source.model_dump() for source in mixture.data]})],
        "sft": [("sft", {"tokenizer": tokenizer, "base_model": base_model, "base_adapters": [pt_adapter]})],
        "merge": [("merge", {"base_model": base_model, "adapters": [pt_adapter, sft_adapter], "tokenizer": tokenizer})],
        "quantize": [("quantize", {"model": output("merge", "model")})],
        "eval": [
            # The same prompt as eval-sft, so the task scores compare the models and not the prompts.
            ("eval-base", {"model": base_model, "instruction_model": True}),
            (
                "eval-pretrain",
                # Perplexity is what pretraining changes; the tasks compare the base with the SFT model.
                {
                    "model": base_model,
                    "adapters": [pt_adapter],
                    "tokenizer": tokenizer,
                    "instruction_model": False,
                    "tasks": [],
                    "sample_prompts": [],
                },
            ),
            ("eval-sft", {"model": output("merge", "model"), "instruction_model": True}),
        ],
    }
    steps: list[tuple[str, StageSpec]] = []
    for stage in spec.stages:
        if stage == "pretrain":
            steps.append(("pretrain", pretrain))
            continue
        steps.extend((step, resolve(stage, step, wired)) for step, wired in wiring.get(stage, [(stage, {})]))
    return steps


def run_pipeline(
    spec: PipelineSpec,
    backend: Backend,
    *,
    on_step: Callable[[str, StageSpec], None] | None = None,
    force: bool = False,
    verify: bool = False,
) -> RunStatus:
    """Run every step in order, each waiting on the last; stops at the first step that does not succeed."""
    store = open_store(spec.store)
    steps = plan(spec)
    record, mine = open_run(store, spec, backend="pipeline", force=force)
    if not mine:
        raise UserError(f"pipeline {spec.run_id} was started by another ctl at this same moment; "
                        f"follow it with `ctl watch {spec.run_id}`")
    # Who drives the pipeline, so a reader can tell a stopped driver from a running one (same host: its pid;
    # any host: its heartbeat).
    transition(store, spec.run_id, "Running", by="pipeline", started=now(), host=socket.gethostname(), pid=os.getpid())
    with Heartbeat(store, spec.run_id, record.attempt):
        return _run_steps(store, spec, steps, backend, on_step, force, verify)


def _run_steps(
    store: ArtifactStore,
    spec: PipelineSpec,
    steps: list[tuple[str, StageSpec]],
    backend: Backend,
    on_step: Callable[[str, StageSpec], None] | None,
    force: bool,
    verify: bool,
) -> RunStatus:
    progress: dict[str, Any] = {"run_id": spec.run_id, "steps": {step: {"run_id": s.run_id} for step, s in steps}}
    for step, step_spec in steps:
        status = _run_step(store, backend, step, step_spec, on_step, force, verify)
        progress["steps"][step].update(state=status.state, reason=status.reason)
        store.write_json(run_key(spec.run_id, "pipeline.json"), {**progress, "updated": now()})
        if status.state != "Succeeded":
            reason, message = f"{step}:{status.reason or status.state}", f"step {step} ({step_spec.run_id}) " \
                f"{status.state}: {status.message}"
            transition(store, spec.run_id, "Failed", by="pipeline", reason=reason, message=message)
            return RunStatus(spec.run_id, "Failed", f"{step} {status.reason}", status.message, stage="pipeline")
    details = {}
    if spec.report:
        from zhllama.report import write_report

        write_report(store, spec, steps)
        details["report"] = store.uri(run_key(spec.run_id, "report", "report.md"))
    transition(store, spec.run_id, "Succeeded", by="pipeline")
    return RunStatus(spec.run_id, "Succeeded", stage="pipeline", details=details)


def _run_step(
    store: ArtifactStore,
    backend: Backend,
    step: str,
    step_spec: StageSpec,
    on_step: Callable[[str, StageSpec], None] | None,
    force: bool,
    verify: bool,
) -> RunStatus:
    if changed_inputs(store, step_spec.run_id, type(step_spec).outputs):
        # An upstream step ran again: this step's finished outputs were made from what it replaced.
        print(f"==> {step}: inputs changed, running it again", flush=True)
        # Its checkpoints were trained on the replaced inputs: start over rather than resume from them.
        store.delete_prefix(run_key(step_spec.run_id, "checkpoints"))
    status = backend.submit(step_spec, force=force, verify=verify)
    if on_step is not None and not status.finished:
        on_step(step, step_spec)
    return backend.wait(step_spec.run_id)
