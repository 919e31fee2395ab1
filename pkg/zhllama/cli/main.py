"""`ctl`: parses flags and calls a Backend, the pipeline or a stage. No logic of its own."""

from __future__ import annotations

import json
import os
import sys
import time

import click
from pydantic_core import to_jsonable_python

from zhllama.cli.flags import (
    STAGES,
    SpecFlags,
    check_cluster_spec,
    dump,
    echo_memory_plan,
    spec_options,
    start_options,
    store_option,
    user_errors,
)
from zhllama.cli.runs import COMMANDS as RUN_COMMANDS
from zhllama.spec import PRESETS, STAGE_SPECS, GenerateSpec, PipelineSpec, StageSpec, resolve_spec


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="zhllama")
def cli() -> None:
    """zhllama: extend a LLaMA-family model to Chinese — tokenizer, pretrain, sft, merge, quantize, eval."""


@cli.command()
@click.argument("stage", type=click.Choice(STAGES))
# `ctl run` always runs on this machine; `--local` is accepted so the documented `ctl run ... --local` works.
@click.option("--local", is_flag=True, expose_value=False, hidden=True)
@click.option("--detach", is_flag=True, help="Start and return; follow with `ctl logs -f`.")
@spec_options
@start_options
@user_errors
def run(stage: str, detach: bool, flags: SpecFlags, dry_run: bool, force: bool, verify: bool) -> None:
    """Run a STAGE (or the whole pipeline) on this machine."""
    from zhllama.backends.local import LocalBackend

    spec = flags.spec(stage)
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
            result = run_pipeline(spec, backend, on_step=follow, force=force, verify=verify)
        except KeyboardInterrupt:
            for current in backend.list_runs():
                if current.run_id.startswith(f"{spec.run_id}-") and not current.finished:
                    backend.cancel(current.run_id)
            click.echo(f"\ninterrupted: the same command resumes pipeline {spec.run_id}", err=True)
            sys.exit(130)
    else:
        result = backend.submit(spec, force=force, verify=verify)
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
@start_options
@user_errors
def submit(
    stage: str,
    job_kind: str,
    namespace: str | None,
    values_files: tuple[str, ...],
    wait: bool,
    flags: SpecFlags,
    dry_run: bool,
    force: bool,
    verify: bool,
) -> None:
    """Submit a STAGE (or the pipeline) to Kubernetes, rendered from charts/zhllama."""
    from zhllama.backends.k8s_chart import store_from_values
    from zhllama.backends.kubernetes import KubernetesBackend

    spec = flags.spec(stage, default_store=store_from_values(values_files))
    check_cluster_spec(spec)
    backend = KubernetesBackend(namespace=namespace, job_kind=job_kind, values_files=list(values_files))
    if dry_run and isinstance(spec, PipelineSpec):
        from zhllama.pipeline import plan

        # A pipeline has no objects of its own: ctl submits each step's chart in turn.
        for step, step_spec in plan(spec):
            click.echo(f"# pipeline step {step}: run {step_spec.run_id}\n{backend.render(step_spec)}", nl=False)
        return
    if dry_run:
        click.echo(backend.render(spec), nl=False)
        echo_memory_plan(spec)
        return
    if isinstance(spec, PipelineSpec):
        from zhllama.pipeline import run_pipeline

        result = run_pipeline(
            spec, backend, on_step=lambda step, s: click.echo(f"==> {step} ({s.run_id})"), force=force,
            verify=verify,
        )
    else:
        result = backend.submit(spec, force=force, verify=verify)
        click.echo(backend.notes(spec))
        if wait:
            result = backend.wait(spec.run_id)
    click.echo(result.line())
    if result.state == "Failed":
        sys.exit(1)


@cli.command()
@click.argument("stage", type=click.Choice(STAGES))
@click.option("--size", type=click.Choice(list(PRESETS)), default="smol", show_default=True,
              help="Size preset whose values are shown.")
@user_errors
def explain(stage: str, size: str) -> None:
    """List a stage's spec fields: the value the --size preset gives each, and its documentation."""
    resolved = resolve_spec(stage, size=size, run_id="explain").model_dump(mode="json")
    for name, field in STAGE_SPECS[stage].model_fields.items():
        shown = json.dumps(resolved.get(name), ensure_ascii=False)
        if not field.is_required():
            default = field.get_default(call_default_factory=True)
            default = to_jsonable_python(default)
            if default != resolved.get(name) and name not in ("run_id", "size"):
                shown += f"  (preset {size}; default {json.dumps(default, ensure_ascii=False)})"
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
    from zhllama.generate import chat_loop

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


@cli.command(name="values")
@click.argument("stage", type=click.Choice(STAGES))
@spec_options
@user_errors
def print_chart_values(stage: str, flags: SpecFlags) -> None:
    """Print a STAGE run's chart values, for `helm install RUN charts/zhllama -f values.yaml`.

    The values are what ctl resolves (the spec, and how to launch it): the ones `ctl submit` renders the chart
    with. Cluster settings (images, s3 endpoint and credentials, scheduling, NCCL) go in your own values file:
    `helm install RUN charts/zhllama -f cluster.yaml -f values.yaml`. Nothing is submitted.
    """
    from zhllama.backends.k8s_chart import values_yaml

    spec = flags.spec(stage)
    values = values_yaml(spec)  # first: a pipeline's problem is that it has no chart, not where its store is
    check_cluster_spec(spec)  # as `ctl submit` does
    click.echo(values, nl=False)


for command in RUN_COMMANDS:
    cli.add_command(command)


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cli(prog_name="ctl")


if __name__ == "__main__":
    main()
