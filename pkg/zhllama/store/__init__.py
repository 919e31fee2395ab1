"""Artifact stores: a directory (file://) or S3 (s3://), the same interface (store.base.ArtifactStore).

May import: zhllama.errors (and boto3, in store.s3 and its store.s3_faults only). Must not import anything else
of zhllama: URIs of runs and embedded defaults are resolved above it, in zhllama.run.inputs.
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


__all__ = [
    "MANIFEST",
    "ArtifactStore",
    "DirStore",
    "code_version",
    "join_key",
    "local_cache_dir",
    "node_lock",
    "open_store",
    "safe_local_path",
    "sha256_file",
]
