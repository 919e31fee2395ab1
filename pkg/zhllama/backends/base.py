"""One interface for where a run executes: this machine (LocalBackend) or a cluster (KubernetesBackend)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal, Protocol

from zhllama.spec import StageSpec

RunState = Literal["Pending", "Running", "Restarting", "Succeeded", "Failed", "Cancelled", "Unknown"]
FINISHED: frozenset[str] = frozenset({"Succeeded", "Failed", "Cancelled"})


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


class Backend(Protocol):
    def submit(self, spec: StageSpec, *, force: bool = False) -> RunStatus:
        """Start the run (or attach to it when the same spec is already there); a different spec needs force."""
        ...

    def status(self, run_id: str) -> RunStatus: ...

    def logs(self, run_id: str, *, follow: bool = False, previous: bool = False) -> Iterator[str]: ...

    def cancel(self, run_id: str) -> RunStatus: ...

    def wait(self, run_id: str, *, poll_seconds: float = 2.0) -> RunStatus:
        """Block until the run finishes."""
        ...
