"""The one reader of input text: which files a path holds, their lines and their JSON records, each with its file:line.

Every stage reads user files through here (corpora, held-out text, SFT data, prompts, tasks), so a bad line gets
the same one-line error everywhere: `data.jsonl:17: not valid JSON (Expecting ',' delimiter); each line must be
one JSON object`. Files are read as bytes and decoded line by line, so a file that is not UTF-8 is reported at its
line and byte offset instead of as a traceback from deep inside a stage.

It lives at the top of the package, not in zhllama.data, because the tokenizer stage uses it and must not
import torch (zhllama.data's batches do). Compressed files are not read: no caller has ever taken .gz input.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from zhllama.errors import UserError

TEXT_SUFFIXES = (".txt", ".jsonl")
"""What a directory of text input holds: one text per line, or JSONL records (corpora, held-out text, prompts)."""
JSON_LINES_SUFFIXES = (".jsonl", ".json")
"""Files read as one JSON value per line; every other file is read as text lines."""
NOT_INPUT = {"manifest.json", "report.json"}
"""Files an artifact directory carries beside its data (the store's manifest, a stage's report)."""


class LineError(UserError):
    """One line of an input file is wrong; the message is `file:line: what is wrong; how to fix it`."""

    def __init__(self, where: str, problem: str, fix: str) -> None:
        self.where, self.problem, self.fix = where, problem, fix
        super().__init__(f"{where}: {problem}; {fix}")

    def __reduce__(self) -> tuple[type[LineError], tuple[str, str, str]]:
        # picklable with its three parts, so it crosses a process pool as itself
        return LineError, (self.where, self.problem, self.fix)


SkipBadLine = Callable[[LineError], None]
"""Told about each bad line instead of raising it (SFT's skip_bad_records); the line is then skipped."""


def list_files(paths: Iterable[Path], suffixes: Sequence[str], what: str) -> list[Path]:
    """The files behind `paths`, in the order given: a file as is, a directory as its files ending in one of
    `suffixes`, recursively and sorted, skipping hidden paths and artifact bookkeeping (NOT_INPUT).

    `what` names the input in errors (`corpus`, `data`, `held-out text`).
    """
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(
                file for file in path.rglob("*")
                if file.is_file() and file.suffix in suffixes and file.name not in NOT_INPUT
                and not any(part.startswith(".") for part in file.relative_to(path).parts)
            )
            if not found:
                raise UserError(f"{what}: {path} holds no {_either(suffixes)} file; add one or point {what} at "
                                "the files themselves")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"{what}: {path} does not exist; check the path")
    return files


def read_lines(file: Path) -> Iterator[tuple[str, str]]:
    """(file:line, text) of each non-blank line, the line ending removed and nothing else."""
    name, offset = str(file), 0  # the name once: corpora have millions of lines
    with file.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            text = _decode(raw, file, number, offset)
            offset += len(raw)
            if text.strip():
                yield f"{name}:{number}", text.rstrip("\r\n")


def read_json_lines(file: Path, skip_bad: SkipBadLine | None = None) -> Iterator[tuple[str, Any]]:
    """(file:line, value) of each non-blank line of a JSONL file; a line that is not JSON raises a LineError,
    or goes to `skip_bad` when one is given."""
    for where, text in read_lines(file):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            _bad_line(LineError(where, f"not valid JSON ({json_problem(error)})", "each line must be one JSON object"),
                      skip_bad)
            continue
        yield where, value


def read_json_records(file: Path, skip_bad: SkipBadLine | None = None) -> Iterator[tuple[str, Any]]:
    """(file:line, record) of a JSONL file, or of each element of a .json file holding one array.

    An array broken part-way cannot be read past the break: it goes to `skip_bad` as one bad line and the rest
    of the file is not read.
    """
    if file.suffix != ".json":
        yield from read_json_lines(file, skip_bad)
        return
    text = _decode(file.read_bytes(), file, 1, 0)
    if not text.lstrip().startswith("["):
        yield from read_json_lines(file, skip_bad)
        return
    decoder = json.JSONDecoder()
    position = text.index("[") + 1
    while True:
        while position < len(text) and text[position] in " \t\r\n,":
            position += 1
        if position >= len(text) or text[position] == "]":
            return
        line = text.count("\n", 0, position) + 1
        try:
            record, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as error:
            _bad_line(LineError(f"{file}:{error.lineno}", f"not valid JSON ({json_problem(error)})",
                                "the file must be one JSON array of objects"), skip_bad)
            return
        yield f"{file}:{line}", record


def string_fields(record: Any, where: str, *names: str) -> tuple[str, ...]:
    """The values of the string fields `names` of a JSON object; a LineError when one is missing or not a string."""
    if isinstance(record, dict) and all(isinstance(record.get(name), str) for name in names):
        return tuple(record[name] for name in names)
    fields = ", ".join(f"`{name}`" for name in names)
    example = ", ".join(f'"{name}": "..."' for name in names)
    needs = f"a string field {fields}" if len(names) == 1 else f"string fields {fields}"
    raise LineError(where, f"each JSONL line needs {needs}", f"write lines like {{{example}}}")


def read_texts(file: Path, field: str = "text") -> Iterator[tuple[str, str]]:
    """(file:line, text) of a text file's lines, or of the string `field` of a JSONL file's records."""
    if file.suffix not in JSON_LINES_SUFFIXES:
        yield from read_lines(file)
        return
    for where, record in read_json_lines(file):
        (text,) = string_fields(record, where, field)
        yield where, text


def _decode(raw: bytes, file: Path, line: int, offset: int) -> str:
    """`raw` (starting at `line` and byte `offset` of `file`) as text."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        bad_line = line + raw.count(b"\n", 0, error.start)
        raise LineError(f"{file}:{bad_line}", f"not UTF-8 (byte offset {offset + error.start})",
                        "re-encode the file as UTF-8 (e.g. iconv -f GB18030 -t UTF-8)") from None


def _bad_line(error: LineError, skip_bad: SkipBadLine | None) -> None:
    if skip_bad is None:
        raise error
    skip_bad(error)


def _either(suffixes: Sequence[str]) -> str:
    """`.txt, .jsonl or .json`."""
    return " or ".join([", ".join(suffixes[:-1]), suffixes[-1]]) if len(suffixes) > 1 else suffixes[0]


def json_problem(error: json.JSONDecodeError) -> str:
    """json's message with where on the line it is, and for a raw control character which one (json's own
    message stops at "at", and the character itself would be invisible or cut the line in a terminal)."""
    where = f"column {error.colno}"
    if error.msg.startswith("Invalid control character") and error.pos < len(error.doc):
        char = error.doc[error.pos]
        return f"raw control character {char!r} at {where}; write it escaped, e.g. \\u{ord(char):04x}"
    return f"{error.msg} at {where}"
