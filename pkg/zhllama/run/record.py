"""The run record: the only writer of a run's `spec.json` and `status.json`.

Everyone who changes a run's state (the job itself, a backend's submit and cancel, the pipeline driver, and the
reconcile of what a backend observes) goes through `transition`, which enforces one rule: a finished run stays
finished until a new attempt is started (`open_run`). So a late "Cancelled" cannot overwrite "Succeeded", and a
reader never sees a state that no transition wrote.

Backends do not write state: they report what they observe (`Backend.observe`), and `reconcile` turns that into a
transition when it says the run ended without the job recording it (a pod OOM-killed, a process killed -9), so
`ctl ls` and `ctl status` give the same answer from the store.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

from zhllama.errors import ArtifactError, UserError
from zhllama.run.inputs import changed_inputs
from zhllama.run.layout import ATTEMPTS_DIR, SPEC_FILE, STATUS_FILE, now, run_key
from zhllama.spec import StageSpec
from zhllama.store import ArtifactStore

if TYPE_CHECKING:
    from zhllama.run.status import RunStatus

RunState = Literal["Pending", "Running", "Restarting", "Succeeded", "Failed", "Cancelled", "Unknown"]
FINISHED: frozenset[str] = frozenset({"Succeeded", "Failed", "Cancelled"})
ATTACHABLE: frozenset[str] = frozenset({"Pending", "Running", "Restarting", "Succeeded"})
"""States in which submitting the same spec again attaches instead of starting a second job."""
BackendName = Literal["local", "kubernetes", "pipeline"]
MAX_TRANSITIONS = 100
"""Kept in the record, newest last; a crash-looping job must not grow status.json without bound."""


class Transition(BaseModel):
    model_config = ConfigDict(frozen=True)

    state: RunState
    at: str
    by: str
    """Who wrote it: job, local, kubernetes, pipeline, cancel."""
    reason: str = ""


class RunRecord(BaseModel):
    """What status.json holds."""

    model_config = ConfigDict(frozen=True)

    run_id: str
    stage: str
    state: RunState = "Pending"
    reason: str = ""
    """Why, in a word: Unschedulable, OOMKilled, Killed, InvalidInput, Cancelled, ..."""
    message: str = ""
    """One line a person can act on."""
    backend: BackendName = "local"
    namespace: str | None = None
    """The Kubernetes namespace of a cluster run."""
    attempt: int = 1
    created: str = ""
    updated: str = ""
    started: str | None = None
    finished: str | None = None
    reused: bool = False
    """Succeeded because complete outputs of the same spec were already there."""
    host: str | None = None
    pid: int | None = None
    """The process that drives the run: the job's rank 0, or the ctl driving a pipeline."""
    transitions: tuple[Transition, ...] = ()

    @property
    def is_finished(self) -> bool:
        return self.state in FINISHED


def spec_record(spec: StageSpec) -> dict[str, Any]:
    """The spec as spec.json and manifests hold it."""
    return spec.model_dump(mode="json")


def stored_spec(store: ArtifactStore, run_id: str) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = store.read_json(run_key(run_id, SPEC_FILE))
    except FileNotFoundError:
        return None
    return data


def read_record(store: ArtifactStore, run_id: str) -> RunRecord:
    try:
        data = store.read_json(run_key(run_id, STATUS_FILE))
    except FileNotFoundError:
        raise UserError(f"no run {run_id!r} in {store.root_uri}; `ctl ls` lists the runs") from None
    return RunRecord.model_validate(data)


def list_records(store: ArtifactStore) -> list[RunRecord]:
    records = []
    for run_id in store.list_dirs("runs"):
        try:
            records.append(read_record(store, run_id))
        except UserError:
            continue  # a prefix without a status (a run being created, or debris): not a run yet
    return records


