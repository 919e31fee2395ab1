"""LocalBackend with real subprocesses: a stand-in job entrypoint that succeeds, fails, or runs until stopped."""

import json
import os
import signal
from pathlib import Path

import pytest

from tests.core.standin import install_job, tokenizer_spec, wait_for
from zhllama.backends.local import LocalBackend
from zhllama.errors import UserError
from zhllama.run import open_run, read_record, transition
from zhllama.spec import StageSpec, resolve_spec


@pytest.fixture
def backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LocalBackend:
    install_job(tmp_path, monkeypatch)
    return LocalBackend(f"file://{tmp_path / 'store'}")


def spec(backend: LocalBackend, run_id: str, **values: object) -> StageSpec:
    return tokenizer_spec(backend.store.root_uri, run_id, **values)


def test_a_run_succeeds_publishes_and_keeps_its_log(backend: LocalBackend) -> None:
    s = spec(backend, "ok-run")
    backend.submit(s)
    lines = list(backend.logs("ok-run", follow=True))
    assert "working on ok-run" in lines and "done" in lines
    final = backend.wait("ok-run")
    assert final.state == "Succeeded", final
    assert backend.store.is_complete("runs/ok-run/outputs/tokenizer")
    assert backend.store.read_json("runs/ok-run/spec.json") == s.model_dump(mode="json")
    assert b"done" in backend.store.read_bytes("runs/ok-run/logs/attempt-1.log")
    assert [r.run_id for r in backend.list_runs()] == ["ok-run"]


def test_submitting_the_same_spec_again_attaches(backend: LocalBackend) -> None:
    s = spec(backend, "again")
    backend.submit(s)
    backend.wait("again")
    pid = json.loads((backend.state_dir / "again" / "process.json").read_text())["pid"]
    assert backend.submit(s).state == "Succeeded"
    assert json.loads((backend.state_dir / "again" / "process.json").read_text())["pid"] == pid


def test_a_different_spec_under_the_same_id_needs_force(backend: LocalBackend) -> None:
    backend.submit(spec(backend, "same-id"))
    backend.wait("same-id")
    changed = spec(backend, "same-id", vocab_size=900)
    with pytest.raises(UserError, match=r"different spec \(changed: vocab_size\)"):
        backend.submit(changed)
    backend.submit(changed, force=True)
    assert backend.wait("same-id").state == "Succeeded"
    manifest = backend.store.read_manifest("runs/same-id/outputs/tokenizer")
    assert manifest["spec"]["vocab_size"] == 900


def test_a_user_error_fails_the_run_with_its_reason(backend: LocalBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_JOB_MODE", "fail")
    backend.submit(spec(backend, "bad-input"))
    final = backend.wait("bad-input")
    assert (final.state, final.reason) == ("Failed", "InvalidInput")
    assert final.message == "corpus.txt:3: not UTF-8; convert the file to UTF-8"
    assert not backend.store.is_complete("runs/bad-input/outputs/tokenizer")


def test_cancel_stops_the_process_group(backend: LocalBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_JOB_MODE", "sleep")
    backend.submit(spec(backend, "long"))
    wait_for(lambda: read_record(backend.store, "long").state == "Running")
    pid = json.loads((backend.state_dir / "long" / "process.json").read_text())["pid"]
    final = backend.cancel("long")
    assert (final.state, final.reason) == ("Cancelled", "Cancelled")
    assert not backend._alive(pid)
    assert [t.by for t in read_record(backend.store, "long").transitions] == ["local", "job", "cancel"]


def test_a_killed_run_is_reported_failed_not_running(backend: LocalBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_JOB_MODE", "sleep")
    backend.submit(spec(backend, "killed"))
    wait_for(lambda: read_record(backend.store, "killed").state == "Running")
    pid = json.loads((backend.state_dir / "killed" / "process.json").read_text())["pid"]
    os.killpg(pid, signal.SIGKILL)
    wait_for(lambda: not backend._alive(pid))
    final = backend.status("killed")
    assert (final.state, final.reason) == ("Failed", "Killed")
    assert "resume" in final.message


def test_a_pipeline_whose_driver_stopped_is_not_reported_running(backend: LocalBackend) -> None:
    import socket
    import subprocess

    gone = subprocess.Popen(["true"])
    gone.wait()
    for run_id, pid in (("gone", gone.pid), ("alive", os.getpid())):
        pipeline = resolve_spec("pipeline", size="tiny", run_id=run_id, values={"store": backend.store.root_uri})
        open_run(backend.store, pipeline, backend="pipeline")
        transition(backend.store, run_id, "Running", by="pipeline", host=socket.gethostname(), pid=pid)
    final = backend.status("gone")
    assert (final.state, final.reason) == ("Failed", "Interrupted")
    assert read_record(backend.store, "gone").state == "Failed"  # recorded: every later reader agrees
    assert backend.status("alive").state == "Running"


def test_cancelling_a_finished_run_changes_nothing(backend: LocalBackend) -> None:
    backend.submit(spec(backend, "done"))
    assert backend.wait("done").state == "Succeeded"
    before = read_record(backend.store, "done")
    assert backend.cancel("done").state == "Succeeded"
    assert read_record(backend.store, "done") == before


def test_a_run_of_the_same_id_in_another_store_does_not_show_the_first_ones_log(
    backend: LocalBackend, tmp_path: Path
) -> None:
    backend.submit(spec(backend, "same-id"))
    assert backend.wait("same-id").state == "Succeeded"
    other = LocalBackend(f"file://{tmp_path / 'other-store'}", state_dir=backend.state_dir)
    other.submit(tokenizer_spec(other.store.root_uri, "same-id"))
    assert other.wait("same-id").state == "Succeeded"
    lines = list(other.logs("same-id"))
    assert sum("attempt 1:" in line for line in lines) == 1 and lines.count("done") == 1
