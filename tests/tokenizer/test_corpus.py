from __future__ import annotations

import json
from pathlib import Path

import pytest

from zhllama.errors import UserError
from zhllama.tokenizer.corpus import corpus_files, corpus_lines, split_corpus


def test_directory_expands_to_sorted_txt_and_jsonl(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("乙\n", encoding="utf-8")
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "甲\n丙"}, ensure_ascii=False) + "\n", encoding="utf-8")
    (tmp_path / "notes.md").write_text("ignored\n", encoding="utf-8")
    files = corpus_files([tmp_path])
    assert [f.name for f in files] == ["a.jsonl", "b.txt"]
    assert [line for f in files for line in corpus_lines(f)] == ["甲", "丙", "乙"]


def test_heldout_tail_is_never_trained_on(tmp_path: Path) -> None:
    lines = [f"第{i}行文字" for i in range(50)]
    first, second = tmp_path / "1.txt", tmp_path / "2.txt"
    first.write_text("\n".join(lines[:30]) + "\n\n", encoding="utf-8")
    second.write_text("\n".join(lines[30:]) + "\n", encoding="utf-8")
    split = split_corpus([first, second], [], 15, tmp_path / "train.txt")
    assert split.heldout == lines[35:]
    assert split.train_file is not None
    assert split.train_file.read_text(encoding="utf-8").splitlines() == lines[:35]
    assert split.train_lines == 35


def test_explicit_heldout_files_leave_whole_corpus_for_training(tmp_path: Path) -> None:
    corpus, heldout = tmp_path / "c.txt", tmp_path / "h.txt"
    corpus.write_text("一\n二\n三\n", encoding="utf-8")
    heldout.write_text("四\n", encoding="utf-8")
    split = split_corpus([corpus], [heldout], 3000, tmp_path / "train.txt")
    assert (split.train_lines, split.heldout) == (3, ["四"])


def test_non_utf8_names_file_line_and_byte_offset(tmp_path: Path) -> None:
    path = tmp_path / "gbk.txt"
    path.write_bytes("第一行\n".encode() + "中文".encode("gbk") + b"\n")
    with pytest.raises(UserError, match=r"gbk\.txt:2: not UTF-8 \(byte offset 10\); re-encode the file as UTF-8"):
        list(corpus_lines(path))


@pytest.mark.parametrize(("content", "message"), [
    ("", r"empty\.txt is empty"),
    ("\n  \n", r"empty\.txt is empty"),
])
def test_empty_file_is_an_error(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "empty.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=message):
        split_corpus([path], [], 10, tmp_path / "train.txt")


@pytest.mark.parametrize(("record", "message"), [
    ('{"text": "好"', r"data\.jsonl:2: not valid JSON \(Expecting ',' delimiter at column 13\); each line must be one "
                     r"JSON object"),
    ('{"content": "好"}', r"data\.jsonl:2: each JSONL line needs a string field `text`"),
])
def test_bad_jsonl_names_the_line(tmp_path: Path, record: str, message: str) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "好"}\n' + record + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=message):
        list(corpus_lines(path))


def test_missing_corpus_path_and_all_heldout(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        corpus_files([tmp_path / "nope.txt"])
    small = tmp_path / "small.txt"
    small.write_text("一\n二\n", encoding="utf-8")
    with pytest.raises(UserError, match="none left to train on"):
        split_corpus([small], [], 3000, tmp_path / "train.txt")
