"""One interface for where a run executes: this machine (LocalBackend) or a cluster (KubernetesBackend).

A backend starts, stops and observes jobs; it never writes a run's state. `status` and `list_runs` reconcile the
run record in the store with what `observe` sees (zhllama.run.reconcile), so every reader gets the same answer.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from zhllama.run import RunRecord, RunStatus
from zhllama.spec import StageSpec


class Backend(Protocol):
    def submit(self, spec: StageSpec, *, force: bool = False, verify: bool = False) -> RunStatus:
        """Start the run (or attach to it when the same spec is already there); a different spec needs force.

        Finished outputs are reused only if they verify: by sizes and sampled chunks, or every byte with `verify`.
        """
        ...

    def observe(self, record: RunRecord) -> RunStatus | None:
        """What the backend sees of the record's attempt right now, or None when it knows nothing of it."""
        ...

    def status(self, run_id: str) -> RunStatus:
        """The run record reconciled with `observe`."""
        ...

    def list_runs(self) -> list[RunStatus]:
        """Every run this backend started that it can see, reconciled."""
        ...

    def watch(self, run_id: str) -> Iterator[RunStatus]:
        """Each new state of the run until it finishes."""
        ...

    def wait(self, run_id: str) -> RunStatus:
        """Block until the run finishes."""
        ...

    def logs(self, run_id: str, *, follow: bool = False, previous: bool = False) -> Iterator[str]: ...

    def cancel(self, run_id: str) -> RunStatus:
        """Stop the run; a finished run is left as it is."""
        ...
