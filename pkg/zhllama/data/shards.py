"""The token dataset: `prepare` writes it, pretraining streams it. Its one writer and one reader are here.

A *unit* is one corpus file tokenized: its documents, each followed by eos, cut into rows of block_size tokens
and stored as shard files of whole rows (at most shard_bytes each), with unit.json (the counts). A file's last
partial row is dropped (counted), so no row joins two files. Each unit is an artifact of its own in the store,
under a key of what made it (tokenizer, file content, block size, shard size, bad-record policy): a changed
file is tokenized again, an unchanged one never, whichever worker or run meets it.

The *dataset* (dataset.json) lists the sources in spec order with their weights and their shards, each with its
manifest entry (size, sha256), so a reader fetches and verifies one shard without reading any unit's manifest.
It is published after every unit it lists, so a complete dataset means complete shards.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import numpy as np

from zhllama.data.corpus import iter_documents
from zhllama.errors import UserError

UNIT_FILE = "unit.json"
DATASET_FILE = "dataset.json"
FORMAT = "zhllama.tokens/v1"
DOCS_PER_BATCH = 256
"""Documents encoded per call: big enough to amortize the call, small enough to show progress often."""


class Encoder(Protocol):
    dtype: str

    def encode(self, texts: list[str]) -> np.ndarray:
        """Every text's ids, each followed by eos, as one flat array of `dtype`."""
        ...


@dataclass
class UnitStats:
    """What one file gave: the record of a unit (unit.json) and the counts a dataset sums."""

    documents: int = 0
    characters: int = 0
    tokens: int = 0
    blocks: int = 0
    tokens_dropped: int = 0
    """The file's last partial row."""
    bad_records: int = 0
    first_bad: str = ""
    shards: list[dict[str, Any]] = field(default_factory=list)
    """[{name, blocks}] in order."""


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.bin"


class _ShardWriter:
    """Whole rows into shard files of at most rows_per_shard rows each."""

    def __init__(self, out_dir: Path, block_size: int, rows_per_shard: int, stats: UnitStats) -> None:
        self.out_dir, self.block_size, self.rows_per_shard, self.stats = out_dir, block_size, rows_per_shard, stats
        self.handle: BinaryIO | None = None
        self.rows_in_shard = 0

    def write_rows(self, rows: np.ndarray) -> None:
        done = 0
        while done < len(rows):
            if self.handle is None:
                self.stats.shards.append({"name": shard_name(len(self.stats.shards)), "blocks": 0})
                self.handle = open(self.out_dir / self.stats.shards[-1]["name"], "wb")  # noqa: SIM115
                self.rows_in_shard = 0
            take = min(len(rows) - done, self.rows_per_shard - self.rows_in_shard)
            self.handle.write(rows[done : done + take].tobytes())
            self.rows_in_shard += take
            self.stats.shards[-1]["blocks"] += take
            self.stats.blocks += take
            done += take
            if self.rows_in_shard == self.rows_per_shard:
                self.close()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


def write_unit(
    documents: Iterable[str],
    encoder: Encoder,
    block_size: int,
    shard_bytes: int,
    out_dir: Path,
    stats: UnitStats,
    *,
    on_batch: Callable[[int, int], None] | None = None,
) -> UnitStats:
    """Tokenize `documents` into `out_dir` (shards + unit.json); `stats` may already hold the reader's counts
    (bad records). `on_batch(documents, characters)` is told after every batch (progress)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    itemsize = np.dtype(encoder.dtype).itemsize
    writer = _ShardWriter(out_dir, block_size, max(1, shard_bytes // (block_size * itemsize)), stats)
    carry = np.empty(0, dtype=encoder.dtype)
    texts = iter(documents)
    try:
        while batch := list(islice(texts, DOCS_PER_BATCH)):
            ids = encoder.encode(batch)
            characters = sum(map(len, batch))
            stats.documents += len(batch)
            stats.characters += characters
            stats.tokens += len(ids)
            carry = np.concatenate([carry, ids]) if len(carry) else ids
            full = len(carry) // block_size
            writer.write_rows(carry[: full * block_size].reshape(full, block_size))
            carry = carry[full * block_size :]
            if on_batch is not None:
                on_batch(len(batch), characters)
    finally:
        writer.close()
    stats.tokens_dropped = len(carry)
    (out_dir / UNIT_FILE).write_text(json.dumps(asdict(stats), indent=2, ensure_ascii=False) + "\n")
    return stats


def unit_stats_of(manifest: dict[str, Any]) -> UnitStats:
    """A unit's counts from its manifest (its publisher copies unit.json into the manifest's `unit`)."""
    return UnitStats(**manifest["unit"])


@dataclass(frozen=True)
class ShardRef:
    unit: str
    """The unit's store key."""
    name: str
    blocks: int
    meta: dict[str, Any]
    """The shard's manifest entry (size, sha256, chunks)."""


