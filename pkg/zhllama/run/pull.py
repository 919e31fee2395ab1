"""`ctl pull`: a run's complete outputs, verified, into a local directory."""

from __future__ import annotations

from pathlib import Path

from zhllama.errors import UserError
from zhllama.run.layout import REPORT, run_key
from zhllama.store import ArtifactStore, safe_local_path


def pull_run(store: ArtifactStore, run_id: str, dest: Path) -> list[Path]:
    """Download every complete artifact of a run into dest/<name>/, verified; never writes outside `dest`.

    A stage run's artifacts are its outputs; a pipeline's is its report.
    """
    artifacts = {name: run_key(run_id, "outputs", name) for name in store.list_dirs(run_key(run_id, "outputs"))}
    artifacts[REPORT] = run_key(run_id, REPORT)
    complete = {name: key for name, key in artifacts.items() if store.is_complete(key)}
    if not complete:
        raise UserError(f"run {run_id!r} has no complete outputs in {store.root_uri}; `ctl status {run_id}` says why")
    return [store.fetch_dir(key, safe_local_path(dest, name)) for name, key in complete.items()]
