"""The token dataset's unit format: documents joined with eos, whole rows in shards of a bounded size, the tail
dropped; bad records named by file and line, or counted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from zhllama.data import DocumentEncoder, UnitStats, iter_documents, list_data_files, read_unit_blocks, write_unit
from zhllama.errors import UserError
from zhllama.prepare.units import documents

EOS = 1
DOCS = ["你好世界", "今天天气很好", "中国人民", "新年讲话好"]


def char_tokenizer(text: str) -> Tokenizer:
    vocab = {"<unk>": 0, "</s>": EOS}
    for char in sorted(set(text)):
        vocab.setdefault(char, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    return tokenizer


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("你好世界\n\n今天天气很好\n", encoding="utf-8")
    (root / "sub" / "b.jsonl").write_text(
        "\n".join(json.dumps({"text": t}, ensure_ascii=False) for t in DOCS[2:]) + "\n", encoding="utf-8")
    (root / "manifest.json").write_text("{}", encoding="utf-8")
    return root


def test_documents_are_lines_of_txt_and_text_of_jsonl(corpus: Path) -> None:
    files = list_data_files([corpus])
    assert [f.name for f in files] == ["a.txt", "b.jsonl"]
    assert [d for f in files for d in iter_documents(f)] == DOCS


@pytest.mark.parametrize("rows_per_shard", [1, 3, 100])
def test_a_unit_joins_documents_with_eos_in_whole_rows_and_drops_the_tail(
    corpus: Path, tmp_path: Path, rows_per_shard: int
) -> None:
    tokenizer = char_tokenizer("".join(DOCS))
    encoder = DocumentEncoder(tokenizer, EOS)
    stream = [t for d in DOCS for t in [*tokenizer.encode(d).ids, EOS]]
    out = tmp_path / "unit"
    docs = (d for f in list_data_files([corpus]) for d in iter_documents(f))
    stats = write_unit(docs, encoder, 5, rows_per_shard * 5 * 2, out, UnitStats())  # uint16: 2 bytes a token
    assert (stats.documents, stats.tokens, stats.blocks, stats.tokens_dropped) == (4, len(stream), 4, 3)
    assert [s["blocks"] for s in stats.shards] == [min(rows_per_shard, 4 - i) for i in range(0, 4, rows_per_shard)]
    assert all((out / s["name"]).stat().st_size == s["blocks"] * 5 * 2 for s in stats.shards)
    blocks = read_unit_blocks(out, encoder.dtype, 5)
    assert blocks.shape == (4, 5) and blocks.reshape(-1).tolist() == stream[:20]


def test_a_file_without_text_gives_an_empty_unit(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("\n\n", encoding="utf-8")
    stats = write_unit(iter_documents(tmp_path / "empty.txt"), DocumentEncoder(char_tokenizer("a"), EOS), 8,
                       1 << 20, tmp_path / "out", UnitStats())
    assert (stats.documents, stats.blocks, stats.shards) == (0, 0, [])
    (tmp_path / "nothing").mkdir()
    with pytest.raises(UserError, match="holds no .txt, .jsonl or .json file"):
        list_data_files([tmp_path / "nothing"])


def test_a_bad_record_names_file_and_line_or_is_counted(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "好"}\n{"text": \n{"title": "x"}\n{"text": "中国"}\n', encoding="utf-8")
    with pytest.raises(UserError, match=rf"^{path}:2: not valid JSON .*, or set skip_bad_records$") as err:
        list(documents(path, "c.jsonl", UnitStats(), skip_bad=False))
    assert "\n" not in str(err.value)
    stats = UnitStats()
    assert list(documents(path, "c.jsonl", stats, skip_bad=True)) == ["好", "中国"]
    assert stats.bad_records == 2 and stats.first_bad.startswith("c.jsonl:2: not valid JSON")
