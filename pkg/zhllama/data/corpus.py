"""Pretraining text: which files a data URI holds, and the documents inside them."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from zhllama.records import JSON_LINES_SUFFIXES, list_files, read_texts

DATA_SUFFIXES = (".txt", ".jsonl", ".json")
"""Pretraining and SFT data alike: SFT takes JSON array files too."""


def list_data_files(paths: Sequence[Path]) -> list[Path]:
    """Every data file in `paths`, in the order given; directories are expanded recursively, sorted by name."""
    return list_files(paths, DATA_SUFFIXES, "data")


def iter_documents(path: Path) -> Iterator[str]:
    """The documents of one file: each non-empty line of a text file (stripped), the `text` of each JSONL record
    (as written: a record's own whitespace may be part of the document)."""
    for _, text in read_texts(path):
        if path.suffix not in JSON_LINES_SUFFIXES:
            yield text.strip()
        elif text.strip():
            yield text
