from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as sp_pb2
from tokenizers import Tokenizer, models

from tests.tokenizer.conftest import HELDOUT_LINES, shared_file
from zhllama.embedded.peoples_daily import paragraph_texts
from zhllama.embedded.peoples_daily import peoples_daily as embedded_peoples_daily
from zhllama.errors import UserError
from zhllama.tokenizer import build_tokenizer, load_base_tokenizer_kind, tokens_per_char
from zhllama.tokenizer.hf_export import sentencepiece_to_fast
from zhllama.tokenizer.parity import load_hf_tokenizer, sentencepiece_parity


def load_proto(path: Path) -> sp_pb2.ModelProto:
    proto = sp_pb2.ModelProto()
    proto.ParseFromString(path.read_bytes())
    return proto


def chinese_llama_merge(base: sp_pb2.ModelProto, chinese: sp_pb2.ModelProto) -> list[str]:
    """The piece order of Chinese-LLaMA's merge_tokenizers.py (append every piece the base lacks)."""
    pieces = [p.piece for p in base.pieces]
    seen = set(pieces)
    for piece in chinese.pieces:
        if piece.piece not in seen:
            pieces.append(piece.piece)
            seen.add(piece.piece)
    return pieces


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, tiny_sp_base: Path, zh_corpus: Path) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("sp_out")
    report = build_tokenizer(tiny_sp_base, out, corpus=[zh_corpus], heldout_lines=HELDOUT_LINES, vocab_size=4000,
                             num_threads=1)
    return out, report


def test_merge_keeps_base_ids_and_appends_in_chinese_order(built: tuple[Path, dict[str, Any]],
                                                           tiny_sp_base: Path) -> None:
    out, report = built
    base, merged, chinese = (load_proto(tiny_sp_base), load_proto(out / "tokenizer.model"),
                             load_proto(out / "chinese_sp.model"))
    assert [p.piece for p in merged.pieces] == chinese_llama_merge(base, chinese)
    assert report["merged_vocab_size"] == len(merged.pieces) == len(base.pieces) + report["pieces_added"]
    assert report["pieces_added"] > 3000


def test_fast_tokenizer_matches_sentencepiece_on_all_heldout_lines(built: tuple[Path, dict[str, Any]],
                                                                   peoples_daily: list[str]) -> None:
    out, report = built
    assert report["application"]["backend"] == "tokenizers"
    assert not report["application"]["merge_order"]["ambiguous"]
    assert [(c["checked"], c["matched"]) for c in report["checks"]] == [(HELDOUT_LINES, HELDOUT_LINES)] * 3
    parity = report["application"]["tokenizer_json_parity"]
    assert parity["checked"] > HELDOUT_LINES and parity["matched"] == parity["checked"]
    hf = load_hf_tokenizer(out)
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    heldout = peoples_daily[-HELDOUT_LINES:]
    assert hf(heldout[0])["input_ids"] == [sp.bos_id(), *sp.encode(heldout[0])]
    assert hf.decode(hf(heldout[0])["input_ids"], skip_special_tokens=True) == heldout[0]


def test_chinese_compresses_and_pad_follows_the_merged_vocab(built: tuple[Path, dict[str, Any]],
                                                             peoples_daily: list[str]) -> None:
    out, report = built
    heldout = peoples_daily[-HELDOUT_LINES:]
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    assert report["tokens_per_char"]["extended"] == pytest.approx(tokens_per_char(sp, heldout))
    assert report["tokens_per_char"]["extended"] < 0.6 * report["tokens_per_char"]["base"]
    hf = load_hf_tokenizer(out)
    assert hf.pad_token == "[PAD]" and hf.pad_token_id == report["merged_vocab_size"] == len(hf) - 1
    assert json.loads((out / "report.json").read_text(encoding="utf-8"))["vocab_size"] == len(hf)
    assert "tokens per character" in (out / "report.md").read_text(encoding="utf-8").lower()


def test_parity_check_catches_a_different_tokenizer(built: tuple[Path, dict[str, Any]], tiny_sp_base: Path,
                                                    peoples_daily: list[str]) -> None:
    out, _ = built
    merged = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    base_fast = sentencepiece_to_fast(load_proto(tiny_sp_base))
    check = sentencepiece_parity(merged, base_fast, peoples_daily[:20])
    assert not check.ok and check.examples


