"""The files of each data source, known from a listing (no download), and how each is fetched alone.

A worker downloads only the files of its share: a file inside an artifact (embedded://, run://) is fetched by its
manifest entry and verified; a plain object or local file as it is, cached per node by its version.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zhllama.errors import UserError
from zhllama.records import NOT_INPUT, TEXT_SUFFIXES
from zhllama.run.inputs import enclosing_artifact, locate
from zhllama.spec import DataSource
from zhllama.store import ArtifactStore, DirStore


@dataclass(frozen=True)
class CorpusFile:
    source: int
    """The source's position in the spec's `data`."""
    name: str
    """The file's path inside its source (messages, the dataset's report)."""
    size: int
    identity: str
    """What the file holds, without reading it: its sha256 (artifact member) or its version (size:etag)."""
    store: ArtifactStore
    key: str
    artifact: str | None
    meta: dict[str, Any] | None

    def fetch(self) -> Path:
        """The file on this machine."""
        if self.artifact is not None and self.meta is not None:
            return self.store.fetch_file(self.artifact, self.key, self.meta)
        if isinstance(self.store, DirStore):
            return self.store.path(self.key)
        return self.store.fetch_objects(self.key)


def _wanted(rel: str) -> bool:
    parts = rel.split("/")
    return rel.endswith(TEXT_SUFFIXES) and parts[-1] not in NOT_INPUT and not any(p.startswith(".") for p in parts)


def source_files(number: int, source: DataSource, run_store: ArtifactStore) -> list[CorpusFile]:
    """The .txt/.jsonl files of one source, sorted by path; an empty source is an error naming the entry."""
    store, key = locate(source.uri, run_store)
    artifact, inside = enclosing_artifact(store, key)
    files: list[CorpusFile] = []
    if artifact is not None:
        for rel, meta in sorted(store.read_manifest(artifact).get("files", {}).items()):
            if (rel == inside or rel.startswith(f"{inside}/") or not inside) and _wanted(rel):
                name = rel[len(inside):].lstrip("/") or Path(rel).name
                files.append(CorpusFile(number, name, meta["size"], meta["sha256"], store, rel, artifact, meta))
    else:
        for object_key, version in sorted(store.object_versions(key).items()):
            name = object_key[len(key):].lstrip("/") or Path(object_key).name
            if _wanted(name):
                size = int(version.split(":", 1)[0])
                files.append(CorpusFile(number, name, size, version, store, object_key, None, None))
    if not files:
        raise UserError(f"data[{number}]: {source.uri} holds no .txt or .jsonl file (an empty source); point it at "
                        "text, or remove the entry")
    return files


def corpus_files(sources: list[DataSource], run_store: ArtifactStore) -> list[CorpusFile]:
    return [file for number, source in enumerate(sources) for file in source_files(number, source, run_store)]


def deal(files: list[CorpusFile], workers: int) -> list[list[CorpusFile]]:
    """Each worker's share: largest files first, each to the worker with the least text so far (ties: the
    lowest index). Every worker computes the same deal from the same listing."""
    shares: list[list[CorpusFile]] = [[] for _ in range(workers)]
    loads = [0] * workers
    for file in sorted(files, key=lambda f: (-f.size, f.source, f.name)):
        worker = loads.index(min(loads))
        shares[worker].append(file)
        loads[worker] += file.size
    return shares
