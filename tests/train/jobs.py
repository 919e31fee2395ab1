"""Run the training stage as a pod does: a spec.json and its jobs/<stage>.py entrypoint (torchrun for ranks > 1)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil

from zhllama.spec import TrainSpec
from zhllama.store import DirStore

JOBS = Path(__file__).resolve().parents[2] / "jobs"


def write_spec(tiny: dict[str, Path], root: Path, run_id: str, **values: Any) -> Path:
    fields = {"run_id": run_id, "store": f"file://{root / 'store'}", "base_model": f"file://{tiny['base']}",
              "tokenizer": f"file://{tiny['zh_tokenizer']}", "data": [f"file://{tiny['corpus']}"],
              "block_size": 32, "micro_batch_size": 4, "max_steps": 8, "log_every": 1, "checkpoint_every": 4,
              "lr": 2e-3, "warmup_ratio": 0.0, "pad_vocab_multiple": 64, "tokenize_workers": 1, **values}
    spec = TrainSpec.model_validate(fields)
    path = root / f"{run_id}.json"
    path.write_text(json.dumps(spec.model_dump(mode="json")), encoding="utf-8")
    return path


def job_command(spec: Path, root: Path, nproc: int = 1) -> list[str]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] \
        if nproc > 1 else [sys.executable]
    stage = json.loads(spec.read_text(encoding="utf-8"))["stage"]
    return [*launcher, str(JOBS / f"{stage}.py"), "--spec", str(spec), "--workdir", str(root / "work")]


def job_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def run_job(spec: Path, root: Path, nproc: int = 1, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(job_command(spec, root, nproc), env=job_env(), capture_output=True, text=True,
                          timeout=timeout)


def metrics(root: Path, run_id: str) -> list[dict[str, Any]]:
    store = DirStore(root / "store")
    key = f"runs/{run_id}/metrics"
    store.verify(key)
    return [json.loads(line) for line in store.read_bytes(f"{key}/metrics.jsonl").decode().splitlines()]


def kill_job(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the launcher's process group and every worker's (torchrun starts each worker in its own)."""
    groups = {os.getpgid(child.pid) for child in psutil.Process(process.pid).children(recursive=True)}
    for group in groups | {process.pid}:
        os.killpg(group, signal.SIGKILL)
    process.wait()
