"""A run: its record in the store (run.record, the only writer of spec.json/status.json), the contract a stage
function gets (run.context), its inputs by URI (run.inputs) and the job entrypoint around a stage (run.job).

May import: zhllama.spec, zhllama.store, zhllama.errors (and zhllama.embedded lazily, for embedded:// inputs).
Must not import: backends, cli, pipeline, or any stage package.
"""

from zhllama.run.context import RunContext
from zhllama.run.inputs import changed_inputs, fetch_input, input_fingerprint, locate
from zhllama.run.job import job_main, outputs_done
from zhllama.run.layout import now, run_key
from zhllama.run.process import Place
from zhllama.run.pull import pull_run
from zhllama.run.record import (
    ATTACHABLE,
    FINISHED,
    RunRecord,
    RunState,
    adopt,
    attached,
    list_records,
    open_run,
    read_record,
    spec_record,
    stored_spec,
    transition,
)
from zhllama.run.status import RunStatus, reconcile

__all__ = [
    "ATTACHABLE",
    "FINISHED",
    "Place",
    "RunContext",
    "RunRecord",
    "RunState",
    "RunStatus",
    "adopt",
    "attached",
    "changed_inputs",
    "fetch_input",
    "input_fingerprint",
    "job_main",
    "list_records",
    "locate",
    "now",
    "open_run",
    "outputs_done",
    "pull_run",
    "read_record",
    "reconcile",
    "run_key",
    "spec_record",
    "stored_spec",
    "transition",
]
