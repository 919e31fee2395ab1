"""manifest.json: what makes a directory of files an artifact.

It is written last. It lists every file with its size and sha256, the spec that made it, the input URIs and
the code version, so a reader can tell a complete artifact from a crashed upload and check every byte. Each file
also has the sha256 of every CHUNK_BYTES piece ("chunks"), so a reuse check can hash a random piece or two with
ranged reads instead of downloading gigabytes; manifests written before that have no "chunks".
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
_BLOCK = 1 << 20
CHUNK_BYTES = 64 * _BLOCK
"""The piece size of the per-chunk hashes: big enough that a manifest stays small (a 14 GB model lists ~220),
small enough that sampling two pieces of every file is cheap. A multiple of _BLOCK."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def hash_file(path: Path, chunk_bytes: int) -> tuple[str, list[str]]:
    """The file's sha256 and the sha256 of each `chunk_bytes` piece, from one read of the file."""
    whole, piece, filled, pieces = hashlib.sha256(), hashlib.sha256(), 0, []
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(min(_BLOCK, chunk_bytes)), b""):
            whole.update(block)
            while block:
                taken, block = block[: chunk_bytes - filled], block[chunk_bytes - filled :]
                piece.update(taken)
                filled += len(taken)
                if filled == chunk_bytes:
                    pieces.append(piece.hexdigest())
                    piece, filled = hashlib.sha256(), 0
    if filled or not pieces:  # the short last piece; an empty file is one empty piece
        pieces.append(piece.hexdigest())
    return whole.hexdigest(), pieces


def file_entry(path: Path) -> dict[str, Any]:
    """A file's manifest entry: size, sha256 and the per-chunk hashes."""
    chunk_bytes = CHUNK_BYTES  # read at call time: tests shrink it to get many chunks from small files
    sha256, pieces = hash_file(path, chunk_bytes)
    return {"size": path.stat().st_size, "sha256": sha256, "chunks": {"size": chunk_bytes, "sha256": pieces}}


def chunk_ranges(meta: dict[str, Any]) -> list[tuple[int, int, str]] | None:
    """(offset, length, sha256) of each recorded chunk of a file's manifest entry; None when it has none."""
    chunks = meta.get("chunks")
    if not chunks or not chunks.get("sha256") or not chunks.get("size"):
        return None
    step, size = int(chunks["size"]), int(meta["size"])
    return [(i * step, max(0, min(step, size - i * step)), sha) for i, sha in enumerate(chunks["sha256"])]


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
    files = {rel: file_entry(local_dir / rel) for rel in list_files(local_dir)}
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
