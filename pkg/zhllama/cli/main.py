"""`ctl`: parses flags and calls a Backend, the pipeline or a stage. No logic of its own."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click
import yaml

from zhllama.errors import UserError
from zhllama.spec import PRESETS, STAGE_SPECS, GenerateSpec, PipelineSpec, StageSpec, TrainSpec, resolve_spec

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
    spec = resolve_spec(stage, size=size, file=spec_file, sets=flags, values=values, run_id=run_id)
    if gpus is None:
        return spec
    flags += gpu_layout(gpus, spec.resources.gpus_per_node)
    return resolve_spec(stage, size=size, file=spec_file, sets=flags, values=values, run_id=spec.run_id)


def gpu_layout(total: int, per_node: int) -> list[str]:
    """`--gpus N` is the total: N <= one node's GPUs gives one pod, more fills whole nodes (48 = 6 pods x 8)."""
    if total <= 0:
        raise UserError(f"--gpus {total}: give a positive number of GPUs")
    if per_node == 0 or total <= per_node:
        return ["resources.nodes=1", f"resources.gpus_per_node={total}"]
    if total % per_node:
        raise UserError(
            f"--gpus {total} is not a multiple of the {per_node} GPUs per node; use e.g. "
            f"{(total // per_node + 1) * per_node}, or --set resources.gpus_per_node=..."
        )
    return [f"resources.nodes={total // per_node}"]


def dump(spec: StageSpec) -> str:
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def echo_memory_plan(spec: StageSpec) -> None:
    """After a dry run's YAML: the pretrain/sft memory plan per GPU, as YAML comments."""
    if isinstance(spec, TrainSpec):
        from zhllama.train.memory_check import plan_lines

        for line in plan_lines(spec):
            click.echo(f"# {line}")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="zhllama")
def cli() -> None:
    """zhllama: extend a LLaMA-family model to Chinese — tokenizer, pretrain, sft, merge, quantize, eval."""


@cli.command()
@click.argument("stage", type=click.Choice(STAGES))
@click.option("--local", is_flag=True, default=True, help="Run on this machine (the only choice for `run`).")
@click.option("--detach", is_flag=True, help="Start and return; follow with `ctl logs -f`.")
@spec_options
@user_errors
def run(
    stage: str,
    local: bool,
    detach: bool,
    size: str,
    spec_file: Path | None,
    sets: tuple[str, ...],
    bits: str | None,
    gpus: int | None,
    run_id: str | None,
    store: str | None,
    dry_run: bool,
    force: bool,
) -> None:
    """Run a STAGE (or the whole pipeline) on this machine."""
    from zhllama.backends.local import LocalBackend

    spec = build_spec(stage, size, spec_file, sets, bits, gpus, run_id, store)
    if dry_run:
        click.echo(dump(spec), nl=False)
        echo_memory_plan(spec)
        return
    backend = LocalBackend(spec.store)
    started = time.monotonic()
    if isinstance(spec, PipelineSpec):
        from zhllama.pipeline import run_pipeline

        def follow(step: str, step_spec: StageSpec) -> None:
            click.secho(f"==> {step} ({step_spec.run_id})", bold=True)
            for line in backend.logs(step_spec.run_id, follow=True):
                click.echo(line)

        try:
            result = run_pipeline(spec, backend, on_step=follow, force=force)
        except KeyboardInterrupt:
            for current in backend.list_runs():
                if current.run_id.startswith(f"{spec.run_id}-") and not current.finished:
                    backend.cancel(current.run_id)
            click.echo(f"\ninterrupted: the same command resumes pipeline {spec.run_id}", err=True)
            sys.exit(130)
    else:
        result = backend.submit(spec, force=force)
        click.echo(f"run {spec.run_id}: {result.state}")
        if detach:
            return
        try:
            if not result.finished:
                for line in backend.logs(spec.run_id, follow=True):
                    click.echo(line)
            result = backend.wait(spec.run_id)
        except KeyboardInterrupt:
            click.echo(f"\ninterrupted: stopping {spec.run_id}; the same command resumes it", err=True)
            backend.cancel(spec.run_id)
            sys.exit(130)
    click.echo(f"{result.line()}  [{time.monotonic() - started:.0f}s]")
    if "report" in result.details:
        click.echo(f"report: {result.details['report']}")
    if result.state != "Succeeded":
        sys.exit(1)


