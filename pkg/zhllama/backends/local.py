"""Run stages on this machine: each run is its job entrypoint in a subprocess (torchrun for distributed stages).

The process runs in its own session so `ctl cancel` can stop the whole group, and under a small shell wrapper
that records its exit code and then saves the log to the store, so a run killed from outside is observed as
Failed with the reason, not left "Running" forever. Local bookkeeping (pid, log, exit code) lives in a state
directory; spec and status live in the store, written by zhllama.run.record like any other run's.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

from zhllama.errors import UserError
from zhllama.run import (
    RunRecord,
    RunStatus,
    attached,
    list_records,
    now,
    open_run,
    read_record,
    reconcile,
    spec_record,
    transition,
)
from zhllama.run.heartbeat import LOG_FILE_ENV, attempt_log_key
from zhllama.run.job import VERIFY_ENV
from zhllama.run.status import process_alive
from zhllama.spec import DISTRIBUTED_STAGES, INDEXED_STAGES, PrepareSpec, StageSpec
from zhllama.store import ArtifactStore, open_store

EXIT_KILLED = {137, -9, 143, -15}


def jobs_dir() -> Path:
    """jobs/ of this checkout, or ZHLLAMA_JOBS_DIR (the images set /app/jobs)."""
    configured = os.environ.get("ZHLLAMA_JOBS_DIR")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[3] / "jobs"


def state_root() -> Path:
    return Path(os.environ.get("ZHLLAMA_STATE", Path.home() / ".local" / "state" / "zhllama"))


def job_command(spec: StageSpec, spec_path: Path) -> list[str]:
    script = jobs_dir() / f"{spec.stage}.py"
    if not script.exists():
        raise UserError(f"no job entrypoint {script}; set ZHLLAMA_JOBS_DIR to the project's jobs/ directory")
    if spec.stage in DISTRIBUTED_STAGES:
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(spec.resources.procs_per_node),
            str(script),
            "--spec",
            str(spec_path),
        ]
    if spec.stage in INDEXED_STAGES:
        workers = spec.workers if isinstance(spec, PrepareSpec) else 1
        return [sys.executable, "-m", "zhllama.backends.local_workers", str(workers), sys.executable, str(script),
                "--spec", str(spec_path)]
    return [sys.executable, str(script), "--spec", str(spec_path)]


class LocalBackend:
    def __init__(self, store_uri: str, state_dir: Path | None = None) -> None:
        self.store_uri = store_uri
        self.store: ArtifactStore = open_store(store_uri)
        self.state_dir = state_dir or state_root()

    def _dir(self, run_id: str) -> Path:
        return self.state_dir / run_id

    def submit(self, spec: StageSpec, *, force: bool = False, verify: bool = False) -> RunStatus:
        current = attached(self.store, spec, self.status, verify_full=verify)
        if current is not None:
            return current
        record, mine = open_run(self.store, spec, backend="local", force=force)
        if mine:
            self._start(spec, record.attempt, verify)
        return self.status(spec.run_id)

    def _start(self, spec: StageSpec, attempt: int, verify: bool = False) -> None:
        run_dir = self._dir(spec.run_id)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "exit_code").unlink(missing_ok=True)
        spec_path = run_dir / "spec.json"
        spec_path.write_text(json.dumps(spec_record(spec), indent=2, ensure_ascii=False))
        command = job_command(spec, spec_path)
        log_path = run_dir / attempt_log_name(attempt)
        # The wrapper outlives the job: it records the exit code, then keeps the whole log beside the run's
        # outputs (the job's heartbeat uploads it while it runs).
        save_log = [sys.executable, "-m", "zhllama.backends.local", "save-log", self.store_uri, spec.run_id,
                    str(attempt), str(log_path)]
        wrapper = (f"{shlex.join(command)}; echo $? > {shlex.quote(str(run_dir / 'exit_code'))}; "
                   f"{shlex.join(save_log)}")
        # "wb": an attempt starts once, so a file already there is another store's run of the same id (the state
        # directory is per machine); its lines must not read as this attempt's.
        with open(log_path, "wb") as log:
            log.write(f"--- {now()} attempt {attempt}: {shlex.join(command)}\n".encode())
            log.flush()
            process = subprocess.Popen(
                ["/bin/sh", "-c", wrapper],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1", LOG_FILE_ENV: str(log_path),
                     **({VERIFY_ENV: "full"} if verify else {})},
            )
        (run_dir / "process.json").write_text(json.dumps(
            {"pid": process.pid, "attempt": attempt, "started": now(), "command": command}))

    def _process(self, run_id: str) -> dict[str, Any] | None:
        """What this machine started for the run last (pid, attempt), if it did."""
        try:
            started: dict[str, Any] = json.loads((self._dir(run_id) / "process.json").read_text())
        except (OSError, ValueError):
            return None  # started on another machine, or this state directory was wiped
        return started

    def _pid(self, run_id: str) -> int | None:
        started = self._process(run_id)
        return int(started["pid"]) if started is not None and "pid" in started else None

    def _alive(self, pid: int) -> bool:
        """Whether the run's process (the wrapper shell, or the job under it) is still running."""
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap it if it is our own finished child
        return process_alive(pid)

    def observe(self, record: RunRecord) -> RunStatus | None:
        """An attempt started here is Running while its process lives, and Failed if it ended without a zero
        exit code; an attempt started elsewhere is unknown here (its heartbeat tells)."""
        run_id = record.run_id
        started = self._process(run_id)
        if started is None or started.get("attempt") != record.attempt:
            return None
        pid = int(started["pid"])
        if self._alive(pid):
            return RunStatus(run_id, "Running")
        code = _read_exit_code(self._dir(run_id))
        if code is None or code in EXIT_KILLED:
            return RunStatus(run_id, "Failed", "Killed",
                             "the process was killed before it finished; `ctl run` the same spec again to resume")
        if code != 0:
            return RunStatus(run_id, "Failed", "ExitCode", f"the job exited with code {code}; see `ctl logs {run_id}`")
        return None

    def status(self, run_id: str) -> RunStatus:
        record = read_record(self.store, run_id)
        return reconcile(self.store, record, self.observe(record))

    def list_runs(self) -> list[RunStatus]:
        return [self.status(record.run_id) for record in list_records(self.store) if record.backend != "kubernetes"]

    def watch(self, run_id: str, *, poll_seconds: float = 1.0) -> Iterator[RunStatus]:
        last: RunStatus | None = None
        while True:
            current = self.status(run_id)
            if current != last:
                yield current
                last = current
            if current.finished:
                return
            time.sleep(poll_seconds)

    def wait(self, run_id: str, *, exit_timeout_s: float = 60.0) -> RunStatus:
        """Until the run finishes and its process here has exited (the wrapper saves the log after the job)."""
        final = self.status(run_id)
        for final in self.watch(run_id):  # noqa: B007 (the last state seen is the answer)
            pass
        pid, deadline = self._pid(run_id), time.monotonic() + exit_timeout_s
        while pid is not None and self._alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        return final

    def logs(self, run_id: str, *, follow: bool = False, previous: bool = False) -> Iterator[str]:
        """The current attempt's log (the one before with `previous`): the local file while this machine runs
        it, else the copy in the store (which the job's heartbeat keeps up to date)."""
        attempt = read_record(self.store, run_id).attempt - (1 if previous else 0)
        log = self._dir(run_id) / attempt_log_name(attempt)
        if log.exists():
            yield from self._follow_file(run_id, log, follow)
        elif follow:
            yield from self._follow_store(run_id, attempt)
        else:
            try:
                stored = self.store.read_bytes(attempt_log_key(run_id, attempt))
            except FileNotFoundError:
                raise UserError(f"no log of attempt {attempt} of run {run_id!r} on this machine or in "
                                f"{self.store.root_uri}") from None
            yield from stored.decode(errors="replace").splitlines()

    def _follow_file(self, run_id: str, log: Path, follow: bool) -> Iterator[str]:
        with open(log, encoding="utf-8", errors="replace") as handle:
            while True:
                line = handle.readline()
                if line:
                    yield line.rstrip("\n")
                    continue
                if not follow or self.status(run_id).finished:
                    yield from (rest.rstrip("\n") for rest in handle.readlines())
                    return
                time.sleep(0.3)

    def _follow_store(self, run_id: str, attempt: int, poll_s: float = 1.0) -> Iterator[str]:
        """Another machine's attempt: its log as the heartbeat uploads it, until the run finishes."""
        shown = 0
        while True:
            finished = self.status(run_id).finished
            try:
                lines = self.store.read_bytes(attempt_log_key(run_id, attempt)).decode(errors="replace").splitlines()
            except FileNotFoundError:
                lines = []
            # The last line may still be growing; it is shown once the next upload has more after it.
            complete = lines if finished else lines[:-1]
            yield from complete[shown:]
            shown = max(shown, len(complete))
            if finished:
                return
            time.sleep(poll_s)

    def cancel(self, run_id: str) -> RunStatus:
        """Record the cancel first (so the dying job cannot record a failure instead), then stop the processes."""
        current = self.status(run_id)
        if current.finished:
            return current
        transition(self.store, run_id, "Cancelled", by="cancel", reason="Cancelled", message="stopped by ctl cancel")
        pid = self._pid(run_id)
        if pid is not None:
            stop_process_tree(pid)
        return self.status(run_id)


