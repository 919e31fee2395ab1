"""The job's heartbeat: proof of life that a reader on any machine can check in the store alone.

Rank 0 of a running job rewrites `runs/<id>/heartbeat.json` every ZHLLAMA_HEARTBEAT_S seconds (default 15) and
uploads its log so far as `logs/attempt-<n>.log`. A reader that finds a Running record whose last beat is older
than the lease (ZHLLAMA_LEASE_S, default 120) knows the job is gone, whatever killed it (SIGKILL, a lost node, the
store unreachable from the pod), and `reconcile` records it as Failed (Lost).

The beat is a file of its own, not a field of status.json, so the job and the record's writers never race on one
object. A job that finds its attempt superseded (a re-run took the run over after its lease ran out) stops
itself, so two attempts never publish into one run.
"""

from __future__ import annotations

import datetime
import os
import socket
import sys
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

from zhllama.run.layout import ATTEMPTS_DIR, now, run_key
from zhllama.store import ArtifactStore

HEARTBEAT_FILE = "heartbeat.json"
LOG_FILE_ENV = "ZHLLAMA_LOG_FILE"
"""Set by the local backend: the file this attempt's output goes to, uploaded with each beat."""
EXIT_TAKEN_OVER = 75


def beat_interval_s() -> float:
    return float(os.environ.get("ZHLLAMA_HEARTBEAT_S", "15"))


def start_grace_s() -> float:
    """How long a local run may stay Pending without a beat: its process imports torch and checks its inputs
    before the first beat."""
    return float(os.environ.get("ZHLLAMA_START_GRACE_S", "60"))


def lease_s() -> float:
    """How long without a beat before a running job counts as gone: several beats, so one slow write is not
    taken for a death."""
    return float(os.environ.get("ZHLLAMA_LEASE_S", "120"))


def attempt_log_key(run_id: str, attempt: int) -> str:
    return run_key(run_id, "logs", f"attempt-{attempt}.log")


def read_heartbeat(store: ArtifactStore, run_id: str) -> dict[str, Any] | None:
    try:
        beat: dict[str, Any] = store.read_json(run_key(run_id, HEARTBEAT_FILE))
    except FileNotFoundError:
        return None
    return beat


def current_attempt(store: ArtifactStore, run_id: str) -> int:
    """The newest attempt claimed (attempts/<n>.json): a re-run's claim supersedes a job whose lease ran out."""
    claimed = [int(Path(key).stem) for key in store.list_keys(run_key(run_id, ATTEMPTS_DIR))
               if Path(key).stem.isdigit()]
    return max(claimed, default=0)


def age_s(stamp: str | None) -> float | None:
    """Seconds since an ISO timestamp written by `now()`; None for no stamp."""
    if not stamp:
        return None
    then = datetime.datetime.fromisoformat(stamp)
    return (datetime.datetime.now(datetime.timezone.utc) - then).total_seconds()


class Heartbeat:
    """A daemon thread beating for one attempt of a run while the `with` block runs."""

    def __init__(self, store: ArtifactStore, run_id: str, attempt: int) -> None:
        self.store, self.run_id, self.attempt = store, run_id, attempt
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="zhllama-heartbeat", daemon=True)
        self._warned = False
        log = os.environ.get(LOG_FILE_ENV)
        self._log = Path(log) if log else None

    def __enter__(self) -> Heartbeat:
        self.beat()
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(timeout=beat_interval_s() + 30)
        self._upload_log()

    def _loop(self) -> None:
        while not self._stop.wait(beat_interval_s()):
            self.beat()

    def beat(self) -> None:
        """One beat; a store that does not answer is reported once and retried at the next beat."""
        try:
            if current_attempt(self.store, self.run_id) != self.attempt:
                print(f"{self.run_id}: attempt {self.attempt} was taken over by a newer attempt after its lease "
                      "ran out; stopping this one", file=sys.stderr, flush=True)
                os._exit(EXIT_TAKEN_OVER)
            self.store.write_json(run_key(self.run_id, HEARTBEAT_FILE), {
                "attempt": self.attempt, "at": now(), "host": socket.gethostname(), "pid": os.getpid(),
            })
            self._upload_log()
        except Exception as err:  # noqa: BLE001 - the beat must never kill the job it reports on
            if not self._warned:
                print(f"warning: heartbeat to {self.store.root_uri} failed ({type(err).__name__}: {err}); "
                      "retrying every beat", file=sys.stderr, flush=True)
                self._warned = True

    def _upload_log(self) -> None:
        if self._log is not None and self._log.exists():
            self.store.write_bytes(attempt_log_key(self.run_id, self.attempt), self._log.read_bytes())
