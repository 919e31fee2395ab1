"""Faults tell the truth (issue 14): a dead run is seen dead from any machine sharing the store, a re-run takes it
over safely, two submits at once start one job, every attempt keeps its log. Real jobs (tests/core/standin.py)
under the real local backend, on a directory store and on the rclone S3 server."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import pytest

from tests.core.standin import install_job, machine, tokenizer_spec, wait_for
from zhllama.run import read_record
from zhllama.run.heartbeat import EXIT_TAKEN_OVER, read_heartbeat
from zhllama.store import open_store

LEASE_S = 6.0  # headroom: a 2-core machine under a full suite can starve a 0.3 s beat for seconds


@pytest.fixture(params=["dir", "s3"])
def store_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "dir":
        return f"file://{tmp_path / 'store'}"
    bucket: str = request.getfixturevalue("s3_env")
    return f"{bucket}/{tmp_path.name}"


@pytest.fixture(autouse=True)
def short_lease(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_job(tmp_path, monkeypatch)
    monkeypatch.setenv("ZHLLAMA_HEARTBEAT_S", "0.3")
    monkeypatch.setenv("ZHLLAMA_LEASE_S", str(LEASE_S))


def job_pid(state: Path, run_id: str) -> int:
    return int(json.loads((state / run_id / "process.json").read_text())["pid"])


def test_a_killed_run_is_lost_for_another_machine_and_its_rerun_takes_over(
        store_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    here, there = machine(store_uri, tmp_path / "here"), machine(store_uri, tmp_path / "there")
    monkeypatch.setenv("TEST_JOB_MODE", "sleep")
    here.submit(tokenizer_spec(store_uri, "pt2"))
    # The beat starts before the job records Running (it checks for finished outputs first): wait for both.
    wait_for(lambda: read_heartbeat(here.store, "pt2") is not None, what="the first heartbeat")
    wait_for(lambda: there.status("pt2").state == "Running", what="Running, read from another machine")

    os.killpg(job_pid(tmp_path / "here", "pt2"), signal.SIGKILL)
    wait_for(lambda: there.status("pt2").state == "Failed", timeout=LEASE_S + 10, what="the lease to run out")
    lost = there.status("pt2")
    beat = read_heartbeat(there.store, "pt2")
    assert beat is not None and lost.reason == "Lost"
    assert f"no heartbeat since {beat['at']} from " in lost.message and "run the same command again" in lost.message
    assert here.status("pt2").state == "Failed"  # recorded: every reader agrees

    monkeypatch.setenv("TEST_JOB_MODE", "ok")
    there.submit(tokenizer_spec(store_uri, "pt2"))
    final = there.wait("pt2")
    assert final.state == "Succeeded", final
    assert read_record(there.store, "pt2").attempt == 2
    there.store.verify("runs/pt2/outputs/tokenizer")


def test_a_stalled_job_that_was_taken_over_stops_itself(
        store_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    here, there = machine(store_uri, tmp_path / "here"), machine(store_uri, tmp_path / "there")
    monkeypatch.setenv("TEST_JOB_MODE", "sleep")
    monkeypatch.setenv("TEST_JOB_SECONDS", "60")  # it must not finish on its own once resumed
    here.submit(tokenizer_spec(store_uri, "stall"))
    wait_for(lambda: read_heartbeat(here.store, "stall") is not None, what="the first heartbeat")
    stalled = job_pid(tmp_path / "here", "stall")
    os.killpg(stalled, signal.SIGSTOP)  # alive, but silent: a hung node
    try:
        wait_for(lambda: there.status("stall").reason == "Lost", timeout=LEASE_S + 10, what="the lease")
        monkeypatch.setenv("TEST_JOB_SECONDS", "0")
        there.submit(tokenizer_spec(store_uri, "stall"))
    finally:
        os.killpg(stalled, signal.SIGCONT)
    final = there.wait("stall")
    assert final.state == "Succeeded", final
    wait_for(lambda: (tmp_path / "here" / "stall" / "exit_code").exists(), what="the stalled job to exit")
    assert int((tmp_path / "here" / "stall" / "exit_code").read_text()) == EXIT_TAKEN_OVER
    log = here.store.read_bytes("runs/stall/logs/attempt-1.log").decode()
    assert "taken over by a newer attempt" in log and "done" not in log


def test_two_submits_at_the_same_instant_start_one_job(
        store_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_JOB_MODE", "sleep")
    monkeypatch.setenv("TEST_JOB_SECONDS", "2")
    machines = [machine(store_uri, tmp_path / f"m{i}") for i in range(2)]
    go = threading.Barrier(len(machines))
    results: list[str] = []

    def submit(backend_index: int) -> None:
        go.wait()
        results.append(machines[backend_index].submit(tokenizer_spec(store_uri, "race")).state)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(len(machines))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    started = [m for m in machines if (m.state_dir / "race" / "process.json").exists()]
    assert len(started) == 1 and len(results) == 2
    attached = next(m for m in machines if m not in started)
    assert "working on race" in list(attached.logs("race", follow=True))  # the winner's log, from the store
    assert machines[0].wait("race").state == machines[1].wait("race").state == "Succeeded"
    record = read_record(machines[0].store, "race")
    assert record.attempt == 1 and [t.state for t in record.transitions] == ["Pending", "Running", "Succeeded"]


def test_each_attempt_keeps_its_own_log_uploaded_while_it_runs(
        store_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = machine(store_uri, tmp_path / "state")
    monkeypatch.setenv("TEST_JOB_MODE", "fail")
    backend.submit(tokenizer_spec(store_uri, "logs"))
    assert backend.wait("logs").state == "Failed"
    monkeypatch.setenv("TEST_JOB_MODE", "sleep")
    monkeypatch.setenv("TEST_JOB_SECONDS", "3")
    backend.submit(tokenizer_spec(store_uri, "logs"))
    store = open_store(store_uri)
    wait_for(lambda: store.exists("runs/logs/logs/attempt-2.log")
             and b"working on logs" in store.read_bytes("runs/logs/logs/attempt-2.log"), what="the live log upload")
    assert not backend.status("logs").finished  # uploaded during the run, not only at the end
    assert backend.wait("logs").state == "Succeeded"
    first, second = (store.read_bytes(f"runs/logs/logs/attempt-{n}.log").decode() for n in (1, 2))
    assert "not UTF-8" in first and "done" not in first
    assert "done" in second and "not UTF-8" not in second
    assert "not UTF-8" in "\n".join(backend.logs("logs", previous=True))


@pytest.mark.parametrize("verify", [False, True])
def test_a_corrupt_output_is_not_reused_but_made_again(
        store_uri: str, tmp_path: Path, verify: bool) -> None:
    backend = machine(store_uri, tmp_path / "state")
    backend.submit(tokenizer_spec(store_uri, "tok1"))
    assert backend.wait("tok1").state == "Succeeded"
    key = "runs/tok1/outputs/tokenizer/tokenizer.json"
    good = backend.store.read_bytes(key)
    backend.store.write_bytes(key, bytes([good[0] ^ 1]) + good[1:])  # one flipped bit, the same size
    with pytest.raises(Exception, match="corrupt"):
        backend.store.verify("runs/tok1/outputs/tokenizer")

    again = backend.submit(tokenizer_spec(store_uri, "tok1"), verify=verify)
    assert again.state != "Succeeded"  # not "Succeeded [0s]": a new attempt runs
    assert backend.wait("tok1").state == "Succeeded"
    assert read_record(backend.store, "tok1").attempt == 2
    assert backend.store.read_bytes(key) == good
    backend.store.verify("runs/tok1/outputs/tokenizer", full=True)
