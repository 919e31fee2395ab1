"""S3 traffic of a two-pod PyTorchJob per pod, from each pod's own S3 server log (tests/e2e/pods.py).

  python bench/scale_traffic.py
      Two pods (torchrun --nnodes 2 --nproc_per_node 2, DDP, world 4) started from the rendered chart, each
      against its own `rclone serve s3 -vv` over one bucket: an uninterrupted run, then the same spec killed with
      SIGKILL after a checkpoint and restarted on empty disks. One JSON line per figure: bytes read and written
      per pod at start (the inputs), per checkpoint step, and on resume, each against the artifact's own size.

`traffic_figures()` returns the same figures as dicts (bench/scale.py prints them with its other parts).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e.pod_checks import scenario_checks  # noqa: E402
from tests.e2e.pods import PodCluster, code_root  # noqa: E402
from tests.e2e.s3_servers import is_metadata  # noqa: E402
from tests.e2e.scenario import Scenario, fault_scenario, input_prefixes  # noqa: E402
from tests.train.tiny import build_tiny_set  # noqa: E402


def _artifact_bytes(objects: dict[str, int], prefixes: tuple[str, ...]) -> int:
    return sum(size for key, size in objects.items() if key.startswith(prefixes))


def figures_of(scenario: Scenario) -> list[dict[str, Any]]:
    """The traffic figures of a finished scenario (see the module docstring)."""
    cluster = scenario.cluster
    prefixes = input_prefixes(scenario)
    objects = cluster.objects()
    inputs_bytes = _artifact_bytes(objects, prefixes)
    payload_bytes = sum(s for k, s in objects.items() if k.startswith(prefixes) and not is_metadata(k))
    common = {"code": str(code_root()), "pods": 2, "nproc_per_node": 2, "world_size": 4, "zero_stage": 0}
    figures = [*_start_figures(scenario, common, inputs_bytes, payload_bytes), *_checkpoint_figures(scenario, common),
               *_resume_figures(scenario, common, inputs_bytes)]
    checks = scenario_checks(scenario)
    figures.append({"figure": "checks", **common, "passed": [c.name for c in checks if c.ok],
                    "failed": {c.name: c.detail for c in checks if not c.ok}, "seconds": scenario.seconds})
    return figures


def _start_figures(scenario: Scenario, common: dict[str, Any], inputs_bytes: int,
                   payload_bytes: int) -> list[dict[str, Any]]:
    """What each pod read of the inputs when the job started."""
    sizes, prefixes = scenario.sizes, input_prefixes(scenario)
    figures: list[dict[str, Any]] = []
    for pod, traffic in scenario.traffic["start"].items():
        def is_input(key: str) -> bool:
            return key.startswith(prefixes)

        downloads = traffic.downloads(sizes, is_input)
        read = traffic.bytes_read(sizes, is_input)
        figures.append({
            "figure": "start_inputs", "pod": pod, **common,
            "read_bytes": read, "written_bytes": traffic.bytes_written(is_input),
            "inputs_bytes": inputs_bytes, "inputs_payload_bytes": payload_bytes,
            "read_over_inputs": round(read / inputs_bytes, 3) if inputs_bytes else None,
            "get_requests": sum(traffic.gets(is_input).values()),
            "payload_objects_read_more_than_once": sum(1 for k, n in downloads.items() if n > 1 and not is_metadata(k)),
            "metadata_gets": sum(n for k, n in traffic.gets(is_input).items() if is_metadata(k)),
        })
    return figures


def _checkpoint_figures(scenario: Scenario, common: dict[str, Any]) -> list[dict[str, Any]]:
    """What each pod wrote of each checkpoint step of the uninterrupted run."""
    reference, figures = scenario.reference, []
    for step, files in scenario.checkpoint_sizes.items():
        prefix = f"runs/{reference}/checkpoints/step-{step}/"
        step_bytes, engine = sum(files.values()), scenario.engine_sizes[step]
        for pod, traffic in scenario.traffic["reference"].items():
            written = traffic.bytes_written(lambda key, p=prefix: key.startswith(p))
            figures.append({
                "figure": "checkpoint_write", "pod": pod, "step": step, **common,
                "written_bytes": written, "step_bytes": step_bytes, "engine_pt_bytes": engine,
                "written_over_engine_pt": round(written / engine, 3) if engine else None,
                "step_over_engine_pt": round(step_bytes / engine, 3) if engine else None,
            })
    return figures


def _resume_figures(scenario: Scenario, common: dict[str, Any], inputs_bytes: int) -> list[dict[str, Any]]:
    """What each pod read of the checkpoints (and inputs) when the killed job resumed."""
    sizes, prefixes, figures = scenario.sizes, input_prefixes(scenario), []
    present = scenario.restart_checkpoints
    resumed = scenario.resumed_from_step
    resumed_prefix = f"runs/{scenario.killed}/checkpoints/step-{resumed}/"
    resumed_bytes = sum(s for k, s in present.items() if k.startswith(resumed_prefix))
    for pod, traffic in scenario.traffic["resume"].items():
        def is_checkpoint(key: str) -> bool:
            return key in present

        read = traffic.bytes_read(sizes, is_checkpoint, before=scenario.resume_window_end)
        downloads = traffic.downloads(sizes, is_checkpoint, before=scenario.resume_window_end)
        figures.append({
            "figure": "resume_checkpoint_read", "pod": pod, "resumed_from_step": resumed, **common,
            "read_bytes": read, "resumed_step_bytes": resumed_bytes,
            "read_over_step": round(read / resumed_bytes, 3) if resumed_bytes else None,
            "get_requests": sum(traffic.gets(is_checkpoint, before=scenario.resume_window_end).values()),
            "payload_objects_read_more_than_once": sum(1 for k, n in downloads.items() if n > 1 and not is_metadata(k)),
            "inputs_read_bytes": traffic.bytes_read(sizes, lambda key: key.startswith(prefixes)),
            "inputs_bytes": inputs_bytes,
        })
    return figures


def traffic_figures(work: Path | None = None) -> list[dict[str, Any]]:
    """Run the two-pod scenario in `work` (a temporary directory by default) and return its figures."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory(prefix="zhllama-scale-traffic-") as tmp:
        root = work or Path(tmp)
        tiny = build_tiny_set(root / "tiny")
        cluster = PodCluster(root / "cluster")
        try:
            return figures_of(fault_scenario(cluster, tiny))
        finally:
            cluster.close()


if __name__ == "__main__":
    for figure in traffic_figures():
        print(json.dumps(figure, ensure_ascii=False), flush=True)
