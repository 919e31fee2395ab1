"""The flags `ctl` commands share, and the one call that turns spec flags into a spec."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click
import yaml

from zhllama.errors import UserError
from zhllama.spec import PRESETS, STAGE_SPECS, StageSpec, TrainSpec, resolve_spec

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_STORE = "file://./artifacts"
STAGES = list(STAGE_SPECS)


def user_errors(func: F) -> F:
    """Print a UserError as one line (no traceback) and exit 2."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except UserError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]


def spec_options(func: F) -> F:
    """The flags every spec-building command shares."""
    options = [
        click.option(
            "--size",
            type=click.Choice(list(PRESETS)),
            default="smol",
            show_default=True,
            help="Size preset the defaults come from.",
        ),
        click.option(
            "-f",
            "--file",
            "spec_file",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="YAML file of spec fields.",
        ),
        click.option(
            "--set",
            "sets",
            multiple=True,
            metavar="KEY=VALUE",
            help="Override a spec field (dotted keys, YAML values); repeatable.",
        ),
        click.option("--bits", type=click.Choice(["16", "8", "4"]), help="Load the base in 16, 8 or 4 bits."),
        click.option("--gpus", type=int, help="Total GPUs (filled into whole nodes: 48 = 6 pods x 8)."),
        click.option("--run-id", help="Run id (default: <stage>-<time>-<random>)."),
        click.option(
            "--store", envvar="ZHLLAMA_STORE",
            help=f"Store root URI [env ZHLLAMA_STORE; run: default {DEFAULT_STORE}; submit: s3://... or the "
            "--values files' s3.bucket/prefix]."
        ),
        click.option("--dry-run", is_flag=True, help="Print the resolved spec (or manifests) and stop."),
        click.option("--force", is_flag=True, help="Replace a run of the same id that has a different spec."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def build_spec(
    stage: str,
    size: str,
    spec_file: Path | None,
    sets: tuple[str, ...],
    bits: str | None,
    gpus: int | None,
    run_id: str | None,
    store: str | None,
) -> StageSpec:
    flags = list(sets)
    if bits is not None:
        flags.append(f"{'overrides.pretrain.bits' if stage == 'pipeline' else 'bits'}={bits}")
        if stage == "pipeline":
            flags.append(f"overrides.sft.bits={bits}")
    values = {"store": store} if store else None  # else a -f file's or --set store, or the spec's default
    return resolve_spec(stage, size=size, file=spec_file, sets=flags, values=values, run_id=run_id, gpus=gpus)


def dump(spec: StageSpec) -> str:
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def echo_memory_plan(spec: StageSpec) -> None:
    """After a dry run's YAML: the pretrain/sft memory plan per GPU, as YAML comments."""
    if isinstance(spec, TrainSpec):
        from zhllama.train.memory_check import plan_lines

        for line in plan_lines(spec):
            click.echo(f"# {line}")


store_option = click.option(
    "--store",
    envvar="ZHLLAMA_STORE",
    default=DEFAULT_STORE,
    show_default=True,
    help="Store root URI [env ZHLLAMA_STORE].",
)
