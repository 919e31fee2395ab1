"""Where a run lives in the store, and the clock its records are stamped with.

  runs/<id>/spec.json            the resolved spec (no secrets)          written by run.record only
  runs/<id>/status.json          state, timestamps, reason, transitions  written by run.record only
  runs/<id>/attempts/<n>.json    who started attempt n (created exclusively)
  runs/<id>/heartbeat.json       the running job's proof of life          written by run.heartbeat only
  runs/<id>/logs/attempt-<n>.log each attempt's log, uploaded while it runs
  runs/<id>/outputs/<name>/      artifacts (complete when manifest.json exists)
  runs/<id>/checkpoints/step-N/  training checkpoints (artifacts too)
  runs/<id>/report/              the pipeline's report (an artifact)
"""

from __future__ import annotations

import datetime

from zhllama.errors import UserError
from zhllama.spec.base import run_id_problem
from zhllama.store import join_key

SPEC_FILE = "spec.json"
STATUS_FILE = "status.json"
REPORT = "report"
"""A pipeline's own artifact, runs/<id>/report/."""
ATTEMPTS_DIR = "attempts"
"""attempts/<n>.json: created exclusively, once per attempt, by the submit that starts it."""


def run_key(run_id: str, *parts: str) -> str:
    """The key of a run's `parts`; a run id that could not name a run (`../etc`) is refused, for reads too."""
    problem = run_id_problem(run_id)
    if problem:
        raise UserError(f"run id: {problem}")
    return join_key("runs", run_id, *parts)


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
