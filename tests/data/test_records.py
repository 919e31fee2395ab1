"""The one reader of input files: which files a path holds, and one-line file:line errors for every bad line."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from zhllama.errors import UserError
from zhllama.records import (
    LineError,
    list_files,
    read_json_lines,
    read_json_records,
    read_lines,
    read_texts,
    string_fields,
)


def test_directories_expand_sorted_without_hidden_files_or_bookkeeping(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / ".fetch-x").mkdir()
    for name in ("b.txt", "a.jsonl", "sub/c.txt", ".fetch-x/d.txt", "manifest.json", "notes.md"):
        (tmp_path / name).write_text("x\n", encoding="utf-8")
    single = tmp_path / "notes.md"
    files = list_files([single, tmp_path], (".txt", ".jsonl", ".json"), "data")
    assert [f.relative_to(tmp_path).as_posix() for f in files] == ["notes.md", "a.jsonl", "b.txt", "sub/c.txt"]
    with pytest.raises(UserError, match=r"^data: .*nope does not exist; check the path$"):
        list_files([tmp_path / "nope"], (".txt",), "data")
    with pytest.raises(UserError, match=r"corpus: .* holds no \.csv or \.tsv file; add one"):
        list_files([tmp_path / "sub"], (".csv", ".tsv"), "corpus")


def test_lines_keep_their_numbers_and_lose_only_the_line_ending(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(" 第一行 \r\n\n  \n第四行".encode())
    assert list(read_lines(path)) == [(f"{path}:1", " 第一行 "), (f"{path}:4", "第四行")]


def test_text_that_is_not_utf8_names_its_line_and_byte(tmp_path: Path) -> None:
    path = tmp_path / "gbk.jsonl"
    path.write_bytes(b'{"text": "ok"}\n' + '{"text": "中文"}'.encode("gbk") + b"\n")
    with pytest.raises(LineError, match=rf"^{path}:2: not UTF-8 \(byte offset 25\); re-encode the file as UTF-8"):
        list(read_texts(path))
    array = tmp_path / "gbk.json"
    array.write_bytes(b'[\n{"a": 1},\n' + '{"a": "中"}'.encode("gbk") + b"]")
    with pytest.raises(LineError, match=rf"^{array}:3: not UTF-8 \(byte offset 19\)"):
        list(read_json_records(array))


def test_bad_json_is_one_line_with_the_fix_or_goes_to_skip_bad(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b",\n\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(UserError) as error:
        list(read_json_lines(path))
    assert str(error.value) == f"{path}:2: not valid JSON (Expecting property name enclosed in double quotes at " \
                               "column 14); each line must be one JSON object"
    skipped: list[LineError] = []
    assert list(read_json_lines(path, skipped.append)) == [(f"{path}:1", {"text": "a"}), (f"{path}:4", [1, 2])]
    assert [e.where for e in skipped] == [f"{path}:2"]


def test_json_array_elements_carry_their_line_and_a_break_ends_the_file(tmp_path: Path) -> None:
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps([{"n": 1}, {"n": 2}], indent=1) + "\n", encoding="utf-8")
    assert [(where.rsplit(":", 1)[1], record["n"]) for where, record in read_json_records(path)] == [("2", 1), ("5", 2)]
    path.write_text('[{"n": 1},\n {"n": 2,,\n {"n": 3}]', encoding="utf-8")
    skipped: list[LineError] = []
    assert [record["n"] for _, record in read_json_records(path, skipped.append)] == [1]
    assert [(e.where, e.fix) for e in skipped] == [(f"{path}:2", "the file must be one JSON array of objects")]
    lines = tmp_path / "lines.json"
    lines.write_text('{"n": 1}\n{"n": 2}\n', encoding="utf-8")
    assert [record["n"] for _, record in read_json_records(lines)] == [1, 2]


def test_string_fields_say_which_fields_and_how_a_line_looks(tmp_path: Path) -> None:
    assert string_fields({"a": "x", "b": "y", "c": 3}, "f:1", "b", "a") == ("y", "x")
    with pytest.raises(LineError, match=r'^f:1: each JSONL line needs a string field `text`; write lines like '
                                        r'\{"text": "..."\}$'):
        string_fields({"text": 1}, "f:1", "text")
    with pytest.raises(LineError, match=r"^f:2: each JSONL line needs string fields `a`, `b`; write lines like"):
        string_fields(["a", "b"], "f:2", "a", "b")
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "一"}\n{"body": "二"}\n', encoding="utf-8")
    with pytest.raises(LineError, match=rf"^{path}:2: each JSONL line needs a string field `text`"):
        list(read_texts(path))


def test_a_line_error_survives_pickling() -> None:
    """Data is tokenized in worker processes; their errors must arrive whole."""
    error = pickle.loads(pickle.dumps(LineError("f:3", "not valid JSON (x)", "fix it")))
    assert (error.where, error.problem, error.fix, str(error)) == ("f:3", "not valid JSON (x)", "fix it",
                                                                  "f:3: not valid JSON (x); fix it")


def test_a_raw_control_character_is_named_not_cut(tmp_path: Path) -> None:
    path = tmp_path / "sft.jsonl"
    path.write_text('{"instruction": "a\x1cb\x0bc", "output": "d"}\n', encoding="utf-8")
    with pytest.raises(LineError) as error:
        list(read_json_lines(path))
    # One line: the character is written escaped, never raw (a raw \x1c or \x0b would end the line for splitlines).
    assert str(error.value) == (f"{path}:1: not valid JSON (raw control character '\\x1c' at column 19; write it "
                                "escaped, e.g. \\u001c); each line must be one JSON object")
    assert len(str(error.value).splitlines()) == 1