@dataclass(frozen=True)
class SourceIndex:
    uri: str
    weight: float
    shards: tuple[ShardRef, ...]
    totals: dict[str, Any]
    """documents, characters, tokens, blocks, tokens_dropped, bad_records, first_bad, files."""

    @property
    def blocks(self) -> int:
        return sum(shard.blocks for shard in self.shards)


@dataclass(frozen=True)
class DatasetIndex:
    block_size: int
    dtype: str
    eos_id: int
    tokenizer: str
    """The tokenizer's fingerprint: a dataset is valid with exactly that tokenizer."""
    sources: tuple[SourceIndex, ...]

    def as_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "block_size": self.block_size, "dtype": self.dtype, "eos_id": self.eos_id,
            "tokenizer": self.tokenizer,
            "sources": [{"uri": s.uri, "weight": s.weight, **s.totals,
                         "shards": [asdict(shard) for shard in s.shards]} for s in self.sources],
        }

    def report(self) -> dict[str, Any]:
        """The counts without the shard list (what a run's record and the pipeline report show)."""
        total = sum(s.weight for s in self.sources)
        return {"block_size": self.block_size, "blocks": sum(s.blocks for s in self.sources),
                "sources": [{"uri": s.uri, "weight": s.weight, "share": s.weight / total, **s.totals}
                            for s in self.sources]}


def write_dataset_index(index: DatasetIndex, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / DATASET_FILE).write_text(json.dumps(index.as_json(), indent=2, ensure_ascii=False) + "\n")


def read_dataset_index(directory: Path) -> DatasetIndex:
    path = directory / DATASET_FILE
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("format") != FORMAT:
        raise UserError(f"{path}: not a zhllama token dataset ({data.get('format')!r}); give a prepare output")
    sources = tuple(
        SourceIndex(s["uri"], float(s["weight"]), tuple(ShardRef(**shard) for shard in s["shards"]),
                    {k: v for k, v in s.items() if k not in ("uri", "weight", "shards")})
        for s in data["sources"]
    )
    return DatasetIndex(int(data["block_size"]), data["dtype"], int(data["eos_id"]), data["tokenizer"], sources)


def blocks_of_files(files: Sequence[Path], encoder: Encoder, block_size: int, out_dir: Path) -> np.ndarray:
    """`files` tokenized as one unit in `out_dir`, and its blocks: benchmarks and tests that train on a small
    corpus in memory, tokenized exactly as `prepare` does it."""
    write_unit((doc for file in files for doc in iter_documents(file)), encoder, block_size, 1 << 40, out_dir,
               UnitStats())
    return read_unit_blocks(out_dir, encoder.dtype, block_size)


def read_unit_blocks(unit_dir: Path, dtype: str, block_size: int) -> np.ndarray:
    """Every block of a local unit directory, in order (benchmarks and tests hold small corpora in memory)."""
    stats = UnitStats(**json.loads((unit_dir / UNIT_FILE).read_text(encoding="utf-8")))
    shards = [open_shard(unit_dir / shard["name"], dtype, block_size) for shard in stats.shards]
    return np.concatenate(shards) if shards else np.empty((0, block_size), dtype=dtype)


def open_shard(path: Path, dtype: str, block_size: int) -> np.ndarray:
    """A local shard file as a read-only memory map of shape (blocks, block_size)."""
    return np.memmap(path, dtype=np.dtype(dtype), mode="r").reshape(-1, block_size)
