"""Corpus reading and block packing: eos between documents, same blocks with any number of workers, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from zhllama.data import blocks_key, build_blocks, iter_documents, list_data_files, load_blocks
from zhllama.errors import UserError
from zhllama.run import input_fingerprint
from zhllama.store import DirStore

EOS = 1


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
        "\n".join(json.dumps({"text": t}, ensure_ascii=False) for t in ["中国人民", "新年讲话好"]) + "\n",
        encoding="utf-8")
    (root / "manifest.json").write_text("{}", encoding="utf-8")
    return root


def test_documents_are_lines_of_txt_and_text_of_jsonl(corpus: Path) -> None:
    files = list_data_files([corpus])
    assert [f.name for f in files] == ["a.txt", "b.jsonl"]
    assert [d for f in files for d in iter_documents(f)] == ["你好世界", "今天天气很好", "中国人民", "新年讲话好"]


def test_blocks_join_documents_with_eos_and_drop_the_tail(corpus: Path, tmp_path: Path) -> None:
    files = list_data_files([corpus])
    tokenizer = char_tokenizer("你好世界今天天气很好中国人民新年讲话好")
    info = build_blocks(files, tokenizer, EOS, 5, tmp_path / "one", workers=1, progress=False)
    blocks = load_blocks(tmp_path / "one")
    stream = [t for d in ["你好世界", "今天天气很好", "中国人民", "新年讲话好"]
              for t in [*tokenizer.encode(d).ids, EOS]]
    assert info["tokens"] == len(stream) == 23 and info["blocks"] == 4 and info["tokens_dropped"] == 3
    assert blocks.shape == (4, 5)
    assert blocks.reshape(-1).tolist() == stream[:20]
    build_blocks(files, tokenizer, EOS, 5, tmp_path / "two", workers=2, progress=False)
    assert np.array_equal(load_blocks(tmp_path / "two"), blocks)


def test_cache_key_follows_tokenizer_data_and_block_size(corpus: Path, tmp_path: Path) -> None:
    store = DirStore(tmp_path / "store")
    (corpus / "manifest.json").unlink()  # plain files: fingerprinted by size and mtime, not by a manifest
    data = input_fingerprint(f"file://{corpus}", store)
    assert input_fingerprint(f"file://{corpus}", store) == data
    assert blocks_key("tok", data, 5) != blocks_key("tok", data, 6)
    assert blocks_key("tok", data, 5) != blocks_key("other", data, 5)
    (corpus / "a.txt").write_text("改了\n", encoding="utf-8")
    assert input_fingerprint(f"file://{corpus}", store) != data


def test_an_empty_corpus_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("\n\n", encoding="utf-8")
    with pytest.raises(UserError, match="less than one block") as err:
        build_blocks([tmp_path / "empty.txt"], char_tokenizer("a"), EOS, 8, tmp_path / "out", progress=False)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out" / "tokens.bin").exists()
    (tmp_path / "nothing").mkdir()
    with pytest.raises(UserError, match="holds no .txt, .jsonl or .json file"):
        list_data_files([tmp_path / "nothing"])


def test_a_broken_jsonl_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "好"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(UserError, match=rf"{path}:2: not valid JSON"):
        list(iter_documents(path))
