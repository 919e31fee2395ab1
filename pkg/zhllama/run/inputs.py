"""Inputs by URI: where a URI points, its local copy, its identity, and whether it changed since a run used it.

URIs a spec may use:
  file:///abs/path  file://./rel/path   a local file or directory
  s3://bucket/key                       an object or prefix in S3 (or MinIO, Ceph)
  store://key                           a key in the run's own store
  run://<run-id>/outputs/<name>         another run's output artifact in the run's store
  embedded://<name>                     a default shipped with the package (materialized into the store once)

This module is the one place that decides "did the inputs change?": the job (reuse finished outputs or not) and
the pipeline driver (re-run a finished step or not) both ask `changed_inputs`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from urllib.parse import urlparse

from zhllama.errors import ArtifactError, UserError
from zhllama.run.layout import run_key
from zhllama.store import MANIFEST, ArtifactStore, DirStore, join_key, open_store


def locate(uri: str, run_store: ArtifactStore) -> tuple[ArtifactStore, str]:
    """The store and key a URI names (embedded:// is materialized into `run_store` first)."""
    if uri.startswith("store://"):
        return run_store, uri.removeprefix("store://").strip("/")
    if uri.startswith("run://"):
        return run_store, join_key("runs", uri.removeprefix("run://"))
    if uri.startswith("embedded://"):
        from zhllama.embedded import materialize  # the embedded defaults are heavy; only when asked for

        return run_store, materialize(uri.removeprefix("embedded://"), run_store)
    if uri.startswith("s3://"):
        parsed = urlparse(uri)
        return open_store(f"s3://{parsed.netloc}"), parsed.path.strip("/")
    if uri.startswith("file://"):
        path = Path(uri.removeprefix("file://")).resolve()
        return DirStore(path.parent), path.name
    raise UserError(f"{uri!r} is not a URI; write s3://, file://, store://, run:// or embedded://")


def fetch_input(uri: str, run_store: ArtifactStore) -> tuple[Path, str | None]:
    """Resolve an input URI to a local path, and the sha256 of its artifact's manifest (None for plain files).

    Artifacts are verified against their manifest; plain files are used as they are. Remote inputs land in the
    node cache, once per node whatever the number of processes asking.
    """
    store, key = locate(uri, run_store)
    artifact, inside = enclosing_artifact(store, key)
    if artifact is not None:
        digest = manifest_digest(store, artifact)
        root = store.fetch_dir(artifact)
        return (root / inside if inside else root), digest
    if uri.startswith("run://") or "/outputs/" in f"/{key}/":
        raise ArtifactError(f"{uri} is incomplete or missing: no manifest.json; run the stage that writes it first")
    if isinstance(store, DirStore):
        path = store.path(key)
        if not path.exists():
            raise UserError(f"input {uri} does not exist; check the path")
        return path, None
    return store.fetch_objects(key), None


def manifest_digest(store: ArtifactStore, artifact: str) -> str:
    """An artifact's identity: the sha256 of its manifest (which holds every file's sha256)."""
    return hashlib.sha256(store.read_bytes(join_key(artifact, MANIFEST))).hexdigest()


def input_fingerprint(uri: str, run_store: ArtifactStore) -> str:
    """What an input holds, known without downloading it: its artifact's manifest digest and the path inside,
    or its plain objects' sizes and versions (ETag, or mtime on disk). Cache keys are built from these, so no
    process re-hashes a 100 GB corpus to find out that it has not changed."""
    store, key = locate(uri, run_store)
    artifact, inside = enclosing_artifact(store, key)
    if artifact is not None:
        return f"{manifest_digest(store, artifact)}/{inside}"
    versions = store.object_versions(key)
    if not versions:
        raise UserError(f"input {uri} does not exist; check the path, or the bucket and key")
    return hashlib.sha256(json.dumps(sorted(versions.items())).encode()).hexdigest()


def changed_inputs(store: ArtifactStore, run_id: str, outputs: tuple[str, ...]) -> list[str]:
    """Inputs whose artifact changed since the run's complete outputs were made from them (an upstream re-run).

    Empty when the outputs are not all complete: there is nothing finished to be stale.
    """
    keys = [run_key(run_id, "outputs", name) for name in outputs]
    if not keys or not all(store.is_complete(key) for key in keys):
        return []
    changed: list[str] = []
    for key in keys:
        for uri, digest in store.read_manifest(key).get("input_manifests", {}).items():
            if uri not in changed and _current_digest(uri, store) != digest:
                changed.append(uri)
    return changed


def _current_digest(uri: str, run_store: ArtifactStore) -> str | None:
    try:
        store, key = locate(uri, run_store)
    except UserError:
        return None
    artifact, _ = enclosing_artifact(store, key)
    return None if artifact is None else manifest_digest(store, artifact)


def enclosing_artifact(store: ArtifactStore, key: str) -> tuple[str | None, str]:
    """The artifact that holds `key` (itself or an ancestor with a manifest) and the path inside it."""
    parts = key.split("/") if key else []
    for end in range(len(parts), 0, -1):
        candidate = "/".join(parts[:end])
        if store.is_complete(candidate):
            return candidate, "/".join(parts[end:])
    return None, ""
