"""`ctl pull`: a run's complete outputs, verified, into a local directory."""

from __future__ import annotations

from pathlib import Path

from zhllama.errors import UserError
from zhllama.run.layout import run_key
from zhllama.store import ArtifactStore, safe_local_path


def pull_run(store: ArtifactStore, run_id: str, dest: Path) -> list[Path]:
    """Download every complete output of a run into dest/<name>/, verified; never writes outside `dest`."""
    names = store.list_dirs(run_key(run_id, "outputs"))
    complete = [n for n in names if store.is_complete(run_key(run_id, "outputs", n))]
    if not complete:
        raise UserError(f"run {run_id!r} has no complete outputs in {store.root_uri}")
    return [store.fetch_dir(run_key(run_id, "outputs", n), safe_local_path(dest, n)) for n in complete]
