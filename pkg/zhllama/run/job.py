"""The body of every jobs/<stage>.py: read the spec, reuse finished outputs, run the stage, record the outcome."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from zhllama.errors import UserError
from zhllama.run.context import RunContext
from zhllama.run.heartbeat import Heartbeat
from zhllama.run.inputs import changed_inputs
from zhllama.run.layout import now
from zhllama.run.record import adopt, outputs_verify, read_record, spec_record
from zhllama.spec import spec_from_json

VERIFY_ENV = "ZHLLAMA_VERIFY"
"""`full`: check every byte of finished outputs before reusing them (`ctl run --verify`); else sizes and samples."""


def job_main(stage: str, run_stage: Callable[[RunContext], None], argv: list[str] | None = None) -> None:
    """Parse `--spec`, then run `run_stage` under the run's record: Running, then Succeeded or Failed."""
    parser = argparse.ArgumentParser(prog=f"jobs/{stage}.py", description=f"Run the {stage} stage from a spec.")
    parser.add_argument("--spec", required=True, help="path to the resolved spec.json")
    parser.add_argument("--workdir", type=Path, default=None, help="local scratch directory")
    args = parser.parse_args(argv)
    try:
        spec = spec_from_json(json.loads(Path(args.spec).read_text(encoding="utf-8")))
    except (OSError, json.JSONDecodeError) as err:
        print(f"error: cannot read spec {args.spec}: {err}", file=sys.stderr)
        sys.exit(2)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    if spec.stage != stage:
        print(f"error: {args.spec} is a {spec.stage} spec, not {stage}", file=sys.stderr)
        sys.exit(2)
    ctx = RunContext.create(spec, args.workdir)
    if ctx.is_main:
        adopt(ctx.store, spec, "kubernetes" if "KUBERNETES_SERVICE_HOST" in os.environ else "local")
    # The beat starts before the reuse check: verifying big outputs takes a while, and so does a failure's report.
    with _heartbeat(ctx):
        _run_recorded(ctx, run_stage)


def _run_recorded(ctx: RunContext, run_stage: Callable[[RunContext], None]) -> None:
    """Reuse finished outputs or run the stage, recording Running, then Succeeded or Failed (with why)."""
    try:
        if outputs_done(ctx):
            print(f"{ctx.run_id}: outputs already complete for this spec; nothing to do", flush=True)
            ctx.set_status("Succeeded", reused=True)
            return
        ctx.set_status("Running", started=now(), host=socket.gethostname(), pid=os.getpid())
        run_stage(ctx)
        ctx.set_status("Succeeded")
    except UserError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        # Only "\n" ends the line: str.splitlines() would also cut at a control character quoted in the message.
        ctx.set_status("Failed", reason="InvalidInput", message=str(err).split("\n", 1)[0])
        sys.exit(2)
    except Exception as err:
        traceback.print_exc()
        ctx.set_status("Failed", reason=type(err).__name__, message=str(err)[:500])
        sys.exit(1)


def _heartbeat(ctx: RunContext) -> contextlib.AbstractContextManager[object]:
    """Rank 0 beats for the whole job: the other ranks live and die with it (torchrun stops them together)."""
    if not ctx.is_main:
        return contextlib.nullcontext()
    return Heartbeat(ctx.store, ctx.run_id, read_record(ctx.store, ctx.run_id).attempt)


def outputs_done(ctx: RunContext) -> bool:
    """True when every output is complete and was made by this same spec (a different spec is an error)."""
    names = type(ctx.spec).outputs
    if not names or not all(ctx.output_complete(n) for n in names):
        return False
    if not outputs_verify(ctx.store, ctx.run_id, names, full=os.environ.get(VERIFY_ENV) == "full"):
        if ctx.is_main:  # a corrupt artifact must not stay "complete" for a later stage to take
            for name in names:
                ctx.store.delete_prefix(ctx.key("outputs", name))
        return False
    for name in names:
        made_by = ctx.store.read_manifest(ctx.key("outputs", name)).get("spec", {})
        if made_by != spec_record(ctx.spec):
            raise UserError(
                f"run {ctx.run_id} already has a complete {name!r} output made by a different spec; "
                "use a new --run-id, or delete the run first"
            )
    changed = changed_inputs(ctx.store, ctx.run_id, names)
    if changed:
        print(f"{ctx.run_id}: inputs changed since the outputs were made ({', '.join(changed)}); running again")
        return False
    return True
