"""A stand-in job entrypoint for backend tests: the real job_main around a stage that succeeds, fails, sleeps,
or publishes slowly, chosen by TEST_JOB_MODE (seconds by TEST_JOB_SECONDS)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from zhllama.backends.local import LocalBackend
from zhllama.spec import StageSpec, resolve_spec

JOB = """
import os, time
from zhllama.errors import UserError
from zhllama.run import job_main

def stage(ctx):
    mode = os.environ.get("TEST_JOB_MODE", "ok")
    print(f"working on {ctx.run_id}", flush=True)
    if mode == "sleep":
        time.sleep(float(os.environ.get("TEST_JOB_SECONDS", "120")))
    if mode == "fail":
        raise UserError("corpus.txt:3: not UTF-8; convert the file to UTF-8")
    out = ctx.output_dir("tokenizer")
    (out / "tokenizer.json").write_text("{}")
    ctx.publish("tokenizer")
    print("done", flush=True)

job_main("tokenizer", stage)
"""


def install_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    jobs = tmp_path / "jobs"
    jobs.mkdir(exist_ok=True)
    (jobs / "tokenizer.py").write_text(JOB)
    monkeypatch.setenv("ZHLLAMA_JOBS_DIR", str(jobs))
    return jobs


def tokenizer_spec(store_uri: str, run_id: str, **values: object) -> StageSpec:
    return resolve_spec("tokenizer", size="tiny", run_id=run_id, values={"store": store_uri, **values})


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def machine(store_uri: str, state: Path) -> LocalBackend:
    """The local backend of one machine: its own state directory, the shared store."""
    return LocalBackend(store_uri, state_dir=state)
