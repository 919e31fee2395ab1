"""manifest.json: what makes a directory of files an artifact.

It is written last. It lists every file with its size and sha256, the spec that made it, the input URIs and
the code version, so a reader can tell a complete artifact from a crashed upload and check every byte.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from zhllama import __version__

MANIFEST = "manifest.json"
FORMAT = "zhllama.artifact/v1"
_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def list_files(local_dir: Path) -> list[str]:
    """Relative POSIX paths of every regular file under `local_dir`, sorted, the manifest excluded."""
    return sorted(
        path.relative_to(local_dir).as_posix()
        for path in local_dir.rglob("*")
        if path.is_file() and path.relative_to(local_dir).as_posix() != MANIFEST
    )


@functools.cache
def code_version() -> str:
    """The package version, plus the git commit when running from a checkout (images set ZHLLAMA_GIT_SHA)."""
    sha = os.environ.get("ZHLLAMA_GIT_SHA")
    if not sha:
        try:
            sha = subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                cwd=Path(__file__).resolve().parent,
                capture_output=True,
                text=True,
                timeout=5,
                check=True,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            sha = ""
    return f"{__version__}+{sha}" if sha else __version__


def build_manifest(
    local_dir: Path,
    *,
    spec: dict[str, Any] | None = None,
    inputs: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    files = {
        rel: {"size": (local_dir / rel).stat().st_size, "sha256": sha256_file(local_dir / rel)}
        for rel in list_files(local_dir)
    }
    return {
        "format": FORMAT,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "code_version": code_version(),
        "spec": spec or {},
        "inputs": inputs or {},
        **(extra or {}),
        "files": files,
    }


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    return (json.dumps(manifest, indent=2, ensure_ascii=False, sort_keys=False) + "\n").encode()
