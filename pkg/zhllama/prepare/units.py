"""One corpus file -> one unit of the token dataset (zhllama.data.shards), tokenized once and kept in the store.

A unit's key is a digest of everything its bytes depend on, so finding it complete means it is exactly what this
run would write: a worker skips it, a re-run after a kill or a corpus change redoes only what is missing.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from zhllama.data.corpus import iter_documents
from zhllama.data.encode import DocumentEncoder, SentencePieceEncoder, load_document_encoder
from zhllama.data.shards import FORMAT, UnitStats, write_unit
from zhllama.prepare.sources import CorpusFile
from zhllama.records import LineError
from zhllama.store import ArtifactStore

UNITS_PREFIX = "cache/tokens"


@dataclass(frozen=True)
class Tokenization:
    """What every unit of one dataset shares: how text becomes blocks."""

    tokenizer_dir: Path
    eos_id: int
    tokenizer: str
    """The tokenizer's fingerprint."""
    block_size: int
    shard_bytes: int
    skip_bad_records: bool

    def unit_key(self, file: CorpusFile) -> str:
        made_of = json.dumps([FORMAT, self.tokenizer, self.block_size, self.shard_bytes, self.skip_bad_records,
                              file.identity, file.size])
        return f"{UNITS_PREFIX}/{hashlib.sha256(made_of.encode()).hexdigest()[:32]}"


def documents(path: Path, name: str, stats: UnitStats, skip_bad: bool) -> Iterator[str]:
    """A file's documents; a malformed record fails the unit with its file:line, or is counted in `stats`."""

    def bad(error: LineError) -> None:
        if not skip_bad:
            raise LineError(error.where, error.problem, f"{error.fix}, or set skip_bad_records")
        stats.bad_records += 1
        stats.first_bad = stats.first_bad or f"{name}:{error.where.rsplit(':', 1)[-1]}: {error.problem}"

    return iter_documents(path, bad)


_encoders: dict[str, DocumentEncoder | SentencePieceEncoder] = {}
"""One encoder per tokenizer and process (a pool's worker loads it for its first file)."""


def load_encoder(tokenization: Tokenization) -> DocumentEncoder | SentencePieceEncoder:
    if tokenization.tokenizer not in _encoders:
        _encoders[tokenization.tokenizer] = load_document_encoder(tokenization.tokenizer_dir, tokenization.eos_id)
    return _encoders[tokenization.tokenizer]


def tokenize_file(path: Path, name: str, tokenization: Tokenization, out_dir: Path) -> UnitStats:
    """One local file into `out_dir` as a unit; pure (no store), so a process pool can run it."""
    stats = UnitStats()
    started, shown = time.monotonic(), [time.monotonic()]

    def progress(_: int, __: int) -> None:
        if time.monotonic() - shown[0] >= 10:
            shown[0] = time.monotonic()
            rate = stats.characters / max(1e-9, shown[0] - started)
            print(f"  {name}: {stats.documents} documents, {stats.tokens} tokens, {rate / 1e6:.2f}M chars/s",
                  flush=True)

    encoder = load_encoder(tokenization)
    write_unit(documents(path, name, stats, tokenization.skip_bad_records), encoder, tokenization.block_size,
               tokenization.shard_bytes, out_dir, stats, on_batch=progress)
    return stats


def _tokenize_task(args: tuple[Path, str, Tokenization, Path]) -> UnitStats:
    return tokenize_file(*args)


def prepare_units(store: ArtifactStore, files: list[CorpusFile], tokenization: Tokenization, *, workers: int = 1,
                  label: str = "") -> dict[str, int]:
    """Every unit of `files` complete in the store: the missing ones fetched, tokenized (`workers` processes)
    and published; the counts of kept and made units."""
    todo = [file for file in files if not store.is_complete(tokenization.unit_key(file))]
    kept = len(files) - len(todo)
    print(f"{label}{len(files)} files: {kept} already tokenized, {len(todo)} to tokenize", flush=True)
    if not todo:
        return {"kept": kept, "made": 0}
    with tempfile.TemporaryDirectory(prefix="zhllama-prepare-") as scratch:
        tasks = [(file.fetch(), file.name, tokenization, Path(scratch) / f"unit-{n}") for n, file in enumerate(todo)]
        if workers <= 1 or len(tasks) == 1:
            results: Iterator[UnitStats] = map(_tokenize_task, tasks)
            _publish_all(store, todo, tasks, results, tokenization, label)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process per core: no thread pools fighting them
            with multiprocessing.get_context("spawn").Pool(min(workers, len(tasks))) as pool:
                _publish_all(store, todo, tasks, pool.imap(_tokenize_task, tasks), tokenization, label)
    return {"kept": kept, "made": len(todo)}


def _publish_all(store: ArtifactStore, todo: list[CorpusFile], tasks: list[tuple[Path, str, Tokenization, Path]],
                 results: Iterator[UnitStats], tokenization: Tokenization, label: str) -> None:
    for file, task, stats in zip(todo, tasks, results, strict=True):
        store.publish_dir(task[3], tokenization.unit_key(file), progress=False,
                          extra={"unit": asdict(stats), "source_file": file.name})
        print(f"{label}tokenized {file.name}: {stats.documents} documents, {stats.tokens} tokens, "
              f"{stats.blocks} blocks in {len(stats.shards)} shard(s)", flush=True)