def test_ready_chinese_model_is_merged_without_training(tmp_path: Path, built: tuple[Path, dict[str, Any]],
                                                        tiny_sp_base: Path, zh_corpus: Path) -> None:
    first, first_report = built
    report = build_tokenizer(tiny_sp_base, tmp_path, corpus=[zh_corpus], heldout_lines=HELDOUT_LINES,
                             chinese_sp_model=first / "chinese_sp.model", add_pad_token=False, parity_lines=50)
    assert report["merged_vocab_size"] == report["vocab_size"] == first_report["merged_vocab_size"]
    assert report["checks"][0]["checked"] == 50
    assert (tmp_path / "tokenizer.model").read_bytes() == (first / "tokenizer.model").read_bytes()


def test_vocab_size_too_large_for_corpus(tmp_path: Path, tiny_sp_base: Path) -> None:
    corpus = tmp_path / "tiny.txt"
    corpus.write_text("\n".join(["今天天气很好。", "我们去公园散步。"] * 20) + "\n", encoding="utf-8")
    too_large = r"tiny\.txt: vocab_size 5000 is too large for this corpus \(sentencepiece allows at most \d+\)"
    with pytest.raises(UserError, match=too_large):
        build_tokenizer(tiny_sp_base, tmp_path / "out", corpus=[corpus], heldout_lines=5, vocab_size=5000,
                        model_type="unigram", num_threads=1)
    assert not any((tmp_path / "out").iterdir())


def test_unknown_base_kind(tmp_path: Path) -> None:
    junk = tmp_path / "weights.bin"
    junk.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(UserError, match="weights.bin: not a SentencePiece model"):
        load_base_tokenizer_kind(junk)
    wordpiece = tmp_path / "tokenizer.json"
    Tokenizer(models.WordPiece({"[UNK]": 0}, unk_token="[UNK]")).save(str(wordpiece))
    with pytest.raises(UserError, match="WordPiece tokenizer.json"):
        load_base_tokenizer_kind(tmp_path)


def test_chinese_llama_reference_merge_is_49953() -> None:
    """Must-show 2 (optional data): LLaMA-2 + chinese-sp-20k gives Chinese-LLaMA's 49953 pieces, same order."""
    llama, chinese = shared_file("llama2-tokenizer.model"), shared_file("chinese-sp-20k.model")
    from zhllama.tokenizer.sentencepiece_merge import merge_sentencepiece

    merged = merge_sentencepiece(load_proto(llama), load_proto(chinese)).model
    assert [p.piece for p in merged.pieces] == chinese_llama_merge(load_proto(llama), load_proto(chinese))
    assert len(merged.pieces) == 49953
    fast = sentencepiece_to_fast(merged)
    lines = paragraph_texts(embedded_peoples_daily().heldout[-500:])
    check = sentencepiece_parity(spm.SentencePieceProcessor(model_proto=merged.SerializeToString()), fast, lines)
    assert check.ok, check.examples


def test_llama2_with_peoples_daily_reaches_068_tokens_per_char(tmp_path: Path) -> None:
    """Must-show 1 (optional data): LLaMA-2 + a 20K Chinese model trained on People's Daily, last 3000 lines held
    out: at most 0.68 tokens per character (LLaMA-2 alone 1.535; with Chinese-LLaMA's chinese-sp-20k 0.756)."""
    llama = shared_file("llama2-tokenizer.model")
    corpus = tmp_path / "peoples_daily.txt"
    daily = embedded_peoples_daily()
    corpus.write_text("\n".join(paragraph_texts(daily.train + daily.heldout)) + "\n", encoding="utf-8")
    report = build_tokenizer(llama, tmp_path / "out", corpus=[corpus], heldout_lines=3000, vocab_size=20000)
    assert report["heldout"]["characters"] == 263843
    assert report["tokens_per_char"]["base"] == pytest.approx(1.535, abs=5e-4)
    assert report["tokens_per_char"]["extended"] <= 0.68
    assert report["checks"][0]["matched"] == report["checks"][0]["checked"] == 3000
