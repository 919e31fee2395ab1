"""`ctl` commands about existing runs: status, watch, logs, ls, cancel, pull. Each asks the run's own backend."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from zhllama.backends import backend_of_run
from zhllama.cli.flags import store_option, user_errors

F = TypeVar("F", bound=Callable[..., Any])
namespace_option = click.option(
    "--namespace", "-n", envvar="ZHLLAMA_NAMESPACE", help="Kubernetes namespace of cluster runs (default: the run's)."
)


def of_a_run(func: F) -> F:
    """RUN_ID, and where to find it: the store, and the namespace of a cluster run."""
    return click.argument("run_id")(store_option(namespace_option(user_errors(func))))  # type: ignore[no-any-return]


@click.command()
@of_a_run
def status(run_id: str, store: str, namespace: str | None) -> None:
    """Show the state of a run (and why, when it is not running)."""
    result = backend_of_run(run_id, store, namespace).status(run_id)
    click.echo(result.line())
    for key, value in result.details.items():
        click.echo(f"  {key}: {value}")


@click.command()
@of_a_run
def watch(run_id: str, store: str, namespace: str | None) -> None:
    """Follow a run's state until it finishes."""
    for current in backend_of_run(run_id, store, namespace).watch(run_id):
        click.echo(current.line())


@click.command()
@click.option("-f", "--follow", is_flag=True, help="Keep printing until the run finishes.")
@click.option("--previous", is_flag=True,
              help="The attempt before the current one (Kubernetes: the previous container, after a restart).")
@of_a_run
def logs(run_id: str, follow: bool, previous: bool, store: str, namespace: str | None) -> None:
    """Print a run's log: its current attempt's (the master pod's on Kubernetes)."""
    for line in backend_of_run(run_id, store, namespace).logs(run_id, follow=follow, previous=previous):
        click.echo(line)


@click.command(name="ls")
@store_option
@namespace_option
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
@of_a_run
def cancel(run_id: str, store: str, namespace: str | None) -> None:
    """Stop a run; a finished one is left as it is."""
    backend = backend_of_run(run_id, store, namespace)
    before = backend.status(run_id)
    if before.finished:
        click.echo(f"{before.line()}\nrun {run_id} already finished ({before.state}); nothing to cancel")
        return
    click.echo(backend.cancel(run_id).line())


@click.command()
@click.argument("run_id")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@store_option
@user_errors
def pull(run_id: str, dest: Path, store: str) -> None:
    """Download a run's outputs (a pipeline's report) into DEST, checking every file against its manifest."""
    from zhllama.run import pull_run
    from zhllama.store import open_store

    for path in pull_run(open_store(store), run_id, dest):
        click.echo(str(path))


COMMANDS = (status, watch, logs, list_runs, cancel, pull)
