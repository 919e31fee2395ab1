"""Pretraining text: which files a data URI holds, and the documents inside them."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from zhllama.records import (
    JSON_LINES_SUFFIXES,
    LineError,
    SkipBadLine,
    list_files,
    read_json_lines,
    read_lines,
    string_fields,
)

DATA_SUFFIXES = (".txt", ".jsonl", ".json")
"""Pretraining and SFT data alike: SFT takes JSON array files too."""


def list_data_files(paths: Sequence[Path]) -> list[Path]:
    """Every data file in `paths`, in the order given; directories are expanded recursively, sorted by name."""
    return list_files(paths, DATA_SUFFIXES, "data")


def iter_documents(path: Path, skip_bad: SkipBadLine | None = None) -> Iterator[str]:
    """The documents of one file: each non-empty line of a text file (stripped), the `text` of each JSONL record
    (as written: a record's own whitespace may be part of the document). A malformed record raises a LineError
    naming file:line, or goes to `skip_bad` when one is given."""
    if path.suffix not in JSON_LINES_SUFFIXES:
        for _, text in read_lines(path):
            yield text.strip()
        return
    for where, record in read_json_lines(path, skip_bad):
        try:
            (text,) = string_fields(record, where, "text")
        except LineError as error:
            if skip_bad is None:
                raise
            skip_bad(error)
            continue
        if text.strip():
            yield text
