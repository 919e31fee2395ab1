"""Run stages on this machine: each run is its job entrypoint in a subprocess (torchrun for distributed stages).

The process runs in its own session so `ctl cancel` can stop the whole group, and under a small shell wrapper
that records its exit code, so a run killed from outside is reported as Failed with the reason, not left
"Running" forever. Local bookkeeping (pid, log, exit code) lives in a state directory; spec and status live in
the store like any other run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

from zhllama.backends.base import RunStatus
from zhllama.errors import UserError
from zhllama.runs import now, run_key, spec_record
from zhllama.spec import DISTRIBUTED_STAGES, StageSpec, spec_from_json
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
    return [sys.executable, str(script), "--spec", str(spec_path)]


class LocalBackend:
    def __init__(self, store_uri: str, state_dir: Path | None = None) -> None:
        self.store: ArtifactStore = open_store(store_uri)
        self.state_dir = state_dir or state_root()

    def _dir(self, run_id: str) -> Path:
        return self.state_dir / run_id

    def submit(self, spec: StageSpec, *, force: bool = False) -> RunStatus:
        existing = self._stored_spec(spec.run_id)
        if existing is not None and existing != spec_record(spec):
            if not force:
                changed = sorted(
                    k for k in set(existing) | set(spec_record(spec)) if existing.get(k) != spec_record(spec).get(k)
                )
                raise UserError(
                    f"run {spec.run_id} already exists with a different spec (changed: {', '.join(changed)}); "
                    "pass --force to replace it or choose another --run-id"
                )
            self.store.delete_prefix(run_key(spec.run_id, "outputs"))
            self.store.delete_prefix(run_key(spec.run_id, "checkpoints"))
        elif existing is not None:
            current = self.status(spec.run_id)
            if current.state in ("Running", "Pending", "Succeeded"):
                return current  # the same spec: attach instead of starting twice
        self.store.write_json(run_key(spec.run_id, "spec.json"), spec_record(spec))
        self.store.write_json(
            run_key(spec.run_id, "status.json"),
            {"run_id": spec.run_id, "stage": spec.stage, "state": "Pending", "updated": now(), "backend": "local"},
        )
        self._start(spec)
        return self.status(spec.run_id)

    def _start(self, spec: StageSpec) -> None:
        run_dir = self._dir(spec.run_id)
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale in ("exit_code", "cancelled"):
            (run_dir / stale).unlink(missing_ok=True)
        spec_path = run_dir / "spec.json"
        spec_path.write_text(json.dumps(spec_record(spec), indent=2, ensure_ascii=False))
        command = job_command(spec, spec_path)
        exit_file = run_dir / "exit_code"
        wrapper = f"{shlex.join(command)}; echo $? > {shlex.quote(str(exit_file))}"
        log = open(run_dir / "job.log", "ab")
        log.write(f"\n--- {now()} {shlex.join(command)}\n".encode())
        log.flush()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "ZHLLAMA_RUN_ID": spec.run_id}
        process = subprocess.Popen(
            ["/bin/sh", "-c", wrapper],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )
        log.close()
        (run_dir / "process.json").write_text(json.dumps({"pid": process.pid, "started": now(), "command": command}))

    def _stored_spec(self, run_id: str) -> dict | None:
        try:
            data: dict = self.store.read_json(run_key(run_id, "spec.json"))
        except FileNotFoundError:
            return None
        return data

    def _alive(self, run_id: str) -> bool:
        """Whether the run's process (the wrapper shell, or the job under it) is still running."""
        try:
            pid = json.loads((self._dir(run_id) / "process.json").read_text())["pid"]
        except (OSError, ValueError, KeyError):
            return False
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap it if it is our own finished child
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def status(self, run_id: str) -> RunStatus:
        try:
            stored = self.store.read_json(run_key(run_id, "status.json"))
        except FileNotFoundError:
            raise UserError(f"no run {run_id!r} in {self.store.root_uri}; `ctl ls` lists the runs") from None
        state = stored.get("state", "Unknown")
        reason, message = stored.get("reason", ""), stored.get("message", "")
        run_dir = self._dir(run_id)
        if state == "Running" and not driver_alive(stored.get("driver")):
            state, reason = "Failed", "Interrupted"
            message = "the ctl driving this pipeline stopped; run the same command again to resume"
        elif (run_dir / "cancelled").exists():
            state, reason, message = "Cancelled", "Cancelled", "stopped by ctl cancel"
        elif state in ("Pending", "Running") and not self._alive(run_id) and (run_dir / "process.json").exists():
            code = _read_exit_code(run_dir)
            if code is None or code in EXIT_KILLED:
                state, reason = "Failed", "Killed"
                message = "the process was killed before it finished; `ctl run` the same spec again to resume"
            elif code != 0:
                state, reason, message = (
                    "Failed",
                    "ExitCode",
                    f"the job exited with code {code}; see `ctl logs {run_id}`",
                )
            self._save_log(run_id)
        elif state in ("Succeeded", "Failed"):
            self._save_log(run_id)
        details = {k: str(stored[k]) for k in ("started", "finished", "updated") if k in stored}
        if self.store.exists(run_key(run_id, "report", "report.md")):
            details["report"] = self.store.uri(run_key(run_id, "report", "report.md"))
        return RunStatus(run_id, state, reason, message, stage=stored.get("stage", ""), details=details)

    def _save_log(self, run_id: str) -> None:
        """Keep a finished run's log in the store beside its outputs."""
        log = self._dir(run_id) / "job.log"
        key = run_key(run_id, "logs", "job.log")
        if log.exists() and not self.store.exists(key):
            self.store.write_bytes(key, log.read_bytes())

    def logs(self, run_id: str, *, follow: bool = False, previous: bool = False) -> Iterator[str]:
        log = self._dir(run_id) / "job.log"
        if not log.exists():
            try:
                yield from (
                    self.store.read_bytes(run_key(run_id, "logs", "job.log")).decode(errors="replace").splitlines()
                )
            except FileNotFoundError:
                raise UserError(f"no logs for run {run_id!r} on this machine or in the store") from None
            return
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

    def cancel(self, run_id: str) -> RunStatus:
        run_dir = self._dir(run_id)
        try:
            pid = json.loads((run_dir / "process.json").read_text())["pid"]
        except (OSError, ValueError, KeyError):
            pid = None  # started elsewhere or long ago: nothing runs here, only the record changes
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "cancelled").write_text(now())
        # torchrun starts its workers in sessions of their own, so signalling our process group is not enough:
        # every descendant, found before the signals, gets them too.
        processes = process_tree(pid) if pid is not None else []
        for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            processes += [p for p in (process_tree(pid) if pid is not None else []) if p not in processes]
            for process in processes:
                with contextlib.suppress(psutil.Error):
                    process.send_signal(sig)
            _, alive = psutil.wait_procs(processes, timeout=grace)
            if not alive:
                break
        self.store.write_json(
            run_key(run_id, "status.json"),
            {
                **self.store.read_json(run_key(run_id, "status.json")),
                "state": "Cancelled",
                "reason": "Cancelled",
                "message": "stopped by ctl cancel",
                "updated": now(),
            },
        )
        return self.status(run_id)

    def wait(self, run_id: str, *, poll_seconds: float = 1.0) -> RunStatus:
        while True:
            current = self.status(run_id)
            if current.finished:
                return current
            time.sleep(poll_seconds)

    def list_runs(self) -> list[RunStatus]:
        runs = []
        for run_id in self.store.list_dirs("runs"):
            try:
                runs.append(self.status(run_id))
            except UserError:
                continue
        return runs

    def spec_of(self, run_id: str) -> StageSpec:
        stored = self._stored_spec(run_id)
        if stored is None:
            raise UserError(f"no run {run_id!r} in {self.store.root_uri}")
        return spec_from_json(stored)


def driver_alive(driver: dict | None) -> bool:
    """False only when the recorded driver ran on this host and its process is gone."""
    if not driver or driver.get("host") != socket.gethostname():
        return True
    try:
        return psutil.Process(int(driver["pid"])).status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, KeyError, ValueError):
        return False


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
