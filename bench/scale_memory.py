"""Memory figures for the "cluster scale" benchmarks, printed as JSON lines.

  python bench/scale_memory.py
      the per-GPU memory plan of the 7b/13b/33b/65b pretrain and sft presets on 80 GiB GPUs (and 65b without
      gradient checkpointing), then the plan's estimate vs the measured peak resident set of real CPU training runs:
      the tiny preset, and the smol preset with the tokenizer stage's extended vocabulary (with and without
      gradient checkpointing). Each measured run is the preset's own job (jobs/pretrain.py) in a fresh process,
      after a warm-up run that builds the one-time caches (embedded artifacts, the GGUF import, the block cache).

`memory_figures()` returns the same figures as dicts (bench/scale.py imports it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from zhllama.spec import TrainSpec, resolve_spec
from zhllama.train.memory import GIB
from zhllama.train.memory_check import plan_for_spec

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_SIZES = ("7b", "13b", "33b", "65b")
MEASURE = """
import runpy, sys
from zhllama.train.runtime_probe import peak_rss_bytes
script = sys.argv[1]
sys.argv = [script, "--spec", sys.argv[2]]
try:
    runpy.run_path(script, run_name="__main__")
finally:
    print("PEAK_RSS", peak_rss_bytes(), flush=True)
"""


def _spec(stage: str, size: str, run_id: str, store: str, sets: list[str]) -> TrainSpec:
    spec = resolve_spec(stage, size=size, run_id=run_id, sets=[f"store={store}", *sets])
    assert isinstance(spec, TrainSpec)
    return spec


def cluster_figures() -> list[dict[str, Any]]:
    figures = []
    for stage in ("pretrain", "sft"):
        for size in CLUSTER_SIZES:
            figures.append(_plan_figure(stage, size, []))
    figures.append(_plan_figure("pretrain", "65b", ["gradient_checkpointing=false"]))
    return figures


def _plan_figure(stage: str, size: str, sets: list[str]) -> dict[str, Any]:
    plan = plan_for_spec(_spec(stage, size, "plan", "s3://bench/zh", sets))
    assert plan is not None
    return {"figure": "memory_plan", "stage": stage, "size": size, "sets": sets, "total_gib": plan.total_bytes / GIB,
            "limit_gib": plan.limit_bytes / GIB, "fits": plan.fits, "advice": plan.advice(), **plan.as_dict()}


def _run_job(spec: Any, scratch: Path, measure: bool) -> int | None:
    """Run the spec's job (jobs/<stage>.py) in a fresh process; its peak resident set when `measure`."""
    path = scratch / f"{spec.run_id}.json"
    path.write_text(spec.model_dump_json(), encoding="utf-8")
    script = str(ROOT / "jobs" / f"{spec.stage}.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-c", MEASURE, script, str(path)] if measure else [sys.executable, script, "--spec",
                                                                                    str(path)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"{spec.run_id}: {done.stderr[-2000:]}")
    peaks = [int(line.split()[1]) for line in done.stdout.splitlines() if line.startswith("PEAK_RSS")]
    return peaks[-1] if measure else None


def _measured_figure(size: str, sets: list[str], store: str, scratch: Path, name: str) -> dict[str, Any]:
    _run_job(_spec("pretrain", size, f"warm-{name}", store, ["max_steps=1", *sets]), scratch, measure=False)
    spec = _spec("pretrain", size, f"mem-{name}", store, ["max_steps=3", *sets])
    measured = _run_job(spec, scratch, measure=True)
    assert measured is not None
    plan = plan_for_spec(spec)
    assert plan is not None
    return {"figure": "memory_estimate_vs_measured", "name": name, "size": size, "stage": "pretrain", "sets": sets,
            "estimate_gib": plan.total_bytes / GIB, "measured_gib": measured / GIB,
            "error": (plan.total_bytes - measured) / measured, "estimate_bytes": plan.total_bytes,
            "measured_bytes": measured, **plan.as_dict()}


def measured_figures(scratch: Path) -> list[dict[str, Any]]:
    store = f"file://{scratch / 'store'}"
    figures = [_measured_figure("tiny", [], store, scratch, "tiny")]
    tokenizer = resolve_spec("tokenizer", size="smol", run_id="tok", sets=[f"store={store}"])
    _run_job(tokenizer, scratch, measure=False)
    extended = ["tokenizer=run://tok/outputs/tokenizer"]
    figures.append(_measured_figure("smol", extended, store, scratch, "smol"))
    figures.append(_measured_figure("smol", [*extended, "gradient_checkpointing=true"], store, scratch,
                                    "smol-checkpointing"))
    return figures


def memory_figures() -> list[dict[str, Any]]:
    """The cluster presets' plans, then estimate vs measured for tiny and smol (a few minutes on 2 cores)."""
    with tempfile.TemporaryDirectory(prefix="zhllama-bench-memory-") as tmp:
        return cluster_figures() + measured_figures(Path(tmp))


if __name__ == "__main__":
    for figure in memory_figures():
        print(json.dumps(figure, ensure_ascii=False), flush=True)
