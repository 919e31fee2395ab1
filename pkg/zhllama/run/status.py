"""What `ctl status`, `ctl ls` and `ctl watch` show: the run record, reconciled with what its backend observes."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

import psutil

from zhllama.run.heartbeat import age_s, lease_s, read_heartbeat, start_grace_s
from zhllama.run.layout import run_key
from zhllama.run.record import FINISHED, RunRecord, RunState, transition
from zhllama.store import ArtifactStore


@dataclass(frozen=True)
class RunStatus:
    run_id: str
    state: RunState
    reason: str = ""
    """Why, in a word: Unschedulable, ImagePullBackOff, OOMKilled, DeadlineExceeded, InvalidInput, ..."""
    message: str = ""
    """One line a person can act on."""
    stage: str = ""
    details: dict[str, str] = field(default_factory=dict)
    """Extra facts worth showing (started, finished, report path, restarts)."""

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    def line(self) -> str:
        why = f" ({self.reason}{': ' + self.message if self.message else ''})" if self.reason or self.message else ""
        return f"{self.run_id}  {self.stage or '-':9}  {self.state}{why}"


def reconcile(store: ArtifactStore, record: RunRecord, observed: RunStatus | None) -> RunStatus:
    """The run's state for display, recording an end that only the backend saw.

    The record wins once it is finished (the job's own reason, e.g. InvalidInput, is the precise one). Before
    that, a backend that observes the run ended (OOMKilled, Killed, BackoffLimitExceeded) makes the transition,
    so every later reader sees it in the store; a live observation (Unschedulable, ImagePullBackOff,
    Restarting) is shown without being written, since it changes as often as the cluster does.
    """
    if record.is_finished:
        return _status(store, record, None)
    if record.backend == "pipeline":
        observed = _driver_observation(record)
    if observed is None:
        observed = _lease_observation(store, record)
    if observed is not None:
        if observed.finished:
            record = transition(
                store, record.run_id, observed.state, by=record.backend, reason=observed.reason,
                message=observed.message,
            )
        else:
            return _status(store, record, observed)
    return _status(store, record, None)


def _status(store: ArtifactStore, record: RunRecord, live: RunStatus | None) -> RunStatus:
    details = {k: str(v) for k, v in (("started", record.started), ("finished", record.finished)) if v}
    details["updated"] = record.updated
    if record.attempt > 1:
        details["attempt"] = str(record.attempt)
    if live is not None:
        details.update(live.details)
    report = run_key(record.run_id, "report", "report.md")
    if record.stage == "pipeline" and store.exists(report):
        details["report"] = store.uri(report)
    if live is not None:
        return RunStatus(record.run_id, live.state, live.reason, live.message, record.stage, details)
    return RunStatus(record.run_id, record.state, record.reason, record.message, record.stage, details)


def _lease_observation(store: ArtifactStore, record: RunRecord) -> RunStatus | None:
    """Failed (Lost) when a run that should be beating has not for longer than the lease.

    A Running job beats; so does a local run from the moment its process starts (Pending lasts seconds there).
    A Pending cluster run may wait hours in a queue without a process to beat, so it is left to the cluster.
    """
    if not (record.state == "Running" or (record.state == "Pending" and record.backend == "local")):
        return None
    beat = read_heartbeat(store, record.run_id)
    last = beat["at"] if beat is not None and beat.get("attempt") == record.attempt else None
    since = last or record.updated
    age = age_s(since)
    allowed = lease_s() + (start_grace_s() if last is None else 0.0)
    if age is None or age <= allowed:
        return None
    where = f" from {beat['host']}" if last and beat is not None and beat.get("host") else ""
    what = f"no heartbeat since {since}{where}" if last else f"no heartbeat at all since {since}"
    return RunStatus(
        record.run_id, "Failed", "Lost",
        f"{what} ({age:.0f}s > {allowed:.0f}s): the job is gone (killed, its machine lost, or the store "
        "unreachable from it); run the same command again to resume", record.stage,
    )


def _driver_observation(record: RunRecord) -> RunStatus | None:
    """A pipeline is driven by a ctl process: known dead only when it ran on this host and is gone."""
    if record.is_finished or record.host != socket.gethostname() or record.pid is None:
        return None
    if process_alive(record.pid):
        return None
    return RunStatus(
        record.run_id, "Failed", "Interrupted",
        "the ctl driving this pipeline stopped; run the same command again to resume", record.stage,
    )


def process_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
