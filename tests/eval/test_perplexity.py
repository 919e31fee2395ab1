from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from tests.eval.eval_fixtures import EVAL_LLAMA
from tests.fixtures.char_tokenizer import chunk_tokenizer
from tests.fixtures.tiny_llama import tiny_llama, uniform_llama
from zhllama.errors import UserError
from zhllama.eval.perplexity import document_ids, document_nll, per_char_perplexity, read_documents, text_language

TEXT = "人民日报一九九八年元旦献辞：迈向充满希望的新世纪。" * 3  # 75 characters


@pytest.fixture(scope="module")
def model(chars: PreTrainedTokenizerFast) -> torch.nn.Module:
    return tiny_llama(len(chars), seed=1, **EVAL_LLAMA)


def full_context_nll(model: torch.nn.Module, ids: list[int]) -> float:
    """Summed NLL from one forward pass over the whole sequence (transformers' own loss)."""
    inputs = torch.tensor([ids])
    with torch.no_grad():
        return model(inputs, labels=inputs).loss.item() * (len(ids) - 1)


def test_window_covering_the_document_equals_full_context(model, chars) -> None:
    ids = document_ids(chars, TEXT)
    assert ids[0] == chars.bos_token_id and len(ids) == len(TEXT) + 1
    nll, scored = document_nll(model, ids, window=128, stride=64)
    assert scored == len(ids) - 1
    assert nll == pytest.approx(full_context_nll(model, ids), rel=1e-5)


@pytest.mark.parametrize(("window", "stride"), [(16, 8), (16, 15), (30, 1)])
def test_sliding_window_scores_each_token_once_with_its_window_context(model, chars, window, stride) -> None:
    ids = document_ids(chars, TEXT)
    nll, scored = document_nll(model, ids, window, stride)
    # Brute force: token j is scored by the first window [k*stride, k*stride + window) that reaches past it,
    # and sees the tokens of that window before it.
    expected = 0.0
    for j in range(1, len(ids)):
        begin = next(k * stride for k in range(len(ids)) if k * stride + window > j)
        context = torch.tensor([ids[begin:j]])
        with torch.no_grad():
            logprobs = torch.log_softmax(model(context).logits[0, -1], dim=-1)
        expected -= logprobs[ids[j]].item()
    assert scored == len(ids) - 1
    assert nll == pytest.approx(expected, rel=1e-5)
    assert nll != pytest.approx(full_context_nll(model, ids), rel=1e-4)  # the window really cut the context


def test_stride_must_leave_windows_overlapping(model, chars) -> None:
    with pytest.raises(UserError, match="stride 16 must be between 1 and window 16"):
        document_nll(model, document_ids(chars, TEXT), window=16, stride=16)


def test_per_char_normalization_compares_tokenizers() -> None:
    # The same text cut two ways: one token per character (16 characters + 3 specials = 19 pieces) or one per
    # two characters (256 pairs + 3 specials, padded to 19**2 pieces). Uniform models over each vocabulary give
    # every character the same probability 1/19, so per-character perplexity must agree (19) while per-token
    # perplexity differs 19-fold.
    alphabet = list("天地玄黄宇宙洪荒日月盈昃辰宿列张")
    pairs = [a + b for a in alphabet for b in alphabet]
    by_char = chunk_tokenizer(alphabet, chunk=1)
    by_pair = chunk_tokenizer(pairs + [f"<unused{i}>" for i in range(19**2 - 3 - len(pairs))], chunk=2)
    assert (len(by_char), len(by_pair)) == (19, 19**2)
    rng = random.Random(0)
    documents = ["".join(rng.choices(alphabet, k=n)) for n in (40, 64, 18)]

    char_model = uniform_llama(len(by_char), **EVAL_LLAMA)
    char_result = per_char_perplexity(char_model, by_char, documents, window=32, stride=16)
    pair_model = uniform_llama(len(by_pair), **EVAL_LLAMA)
    pair_result = per_char_perplexity(pair_model, by_pair, documents, window=32, stride=16)
    print(f"per char {char_result.as_dict()}\nper pair {pair_result.as_dict()}")

    assert char_result.characters == pair_result.characters == 122
    assert (char_result.tokens, pair_result.tokens) == (122, 61)
    assert char_result.per_char == pytest.approx(19, rel=1e-5)
    assert pair_result.per_char == pytest.approx(19, rel=1e-5)
    assert (char_result.per_token, pair_result.per_token) == (pytest.approx(19, rel=1e-5), pytest.approx(361, rel=1e-5))
    assert pair_result.tokens_per_char == pytest.approx(0.5)


def test_per_char_perplexity_is_exp_of_nll_per_character(model, chars) -> None:
    documents = [TEXT, "新华社北京十二月三十一日电", "ASCII text too."]
    result = per_char_perplexity(model, chars, documents, window=24, stride=12)
    nll = sum(document_nll(model, document_ids(chars, text), 24, 12)[0] for text in documents)
    assert result.characters == sum(map(len, documents))
    assert result.per_char == pytest.approx(math.exp(nll / result.characters))


def test_read_documents_txt_jsonl_dir_and_cap(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("第一行\n\n第二行文字\n", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "第三"}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert read_documents(tmp_path) == ["第一行", "第二行文字", "第三"]
    assert read_documents(tmp_path / "a.txt", max_chars=5) == ["第一行", "第二"]
    (tmp_path / "c.jsonl").write_text('{"body": "x"}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"c\.jsonl:1: each JSONL line needs a string field `text`"):
        read_documents(tmp_path)


def test_held_out_text_is_labelled_by_its_script() -> None:
    assert text_language([TEXT, "NBA球星访华"]) == "zh"
    assert text_language(["The \"if\" statement is used for conditional execution.", "x = 1 # 中"]) == "en"
    assert text_language(["Die Größe, für Übungen, schöne Äpfel, Öl, süß, weiß"]) == "other"
    assert text_language(["12345 ..."]) == "other"
