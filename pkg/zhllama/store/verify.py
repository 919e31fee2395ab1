"""Checking an artifact where it lies, against its manifest, cheaply or byte for byte.

The cheap check is what a reuse decision can afford on every run, even for a 14 GB model in S3: every file's size
from one listing (no download), then one or two randomly chosen chunks of every file hashed with ranged reads
against the manifest's per-chunk sha256. A file of one chunk is thereby hashed whole, a truncated or missing file
is caught before anything is read, and a flipped byte in a big file is caught with the probability of its chunk
being drawn, every check drawing anew. Files from manifests without chunk hashes are hashed whole.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from zhllama.errors import ArtifactError
from zhllama.store.manifest import chunk_ranges

SAMPLED_CHUNKS = 2

RangeHash = Callable[[str, int, int], str]
"""(relative path, offset, length) -> the sha256 of those bytes of the artifact's file."""


def check_sizes(files: dict[str, dict[str, Any]], stored: dict[str, int], uri: Callable[[str], str]) -> None:
    for rel, meta in files.items():
        if rel not in stored:
            raise ArtifactError(f"{uri(rel)} is listed in the manifest but missing; re-run the stage that wrote it")
        if stored[rel] != meta["size"]:
            raise ArtifactError(
                f"{uri(rel)} is corrupt: {stored[rel]} bytes, the manifest says {meta['size']}; re-run its stage"
            )


def check_hashes(files: dict[str, dict[str, Any]], range_sha256: RangeHash, uri: Callable[[str], str],
                 *, full: bool) -> None:
    for rel, meta in files.items():
        ranges = None if full else chunk_ranges(meta)
        if ranges is None:
            if range_sha256(rel, 0, int(meta["size"])) != meta["sha256"]:
                raise ArtifactError(f"{uri(rel)} is corrupt: its sha256 differs from the manifest; re-run its stage")
            continue
        for offset, length, expected in random.sample(ranges, min(SAMPLED_CHUNKS, len(ranges))):
            if range_sha256(rel, offset, length) != expected:
                raise ArtifactError(
                    f"{uri(rel)} is corrupt: bytes {offset}-{offset + length - 1} differ from the manifest's "
                    "chunk hash; re-run its stage"
                )