@cli.command()
@click.argument("stage", type=click.Choice(STAGES))
@click.option(
    "--backend",
    "job_kind",
    type=click.Choice(["pytorchjob", "trainjob"]),
    default="pytorchjob",
    show_default=True,
    help="Kubeflow API for distributed stages.",
)
@click.option("--namespace", "-n", envvar="ZHLLAMA_NAMESPACE", help="Kubernetes namespace (default: the context's).")
@click.option(
    "--values",
    "values_files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Extra chart values files (cluster settings: image, S3, scheduling).",
)
@click.option("--wait/--no-wait", default=False, help="Wait for the run (pipelines always wait).")
@spec_options
@user_errors
def submit(
    stage: str,
    job_kind: str,
    namespace: str | None,
    values_files: tuple[str, ...],
    wait: bool,
    size: str,
    spec_file: Path | None,
    sets: tuple[str, ...],
    bits: str | None,
    gpus: int | None,
    run_id: str | None,
    store: str | None,
    dry_run: bool,
    force: bool,
) -> None:
    """Submit a STAGE (or the pipeline) to Kubernetes, rendered from charts/zhllama."""
    from zhllama.backends.k8s_chart import check_cluster_store, store_from_values
    from zhllama.backends.kubernetes import KubernetesBackend

    spec = build_spec(stage, size, spec_file, sets, bits, gpus, run_id, store or store_from_values(values_files))
    check_cluster_store(spec)
    if isinstance(spec, TrainSpec):
        from zhllama.train.memory_check import check_plan

        check_plan(spec)
    backend = KubernetesBackend(namespace=namespace, job_kind=job_kind, values_files=list(values_files))
    if dry_run:
        click.echo(backend.render(spec), nl=False)
        echo_memory_plan(spec)
        return
    if isinstance(spec, PipelineSpec):
        from zhllama.pipeline import run_pipeline

        result = run_pipeline(
            spec, backend, on_step=lambda step, s: click.echo(f"==> {step} ({s.run_id})"), force=force
        )
    else:
        result = backend.submit(spec, force=force)
        click.echo(backend.notes(spec))
        if wait:
            result = backend.wait(spec.run_id)
    click.echo(result.line())
    if result.state == "Failed":
        sys.exit(1)


def backend_for(run_id: str, store: str | None, namespace: str | None = None) -> Any:
    """The backend a run was started with (recorded in its status in the store)."""
    from zhllama.backends.local import LocalBackend
    from zhllama.runs import run_key

    local = LocalBackend(store or DEFAULT_STORE)
    try:
        recorded = local.store.read_json(run_key(run_id, "status.json"))
    except FileNotFoundError:
        recorded = {}
    if recorded.get("backend") == "kubernetes":
        from zhllama.backends.kubernetes import KubernetesBackend

        return KubernetesBackend(namespace=namespace or recorded.get("namespace"))
    return local


store_option = click.option(
    "--store",
    envvar="ZHLLAMA_STORE",
    default=DEFAULT_STORE,
    show_default=True,
    help="Store root URI [env ZHLLAMA_STORE].",
)


@cli.command()
@click.argument("run_id")
@store_option
@click.option("--namespace", "-n", envvar="ZHLLAMA_NAMESPACE", help="Kubernetes namespace of a cluster run.")
@user_errors
def status(run_id: str, store: str, namespace: str | None) -> None:
    """Show the state of a run (and why, when it is not running)."""
    result = backend_for(run_id, store, namespace).status(run_id)
    click.echo(result.line())
    for key, value in result.details.items():
        click.echo(f"  {key}: {value}")


