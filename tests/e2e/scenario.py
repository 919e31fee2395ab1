"""The fault scenario over two simulated pods (pods.py): inputs once per pod, one copy per checkpoint, kill -9
and resume. Shared by tests/e2e/test_two_pods.py (asserts pod_checks.py's checks) and bench/scale_traffic.py
(reports figures)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

from tests.e2e.pods import Attempt, PodCluster, RenderedJob
from tests.e2e.s3_servers import Traffic


@dataclass
class Scenario:
    cluster: PodCluster
    inputs: dict[str, str]
    """Input name -> store:// URI."""
    reference: str
    killed: str
    """Run ids: an uninterrupted run, and the same spec killed and restarted."""
    traffic: dict[str, dict[str, Traffic]]
    """Phase (reference, start, resume) -> pod -> its requests."""
    sizes: dict[str, int]
    """Object sizes: every object written during the scenario (the last upload) or still in the store."""
    killed_after_step: int
    restart_checkpoints: dict[str, int]
    """The checkpoint objects in the store when the pods restarted (key -> size)."""
    resume_window_end: float
    """When the resumed job began writing its first checkpoint: reads before it are the resume's."""
    checkpoint_sizes: dict[int, dict[str, int]]
    """The uninterrupted run's complete checkpoint steps: step -> key under the step -> size."""
    engine_sizes: dict[int, int]
    """Step -> size of rank 0's engine state file (engine.pt)."""
    losses: dict[str, list[tuple[int, float]]]
    resumed_from_step: int | None
    seconds: dict[str, float]


def input_prefixes(scenario: Scenario) -> tuple[str, ...]:
    return tuple(f"{uri.removeprefix('store://').strip('/')}/" for uri in scenario.inputs.values()) + ("cache/",)


def fault_scenario(cluster: PodCluster, tiny: dict[str, Path], *, max_steps: int = 16, checkpoint_every: int = 4,
                   kill_after_step: int = 8, timeout_s: float = 240, tag: str = "") -> Scenario:
    """Upload the inputs, run the job uninterrupted, then again: SIGKILL a pod once `kill_after_step` is
    complete in the store, then the other, and restart both with empty disks; collect every pod's requests."""
    seconds: dict[str, float] = {}
    started = time.monotonic()
    inputs = cluster.publish_inputs({"base": tiny["base"], "zh-tokenizer": tiny["zh_tokenizer"],
                                     "corpus": tiny["corpus"]})
    values = {"base_model": inputs["base"], "tokenizer": inputs["zh-tokenizer"], "data": [inputs["corpus"]],
              "block_size": 32, "micro_batch_size": 4, "max_steps": max_steps, "checkpoint_every": checkpoint_every,
              "log_every": 1, "lr": 2e-3, "warmup_ratio": 0.0, "pad_vocab_multiple": 64, "tokenize_workers": 1,
              "zero_stage": 0, "precision": "fp32", "resources": {"nodes": 2, "nproc_per_node": 2}}
    reference, killed = f"two-pods{tag}-whole", f"two-pods{tag}-killed"
    seconds["inputs"] = time.monotonic() - started

    mark = time.monotonic()
    whole = cluster.attempt(cluster.render(cluster.spec(reference, **values)), "attempt-0")
    whole.check(timeout_s)
    seconds["reference"] = time.monotonic() - mark

    mark = time.monotonic()
    job = cluster.render(cluster.spec(killed, **values))
    first = kill_after(cluster, job, kill_after_step, timeout_s)
    seconds["killed"] = time.monotonic() - mark

    mark = time.monotonic()
    restart_checkpoints = cluster.objects(f"runs/{killed}/checkpoints")
    second = cluster.attempt(job, "attempt-1")
    second.check(timeout_s)
    seconds["resumed"] = time.monotonic() - mark

    traffic = {"reference": whole.traffic(), "start": first.traffic(), "resume": second.traffic()}
    return _collect(cluster, inputs, reference, killed, traffic, kill_after_step, restart_checkpoints, seconds)


def kill_after(cluster: PodCluster, job: RenderedJob, step: int, timeout_s: float) -> Attempt:
    """Start the job's pods and SIGKILL them (worker first) once checkpoint `step` is complete in the store."""
    first = cluster.attempt(job, "attempt-0")
    deadline = time.monotonic() + timeout_s
    while step not in cluster.complete_steps(job.run_id):
        if not first.running() or time.monotonic() > deadline:
            first.kill()
            tails = "\n".join(f"--- {p.slot.name} ---\n{p.log_tail()}" for p in first.pods)
            raise AssertionError(f"{job.run_id}: step-{step} never completed before the pods ended\n{tails}")
        time.sleep(0.02)
    worker = next(i for i, p in enumerate(first.pods) if p.slot.role == "Worker")
    master = next(i for i, p in enumerate(first.pods) if p.slot.role == "Master")
    first.kill([worker, master])
    if cluster.bucket_dir.joinpath("runs", job.run_id, "outputs", "adapter", "manifest.json").exists():
        raise AssertionError(f"{job.run_id}: the run finished before it was killed; raise max_steps")
    return first


def _collect(cluster: PodCluster, inputs: dict[str, str], reference: str, killed: str,
             traffic: dict[str, dict[str, Traffic]], kill_after_step: int, restart_checkpoints: dict[str, int],
             seconds: dict[str, float]) -> Scenario:
    """The scenario's figures from the servers' logs and the store."""
    control = cluster.control.traffic(cluster.prefix)
    sizes: dict[str, int] = {}
    for logs in [control, *(t for phase in traffic.values() for t in phase.values())]:
        sizes.update({key: written[-1] for key, written in logs.uploads.items()})
    sizes.update(cluster.objects())
    sizes.update(restart_checkpoints)

    def checkpoint(key: str) -> bool:
        return key.startswith(f"runs/{killed}/checkpoints/")

    window_end = min((t.first("PUT", checkpoint) for t in traffic["resume"].values()), default=math.inf)
    prefix = f"runs/{reference}/checkpoints/"
    checkpoint_sizes = {
        step: {key.removeprefix(f"{prefix}step-{step}/"): size
               for key, size in cluster.objects(f"{prefix}step-{step}").items()}
        for step in cluster.complete_steps(reference)
    }
    engine_sizes = {step: files.get("rank-0/engine.pt", 0) for step, files in checkpoint_sizes.items()}
    losses = {run: [(int(r["step"]), float(r["loss"])) for r in cluster.metrics(run)] for run in (reference, killed)}
    return Scenario(cluster, inputs, reference, killed, traffic, sizes, kill_after_step, restart_checkpoints,
                    window_end, checkpoint_sizes, engine_sizes, losses,
                    cluster.adapter_record(killed).get("resumed_from_step"), seconds)
