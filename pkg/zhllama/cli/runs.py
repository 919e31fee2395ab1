"""`ctl` commands about existing runs: status, watch, logs, ls, cancel, pull. Each asks the run's own backend."""

from __future__ import annotations

from pathlib import Path

import click

from zhllama.backends import backend_of_run
from zhllama.cli.flags import store_option, user_errors


@click.command()
@click.argument("run_id")
@store_option
@click.option("--namespace", "-n", envvar="ZHLLAMA_NAMESPACE", help="Kubernetes namespace of a cluster run.")
@user_errors
def status(run_id: str, store: str, namespace: str | None) -> None:
    """Show the state of a run (and why, when it is not running)."""
    result = backend_of_run(run_id, store, namespace).status(run_id)
    click.echo(result.line())
    for key, value in result.details.items():
        click.echo(f"  {key}: {value}")


@click.command()
@click.argument("run_id")
@store_option
@click.option("--namespace", "-n", envvar="ZHLLAMA_NAMESPACE")
@user_errors
def watch(run_id: str, store: str, namespace: str | None) -> None:
    """Follow a run's state until it finishes."""
    for current in backend_of_run(run_id, store, namespace).watch(run_id):
        click.echo(current.line())


@click.command()
@click.argument("run_id")
@click.option("-f", "--follow", is_flag=True, help="Keep printing until the run finishes.")
@click.option("--previous", is_flag=True, help="The previous container's log after a restart (Kubernetes).")
@store_option
@click.option("--namespace", "-n", envvar="ZHLLAMA_NAMESPACE", help="Kubernetes namespace of a cluster run.")
@user_errors
def logs(run_id: str, follow: bool, previous: bool, store: str, namespace: str | None) -> None:
    """Print a run's log (the master pod's on Kubernetes)."""
    for line in backend_of_run(run_id, store, namespace).logs(run_id, follow=follow, previous=previous):
        click.echo(line)


@click.command(name="ls")
@store_option
@click.option("--namespace", "-n", envvar="ZHLLAMA_NAMESPACE", help="Kubernetes namespace of cluster runs.")
@user_errors
def list_runs(store: str, namespace: str | None) -> None:
    """List the runs in the store, each in the state its backend confirms (the same as `ctl status`)."""
    from zhllama.backends import list_runs as reconciled_runs

    runs = reconciled_runs(store, namespace)
    if not runs:
        click.echo(f"no runs in {store}")
    for current in runs:
        click.echo(current.line())


@click.command()
@click.argument("run_id")
@store_option
@click.option("--namespace", "-n", envvar="ZHLLAMA_NAMESPACE", help="Kubernetes namespace of a cluster run.")
@user_errors
def cancel(run_id: str, store: str, namespace: str | None) -> None:
    """Stop a run."""
    click.echo(backend_of_run(run_id, store, namespace).cancel(run_id).line())


@click.command()
@click.argument("run_id")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@store_option
@user_errors
def pull(run_id: str, dest: Path, store: str) -> None:
    """Download a run's outputs into DEST, checking every file against its manifest."""
    from zhllama.run import pull_run
    from zhllama.store import open_store

    for path in pull_run(open_store(store), run_id, dest):
        click.echo(str(path))

COMMANDS = (status, watch, logs, list_runs, cancel, pull)
