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

from zhllama.backends.base import Backend, RunStatus
from zhllama.errors import UserError
from zhllama.runs import changed_inputs, now, run_key, spec_record
from zhllama.spec import PipelineSpec, StageSpec, resolve_spec
from zhllama.spec.presets import deep_merge, preset_values
from zhllama.store import ArtifactStore, open_store

EVAL_VARIANTS = ("base", "pretrain", "sft")


def stage_run_id(pipeline_id: str, step: str) -> str:
    return f"{pipeline_id}-{step}"


def plan(spec: PipelineSpec) -> list[tuple[str, StageSpec]]:
    """(step name, resolved spec) for every step, inputs wired to the previous steps' outputs."""
    pid = spec.run_id

    def output(step: str, name: str) -> str:
        return f"run://{stage_run_id(pid, step)}/outputs/{name}"

    base_model = deep_merge(preset_values(spec.size, "pretrain"), spec.overrides.get("pretrain", {})).get(
        "base_model", "embedded://smollm2-135m"
    )
    tokenizer = output("tokenizer", "tokenizer")
    pt_adapter, sft_adapter = output("pretrain", "adapter"), output("sft", "adapter")
    wiring: dict[str, list[tuple[str, dict[str, Any]]]] = {
        "tokenizer": [("tokenizer", {})],
        "pretrain": [("pretrain", {"tokenizer": tokenizer, "base_model": base_model})],
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
        for step, wired in wiring.get(stage, [(stage, {})]):
            values = deep_merge(wired, spec.overrides.get(stage, {}))
            values = deep_merge({"store": spec.store, "seed": spec.seed}, values)
            steps.append((step, resolve_spec(stage, size=spec.size, run_id=stage_run_id(pid, step), values=values)))
    return steps


def changed_inputs_of(store: ArtifactStore, spec: StageSpec) -> list[str]:
    """The inputs of a finished step that changed since it ran; empty when it has not finished."""
    names = type(spec).outputs
    if not names or not all(store.is_complete(run_key(spec.run_id, "outputs", n)) for n in names):
        return []
    return changed_inputs(store, spec.run_id, names)


def run_pipeline(
    spec: PipelineSpec,
    backend: Backend,
    *,
    on_step: Callable[[str, StageSpec], None] | None = None,
    force: bool = False,
) -> RunStatus:
    """Run every step in order, each waiting on the last; stops at the first step that does not succeed."""
    store = open_store(spec.store)
    key = run_key(spec.run_id, "spec.json")
    if store.exists(key) and store.read_json(key) != spec_record(spec) and not force:
        raise UserError(
            f"pipeline {spec.run_id} already exists with a different spec; pass --force or choose another --run-id"
        )
    steps = plan(spec)
    store.write_json(key, spec_record(spec))
    state: dict[str, Any] = {"run_id": spec.run_id, "steps": {step: {"run_id": s.run_id} for step, s in steps}}

    def save(pipeline_state: str, **fields: Any) -> None:
        state.update(state=pipeline_state, updated=now(), **fields)
        store.write_json(run_key(spec.run_id, "pipeline.json"), state)
        store.write_json(
            run_key(spec.run_id, "status.json"),
            {
                "run_id": spec.run_id,
                "stage": "pipeline",
                "state": pipeline_state,
                "updated": now(),
                # Who drives the pipeline, so `ctl status` can tell a stopped driver from a running one.
                "driver": {"host": socket.gethostname(), "pid": os.getpid()},
                **{k: v for k, v in fields.items() if k in ("reason", "message")},
            },
        )

    save("Running")
    for step, step_spec in steps:
        if changed_inputs_of(store, step_spec):
            # An upstream step ran again: this step's finished outputs were made from what it replaced.
            print(f"==> {step}: inputs changed, running it again", flush=True)
            backend.cancel(step_spec.run_id)
            # Its checkpoints were trained on the replaced inputs: start over rather than resume from them.
            store.delete_prefix(run_key(step_spec.run_id, "checkpoints"))
        status = backend.submit(step_spec, force=force)
        if on_step is not None and not status.finished:
            on_step(step, step_spec)
        status = backend.wait(step_spec.run_id)
        state["steps"][step].update(state=status.state, reason=status.reason)
        if status.state != "Succeeded":
            save(
                "Failed",
                reason=f"{step}:{status.reason or status.state}",
                message=f"step {step} ({step_spec.run_id}) {status.state}: {status.message}",
            )
            return RunStatus(spec.run_id, "Failed", f"{step} {status.reason}", status.message, stage="pipeline")
        save("Running")
    if spec.report:
        from zhllama.report import write_report

        write_report(store, spec, steps)
    save("Succeeded")
    return RunStatus(
        spec.run_id,
        "Succeeded",
        stage="pipeline",
        details={"report": store.uri(run_key(spec.run_id, "report", "report.md"))},
    )
