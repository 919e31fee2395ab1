"""The pretrain and sft stages: `recipe.setup`, `loop.fit`, then rank 0 publishes the metrics and the adapter."""

from __future__ import annotations

from typing import TYPE_CHECKING

from zhllama.errors import UserError
from zhllama.train.loop import TrainResult, fit
from zhllama.train.recipe import METRICS_DIR, TrainSetup, setup

if TYPE_CHECKING:
    from zhllama.run import RunContext


def run_train(ctx: RunContext) -> None:
    """One training stage (pretrain or sft, as the spec says) from the run context to the `adapter` output."""
    prepared = setup(ctx)
    publish(ctx, prepared, fit(prepared))


def publish(ctx: RunContext, prepared: TrainSetup, result: TrainResult) -> None:
    """The metrics directory, then the adapter (its manifest last: the run's output is complete only then)."""
    if not ctx.is_main:
        return
    ctx.store.publish_dir(prepared.outputs.metrics_dir, ctx.key(METRICS_DIR), extra={"steps": result.steps},
                          progress=False)
    ctx.publish("adapter", extra={"init_new_rows": prepared.spec.init_new_rows, "vocab": result.vocab,
                                  "final_loss": result.final_loss, "steps": result.steps})


def run_pretrain(ctx: RunContext) -> None:
    if ctx.spec.stage != "pretrain":
        raise UserError(f"run_pretrain got a {ctx.spec.stage} spec; use run_sft")
    run_train(ctx)


def run_sft(ctx: RunContext) -> None:
    if ctx.spec.stage != "sft":
        raise UserError(f"run_sft got a {ctx.spec.stage} spec; use run_pretrain")
    run_train(ctx)
