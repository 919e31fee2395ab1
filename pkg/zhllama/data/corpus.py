"""Pretraining text: which files a data URI holds, and the documents inside them."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

from zhllama.errors import UserError

TEXT_SUFFIXES = (".txt", ".jsonl", ".json")
# Files an artifact directory carries that are not data.
NOT_DATA = {"manifest.json", "report.json", "README.md"}


def list_data_files(paths: Sequence[Path]) -> list[Path]:
    """Every data file in `paths`, in the order given; directories are expanded recursively, sorted by name."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*")
                if p.is_file() and p.suffix in TEXT_SUFFIXES and p.name not in NOT_DATA
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not found:
                raise UserError(f"data: {path} holds no .txt, .jsonl or .json file; point `data` at the corpus files")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"data: {path} does not exist; check the `data` URIs")
    return files


def iter_documents(path: Path) -> Iterator[str]:
    """The documents of one file: each non-empty line of a .txt, the `text` of each JSONL record."""
    with open(path, encoding="utf-8") as handle:
        if path.suffix == ".txt":
            for line in handle:
                text = line.strip()
                if text:
                    yield text
            return
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{path}:{number}: not valid JSON ({err.msg}); fix or remove the line") from None
            document = record.get("text") if isinstance(record, dict) else None
            if not isinstance(document, str):
                raise UserError(f"{path}:{number}: a pretraining record needs a string field `text`")
            if document.strip():
                yield document