def open_run(
    store: ArtifactStore,
    spec: StageSpec,
    *,
    backend: BackendName,
    force: bool = False,
    namespace: str | None = None,
) -> tuple[RunRecord, bool]:
    """Record a new attempt of `spec`'s run (Pending): (its record, whether this caller must start its job).

    Backends ask `attached` first, so a live or succeeded run of the same spec is joined, never started
    twice. The same spec after a failure is the next attempt (training resumes from its checkpoints). A
    different spec is refused unless `force`, which deletes the old outputs and checkpoints first.

    Attempt N exists once `runs/<id>/attempts/N.json` is created, exclusively: of two submits released at the
    same instant one creates it and starts the job; the other gets (the winner's record, False) and attaches.
    """
    existing = stored_spec(store, spec.run_id)
    wanted = spec_record(spec)
    previous = _record_or_none(store, spec.run_id)
    if existing is not None and existing != wanted:
        if not force:
            changed = sorted(k for k in set(existing) | set(wanted) if existing.get(k) != wanted.get(k))
            raise UserError(
                f"run {spec.run_id} already exists with a different spec (changed: {', '.join(changed)}); "
                "pass --force to replace it or choose another --run-id"
            )
        store.delete_prefix(run_key(spec.run_id, "outputs"))
        store.delete_prefix(run_key(spec.run_id, "checkpoints"))
    attempt = previous.attempt + 1 if previous is not None else 1
    stamp = now()
    claim = json.dumps({"attempt": attempt, "by": backend, "at": stamp, "host": socket.gethostname()}).encode()
    if not store.create_exclusive(run_key(spec.run_id, ATTEMPTS_DIR, f"{attempt}.json"), claim):
        return _wait_for_attempt(store, spec.run_id, attempt), False
    store.write_json(run_key(spec.run_id, SPEC_FILE), wanted)
    record = RunRecord(
        run_id=spec.run_id,
        stage=spec.stage,
        backend=backend,
        namespace=namespace,
        attempt=attempt,
        created=previous.created if previous is not None else stamp,
        updated=stamp,
        transitions=(previous.transitions if previous is not None else ())
        + (Transition(state="Pending", at=stamp, by=backend),),
    )
    _write(store, record)
    return record, True


def _record_or_none(store: ArtifactStore, run_id: str) -> RunRecord | None:
    try:
        return read_record(store, run_id)
    except UserError:
        return None


def _wait_for_attempt(store: ArtifactStore, run_id: str, attempt: int, timeout_s: float = 60.0) -> RunRecord:
    """The record of an attempt another submit claimed a moment ago, once it has written it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        record = _record_or_none(store, run_id)
        if record is not None and record.attempt >= attempt:
            return record
        time.sleep(0.2)
    raise UserError(f"run {run_id}: attempt {attempt} was claimed by another submit that has not recorded it in "
                    f"{timeout_s:.0f}s; check `ctl status {run_id}` and submit again")


def adopt(store: ArtifactStore, spec: StageSpec, backend: BackendName) -> None:
    """Give a job started without ctl (a plain `helm install`, a hand-run jobs/<stage>.py) a record to write to."""
    if _record_or_none(store, spec.run_id) is None:
        open_run(store, spec, backend=backend, force=True)


def attached(
    store: ArtifactStore, spec: StageSpec, status_of: Callable[[str], RunStatus], *, verify_full: bool = False
) -> RunStatus | None:
    """The run a submit of `spec` joins instead of starting a new attempt, or None to start one.

    Only a run of exactly this spec that is live or done is joined. A done one is not when its inputs changed
    since (an upstream step ran again) or its outputs fail verification (cheap: sizes and sampled chunks;
    every byte with `verify_full`): its job then runs and remakes them.
    """
    if stored_spec(store, spec.run_id) != spec_record(spec):
        return None
    current = status_of(spec.run_id)
    if current.state not in ATTACHABLE:
        return None
    if current.state == "Succeeded" and (
        changed_inputs(store, spec.run_id, type(spec).outputs)
        or not outputs_verify(store, spec.run_id, type(spec).outputs, full=verify_full)
    ):
        return None
    return current


def outputs_verify(store: ArtifactStore, run_id: str, outputs: tuple[str, ...], *, full: bool = False) -> bool:
    """Whether every complete output still matches its manifest; says which does not."""
    for name in outputs:
        key = run_key(run_id, "outputs", name)
        if not store.is_complete(key):
            continue
        try:
            store.verify(key, full=full)
        except ArtifactError as err:
            print(f"{run_id}: output {name!r} fails verification ({err}); running the stage again", flush=True)
            return False
    return True


def transition(
    store: ArtifactStore,
    run_id: str,
    state: RunState,
    *,
    by: str,
    reason: str = "",
    message: str = "",
    **facts: Any,
) -> RunRecord:
    """Move the run to `state` and return the record as stored.

    A finished run is not changed (the first outcome recorded wins; `open_run` starts the next attempt).
    `facts` are other RunRecord fields: started, finished, host, pid, reused.
    """
    record = read_record(store, run_id)
    if record.is_finished:
        return record
    stamp = now()
    if state in FINISHED:
        facts.setdefault("finished", stamp)
    record = record.model_copy(
        update={
            "state": state,
            "reason": reason,
            "message": message,
            "updated": stamp,
            "transitions": (*record.transitions, Transition(state=state, at=stamp, by=by, reason=reason))[
                -MAX_TRANSITIONS:
            ],
            **facts,
        }
    )
    _write(store, record)
    return record


def _write(store: ArtifactStore, record: RunRecord) -> None:
    store.write_json(run_key(record.run_id, STATUS_FILE), record.model_dump(mode="json"))
