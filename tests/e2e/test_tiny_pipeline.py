"""`ctl run pipeline --local --size tiny`: the demo's command at its smallest, end to end, then again.

The same command `make demo` runs (there with --size smol), against a store, state and scratch in tmp. It must
finish with a report, re-run by reusing every finished step, and pick up a killed run where it stopped.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from zhllama.store import DirStore

pytestmark = pytest.mark.slow

SECTIONS = ["## Summary", "## Tokenizer", "## Training", "## Per-character perplexity", "## Held-out tasks",
            "## Quantization", "## Sample generations"]


def ctl(*args: str) -> list[str]:
    return [sys.executable, "-m", "zhllama.cli.main", *args]


def run_pipeline(store: Path, run_id: str, *sets: str) -> subprocess.CompletedProcess[str]:
    command = ctl("run", "pipeline", "--local", "--size", "tiny", "--run-id", run_id, "--store", f"file://{store}",
                  *(arg for assignment in sets for arg in ("--set", assignment)))
    return subprocess.run(command, capture_output=True, text=True, timeout=900)


def statuses(store: DirStore, run_id: str) -> dict[str, dict[str, str]]:
    steps = store.read_json(f"runs/{run_id}/pipeline.json")["steps"]
    return {step: store.read_json(f"runs/{info['run_id']}/status.json") for step, info in steps.items()}


def test_tiny_pipeline_writes_the_report_and_a_rerun_reuses_every_step(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    first = run_pipeline(store_dir, "e2e")
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    report_uri = f"file://{store_dir.resolve()}/runs/e2e/report/report.md"
    assert f"report: {report_uri}" in first.stdout

    store = DirStore(store_dir)
    store.verify("runs/e2e/report")
    report = (store_dir / "runs/e2e/report/report.md").read_text(encoding="utf-8")
    for section in SECTIONS:
        assert section in report, section
    assert "## Not available" not in report
    done = statuses(store, "e2e")
    assert set(done) == {"tokenizer", "prepare", "pretrain", "sft", "merge", "quantize", "eval-base", "eval-pretrain",
                         "eval-sft"}
    assert all(status["state"] == "Succeeded" for status in done.values())
    evals = {step: store.read_json(f"runs/e2e-{step}/outputs/eval/report.json") for step in ("eval-base", "eval-sft")}
    tasks = evals["eval-sft"]["tasks"]
    assert set(tasks) == {"embedded://sentiment-heldout", "embedded://segmentation-heldout"}
    assert f"{tasks['embedded://sentiment-heldout']['score']:.1%} (after SFT)" in report
    heldout = "embedded://peoples-daily-heldout-tiny"
    ppl = {step: r["perplexity"]["sources"][heldout]["ppl_per_char"] for step, r in evals.items()}
    assert f"base model {ppl['eval-base']:.2f} → " in report

    status = subprocess.run(ctl("status", "e2e", "--store", f"file://{store_dir}"), capture_output=True, text=True)
    assert status.returncode == 0 and f"report: {report_uri}" in status.stdout

    again = run_pipeline(store_dir, "e2e")
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    assert "==>" not in again.stdout  # no step was started: each one attached to its finished run
    assert statuses(store, "e2e") == done


def test_a_killed_pipeline_resumes_training_from_its_checkpoint(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    sets = ("stages=[tokenizer,pretrain]", "overrides.pretrain.max_steps=40")
    command = ctl("run", "pipeline", "--local", "--size", "tiny", "--run-id", "kill", "--store", f"file://{store_dir}",
                  *(arg for assignment in sets for arg in ("--set", assignment)))
    cli = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    first_checkpoint = store_dir / "runs/kill-pretrain/checkpoints/step-4/rank-0/manifest.json"
    deadline = time.monotonic() + 600
    while not first_checkpoint.exists():
        assert cli.poll() is None, "the pipeline ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint after 10 minutes"
        time.sleep(0.2)
    # Kill everything, as a power cut would: the CLI, and the job's whole process tree (it runs in a session of
    # its own, and torchrun starts its workers in sessions of their own too).
    job = json.loads((Path(os.environ["ZHLLAMA_STATE"]) / "kill-pretrain/process.json").read_text())["pid"]
    tree = [psutil.Process(job), *psutil.Process(job).children(recursive=True)]
    assert any("pretrain.py" in " ".join(p.cmdline()) for p in tree)
    os.killpg(cli.pid, signal.SIGKILL)
    for process in tree:
        process.kill()
    psutil.wait_procs(tree, timeout=30)
    cli.wait()

    store = DirStore(store_dir)
    assert not store.is_complete("runs/kill-pretrain/outputs/adapter")
    tokenizer_status = store.read_json("runs/kill-tokenizer/status.json")
    resumed = run_pipeline(store_dir, "kill", *sets)
    assert resumed.returncode == 0, resumed.stdout[-4000:] + resumed.stderr[-4000:]
    assert store.read_json("runs/kill-tokenizer/status.json") == tokenizer_status  # not run again
    record = json.loads((store_dir / "runs/kill-pretrain/outputs/adapter/zhllama_adapter.json").read_text())
    assert record["steps"] == 40 and record["resumed_from_step"] >= 4
    metrics = (store_dir / "runs/kill-pretrain/metrics/metrics.jsonl").read_text().splitlines()
    logged = [json.loads(line)["step"] for line in metrics]
    assert logged == sorted(set(logged)) and logged[-1] == 40  # every step logged once, none lost or repeated
