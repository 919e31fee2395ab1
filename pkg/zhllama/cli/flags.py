"""The flags `ctl` commands share, and the one call that turns spec flags into a spec."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
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


@dataclass(frozen=True)
class SpecFlags:
    """The spec flags of one command line; `spec(stage)` is the one resolution they get."""

    size: str
    spec_file: Path | None
    sets: tuple[str, ...]
    bits: str | None
    gpus: int | None
    run_id: str | None
    store: str | None

    def spec(self, stage: str, *, default_store: str | None = None) -> StageSpec:
        """`default_store`: the store when no flag, file or --set gives one (submit: the values files')."""
        sets = list(self.sets)
        if self.bits is not None:
            sets.append(f"{'overrides.pretrain.bits' if stage == 'pipeline' else 'bits'}={self.bits}")
            if stage == "pipeline":
                sets.append(f"overrides.sft.bits={self.bits}")
        store = self.store or default_store
        values = {"store": store} if store else None  # else a -f file's or --set store, or the spec's default
        return resolve_spec(stage, size=self.size, file=self.spec_file, sets=sets, values=values,
                            run_id=self.run_id, gpus=self.gpus)


SPEC_OPTIONS = [
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
]


def spec_options(func: F) -> F:
    """The spec flags, handed to the command as one `flags: SpecFlags` argument."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        flags = SpecFlags(**{name: kwargs.pop(name) for name in SpecFlags.__dataclass_fields__})
        return func(*args, flags=flags, **kwargs)

    for option in reversed(SPEC_OPTIONS):
        wrapper = option(wrapper)
    return wrapper  # type: ignore[return-value]


def start_options(func: F) -> F:
    """The flags of the commands that start runs."""
    options = [
        click.option("--dry-run", is_flag=True, help="Print the resolved spec (or manifests) and stop."),
        click.option("--force", is_flag=True, help="Replace a run of the same id that has a different spec."),
        click.option("--verify", is_flag=True,
                     help="Check every byte of finished outputs before reusing them (default: sizes and samples)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def check_cluster_spec(spec: StageSpec) -> None:
    """What a cluster run must pass before anything is created: a store that outlives pods, a memory plan
    that fits (a helm install of one that does not fails hours later, on the GPUs)."""
    from zhllama.backends.k8s_chart import check_cluster_store

    check_cluster_store(spec)
    if isinstance(spec, TrainSpec):
        from zhllama.train.memory_check import check_plan

        check_plan(spec)


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
