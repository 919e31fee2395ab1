"""`ctl run prepare --local`: N worker processes as an Indexed Job's pods; a killed worker's share is redone on
the next run, and what the other finished is kept."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from zhllama.store import DirStore

CTL = [sys.executable, "-m", "zhllama.cli.main"]


def ctl(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*CTL, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def worker_pids(log: Path, deadline: float) -> dict[int, int]:
    while time.monotonic() < deadline:
        found = {int(i): int(pid) for i, pid in re.findall(r"\[launcher\] worker (\d+)/2: pid (\d+)",
                                                            log.read_text() if log.exists() else "")}
        if len(found) == 2:
            return found
        time.sleep(0.05)
    raise AssertionError(f"no worker pids in {log}")


def test_a_killed_worker_fails_the_run_and_only_its_share_is_redone(tmp_path: Path) -> None:
    store_uri = f"file://{tmp_path / 'store'}"
    args = ("run", "prepare", "--local", "--size", "tiny", "--store", store_uri, "--run-id", "prep")
    run = ctl(*args)
    deadline = time.monotonic() + 120
    pids = worker_pids(Path(os.environ["ZHLLAMA_STATE"]) / "prep" / "attempt-1.log", deadline)
    os.kill(pids[1], signal.SIGSTOP)  # worker 1 holds still while worker 0 finishes its share
    store = DirStore(tmp_path / "store")
    while not [k for k in store.list_keys("cache/tokens") if k.endswith("manifest.json")]:
        assert run.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    os.kill(pids[1], signal.SIGKILL)
    first, _ = run.communicate(timeout=60)
    assert run.returncode != 0, first
    assert re.search(r"prep\s+prepare\s+Failed \(Killed", first), first
    assert "[launcher] worker 1 exited with -9; stopping the others" in first
    assert not store.is_complete("runs/prep/outputs/dataset")

    again = ctl(*args)
    second, _ = again.communicate(timeout=120)
    assert again.returncode == 0, second
    assert "[worker 0] worker 0/2: 1 files: 1 already tokenized, 0 to tokenize" in second
    assert "[worker 1] worker 1/2: 1 files: 0 already tokenized, 1 to tokenize" in second
    assert re.search(r"prep\s+prepare\s+Succeeded", second)
    assert store.is_complete("runs/prep/outputs/dataset")