@cli.command()
@click.argument("run_id")
@store_option
@click.option("--namespace", "-n", envvar="ZHLLAMA_NAMESPACE")
@user_errors
def watch(run_id: str, store: str, namespace: str | None) -> None:
    """Follow a run's state until it finishes."""
    backend = backend_for(run_id, store, namespace)
    if hasattr(backend, "watch"):
        for current in backend.watch(run_id):
            click.echo(current.line())
        return
    last = None
    while True:
        current = backend.status(run_id)
        if current.line() != last:
            click.echo(current.line())
            last = current.line()
        if current.finished:
            return
        time.sleep(1)


@cli.command()
@click.argument("run_id")
@click.option("-f", "--follow", is_flag=True, help="Keep printing until the run finishes.")
@click.option("--previous", is_flag=True, help="The previous container's log after a restart (Kubernetes).")
@store_option
@click.option("--namespace", "-n", envvar="ZHLLAMA_NAMESPACE", help="Kubernetes namespace of a cluster run.")
@user_errors
def logs(run_id: str, follow: bool, previous: bool, store: str, namespace: str | None) -> None:
    """Print a run's log (the master pod's on Kubernetes)."""
    for line in backend_for(run_id, store, namespace).logs(run_id, follow=follow, previous=previous):
        click.echo(line)


@cli.command(name="ls")
@store_option
@user_errors
def list_runs(store: str) -> None:
    """List the runs in the store."""
    from zhllama.backends.local import LocalBackend

    runs = LocalBackend(store).list_runs()
    if not runs:
        click.echo(f"no runs in {store}")
    for current in runs:
        click.echo(current.line())


@cli.command()
@click.argument("run_id")
@store_option
@click.option("--namespace", "-n", envvar="ZHLLAMA_NAMESPACE", help="Kubernetes namespace of a cluster run.")
@user_errors
def cancel(run_id: str, store: str, namespace: str | None) -> None:
    """Stop a run."""
    click.echo(backend_for(run_id, store, namespace).cancel(run_id).line())


@cli.command()
@click.argument("run_id")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@store_option
@user_errors
def pull(run_id: str, dest: Path, store: str) -> None:
    """Download a run's outputs into DEST, checking every file against its manifest."""
    from zhllama.runs import pull_run
    from zhllama.store import open_store

    for path in pull_run(open_store(store), run_id, dest):
        click.echo(str(path))


@cli.command()
@click.argument("stage", type=click.Choice(STAGES))
def explain(stage: str) -> None:
    """List a stage's spec fields with their documentation."""
    model = STAGE_SPECS[stage]
    for name, field in model.model_fields.items():
        if field.is_required():
            shown = "(required)"
        else:
            default = field.get_default(call_default_factory=True)
            if hasattr(default, "model_dump"):
                default = default.model_dump(mode="json")
            shown = json.dumps(default, ensure_ascii=False)
        click.echo(f"{name}: {shown}")
        if field.description:
            click.echo(f"    {field.description}")


@cli.command()
@click.option("--model", required=True, help="Model URI (HF dir, GGUF artifact, or base for --adapter).")
@click.option("--adapter", "adapters", multiple=True, help="Adapter URI, applied in order; repeatable.")
@click.option("--tokenizer", help="Tokenizer URI when not inside the model.")
@click.option("--gguf-file", help="GGUF file name inside --model.")
@store_option
@user_errors
def chat(model: str, adapters: tuple[str, ...], tokenizer: str | None, gguf_file: str | None, store: str) -> None:
    """Chat with a model locally (Human:/Assistant: context inside the Alpaca prompt; the paper's decoding)."""
    from zhllama.eval.generation import chat_loop

    spec = resolve_spec(
        "generate",
        values={
            "model": model,
            "adapters": list(adapters),
            "tokenizer": tokenizer,
            "gguf_file": gguf_file,
            "store": store,
        },
    )
    assert isinstance(spec, GenerateSpec)
    chat_loop(spec)


@cli.command(name="chart-presets")
@user_errors
def chart_presets() -> None:
    """Regenerate charts/zhllama/files/presets.json from the size presets (run after changing them)."""
    from zhllama.backends.k8s_chart import write_chart_presets

    click.echo(f"wrote {write_chart_presets()}")


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cli(prog_name="ctl")


if __name__ == "__main__":
    main()