def stop_process_tree(pid: int) -> None:
    """SIGTERM, then SIGKILL, every process under `pid`.

    torchrun starts its workers in sessions of their own, so signalling our process group is not enough: every
    descendant, found before the signals, gets them too.
    """
    processes = process_tree(pid)
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        processes += [p for p in process_tree(pid) if p not in processes]
        for process in processes:
            with contextlib.suppress(psutil.Error):
                process.send_signal(sig)
        _, alive = psutil.wait_procs(processes, timeout=grace)
        if not alive:
            return


def attempt_log_name(attempt: int) -> str:
    return f"attempt-{attempt}.log"


def save_log(store_uri: str, run_id: str, attempt: int, log: Path) -> None:
    """Keep a finished attempt's whole log in the store (run by the wrapper after the job exits)."""
    if log.exists():
        open_store(store_uri).write_bytes(attempt_log_key(run_id, attempt), log.read_bytes())


def process_tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _read_exit_code(run_dir: Path) -> int | None:
    try:
        return int((run_dir / "exit_code").read_text().strip())
    except (OSError, ValueError):
        return None


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "save-log":
        save_log(sys.argv[2], sys.argv[3], int(sys.argv[4]), Path(sys.argv[5]))
    else:
        sys.exit("usage: python -m zhllama.backends.local save-log STORE_URI RUN_ID ATTEMPT LOG")
