"""The node cache: verified local copies of store objects, shared by every process on one machine (a pod).

Eight training processes on a node need the same base model, tokenizer and checkpoint shares. The first process
to need one takes a node-local file lock and downloads it into a staging directory that is renamed into place;
the others wait on the lock and then reuse the copy. A killed download leaves only staging debris, never a
directory that looks complete. The cache lives under $ZHLLAMA_CACHE (default ~/.cache/zhllama), on the pod's
scratch disk in a cluster.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("ZHLLAMA_CACHE", Path.home() / ".cache" / "zhllama"))


def local_cache_dir(kind: str = "artifacts") -> Path:
    """The node cache's directory for `kind` (artifacts by manifest digest, objects by version)."""
    root = cache_root() / kind
    root.mkdir(parents=True, exist_ok=True)
    return root


@contextmanager
def node_lock(name: str) -> Iterator[None]:
    """Hold the node-wide lock called `name` (a flock: released by the kernel if the holder dies)."""
    locks = local_cache_dir("locks")
    path = locks / f"{hashlib.sha256(name.encode()).hexdigest()[:32]}.lock"
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
