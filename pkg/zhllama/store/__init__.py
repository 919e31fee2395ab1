"""Artifact stores and URI resolution.

URIs a spec may use:
  file:///abs/path  file://./rel/path   a local file or directory
  s3://bucket/key                       an object or prefix in S3 (or MinIO, Ceph)
  store://key                           a key in the run's own store
  run://<run-id>/outputs/<name>         another run's output artifact in the run's store
  embedded://<name>                     a default shipped with the packages (materialized into the store once)
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from zhllama.errors import UserError
from zhllama.store.base import ArtifactStore, join_key, safe_local_path
from zhllama.store.directory import DirStore
from zhllama.store.manifest import MANIFEST, code_version, sha256_file
from zhllama.store.node_cache import local_cache_dir, node_lock


def open_store(root_uri: str) -> ArtifactStore:
    """The store at a root URI: file:///path (or file://./relative) or s3://bucket[/prefix]."""
    if root_uri.startswith("file://"):
        return DirStore(Path(root_uri.removeprefix("file://") or "."))
    if root_uri.startswith("s3://"):
        from zhllama.store.s3 import S3Store  # boto3 is imported only when S3 is used

        parsed = urlparse(root_uri)
        if not parsed.netloc:
            raise UserError(f"store {root_uri!r}: missing bucket; write s3://bucket[/prefix]")
        return S3Store(parsed.netloc, parsed.path)
    raise UserError(f"store {root_uri!r}: use file:///path or s3://bucket[/prefix]")


def locate(uri: str, run_store: ArtifactStore) -> tuple[ArtifactStore, str]:
    """The store and key a URI names (embedded:// is materialized into `run_store` first)."""
    if uri.startswith("store://"):
        return run_store, uri.removeprefix("store://").strip("/")
    if uri.startswith("run://"):
        return run_store, join_key("runs", uri.removeprefix("run://"))
    if uri.startswith("embedded://"):
        from zhllama.embedded import materialize

        return run_store, materialize(uri.removeprefix("embedded://"), run_store)
    if uri.startswith("s3://"):
        parsed = urlparse(uri)
        return open_store(f"s3://{parsed.netloc}"), parsed.path.strip("/")
    if uri.startswith("file://"):
        path = Path(uri.removeprefix("file://")).resolve()
        return DirStore(path.parent), path.name
    raise UserError(f"{uri!r} is not a URI; write s3://, file://, store://, run:// or embedded://")


__all__ = [
    "MANIFEST",
    "ArtifactStore",
    "DirStore",
    "code_version",
    "join_key",
    "local_cache_dir",
    "locate",
    "node_lock",
    "open_store",
    "safe_local_path",
    "sha256_file",
]
