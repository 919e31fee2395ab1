"""Held-out task scoring: the metrics on hand-checked answers, and score_task end to end on real tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from tests.fixtures.char_tokenizer import chunk_tokenizer
from tests.fixtures.tiny_llama import scripted_llama, successor_llama, tiny_llama
from zhllama.errors import UserError
from zhllama.eval.tasks import (
    TaskExample,
    first_line,
    greedy_answers,
    predicted_label,
    read_task_file,
    sample_generations,
    score_task,
    segmentation_counts,
)
from zhllama.generate import DecodingSettings
from zhllama.prompts import ALPACA_PROLOGUE, alpaca_prompt

INSTRUCTION = "判断情感，回答是或否。"
INPUTS = ["很好", "太差了", "一般般吧", "非常满意，下次还来"]


def char_tokenizer() -> PreTrainedTokenizerFast:
    """One token per character of ASCII, the Alpaca template and the test texts; <s> is not added."""
    text = "".join(chr(c) for c in range(32, 127)) + "\n" + ALPACA_PROLOGUE + INSTRUCTION + "".join(INPUTS) + "是否"
    return chunk_tokenizer(sorted(set(text)), add_bos=False)


def always_says(tokenizer: PreTrainedTokenizerFast, piece: str) -> LlamaForCausalLM:
    """A model whose next token is `piece` after any input."""
    return scripted_llama(tokenizer, {piece: 10.0})


def test_the_first_label_mentioned_is_the_prediction() -> None:
    labels = ["正面", "负面"]
    assert predicted_label("正面", labels) == "正面"
    assert predicted_label("这条评论是负面的，不是正面", labels) == "负面"
    assert predicted_label("### Response:", labels) is None
    assert predicted_label("very positive", ["positive", "very positive"]) == "very positive"
    # the answer is its first non-empty line: a label further down was not what the model answered
    assert predicted_label("\n\n负面\n正面", labels) == "负面"
    assert predicted_label("好评\n正面", labels) is None


def test_the_answer_is_the_first_non_empty_line() -> None:
    assert first_line("\n \n 我们/要 \n下一行") == "我们/要"
    assert first_line("\n\n") == ""


def test_segmentation_counts_words_by_span() -> None:
    # Reference 我们 | 要 | 加快 | 改革 ; answer 我们 | 要加快 | 改革: 我们 and 改革 match, 要加快 does not.
    assert segmentation_counts("我们 要 加快 改革", "我们 要加快 改革\n下一行不算") == (2, 3, 4)
    assert segmentation_counts("我们 要", "") == (0, 0, 2)
    # A word with the right text at the wrong place (a character was dropped before it) is wrong.
    assert segmentation_counts("甲 乙 丙", "乙 丙") == (0, 2, 3)
    assert segmentation_counts("我们/要/加快/改革", "我们/要加快 / 改革") == (2, 3, 4)


def test_task_files_are_checked_line_by_line(tmp_path: Path) -> None:
    good = {"instruction": "i", "input": "x", "output": "是", "metric": "accuracy"}
    path = tmp_path / "task.jsonl"
    path.write_text(json.dumps(good) + "\n\n" + json.dumps({**good, "input": ""}) + "\n", encoding="utf-8")
    assert read_task_file(path) == [TaskExample("i", "x", "是", "accuracy"), TaskExample("i", "", "是", "accuracy")]
    assert read_task_file(tmp_path) == read_task_file(path)
    cases = {
        "{not json": r"task\.jsonl:1: not valid JSON",
        json.dumps({**good, "metric": "bleu"}): r"task\.jsonl:1: metric 'bleu' is unknown; use one of accuracy",
        json.dumps({"instruction": "i", "output": 3, "metric": "accuracy"}): r":1: .*needs string fields",
        json.dumps(good) + "\n" + json.dumps({**good, "metric": "segmentation_f1"}): r"task\.jsonl:2: metric .*differs",
        "": r"no records",
    }
    for text, message in cases.items():
        path.write_text(text + "\n", encoding="utf-8")
        with pytest.raises(UserError, match=message):
            read_task_file(path)


def test_accuracy_of_a_model_that_always_answers_yes() -> None:
    tokenizer = char_tokenizer()
    model = always_says(tokenizer, "是")
    expected = ["是", "否", "否", "是"]
    examples = [TaskExample(INSTRUCTION, text, answer, "accuracy")
                for text, answer in zip(INPUTS, expected, strict=True)]
    result = score_task(model, tokenizer, examples, "accuracy", True, max_new_tokens=64)
    assert (result["score"], result["correct"], result["unanswered"]) == (0.5, 2, 0)
    assert result["labels"] == ["否", "是"]
    assert result["prompt"] == alpaca_prompt(INSTRUCTION, INPUTS[0])
    # The answer budget is the longest reference (1 token) plus the margin, not the 64 allowed.
    assert result["decoding"]["max_new_tokens"] == 9
    assert [a["answer"] for a in result["answers"]] == ["是" * 9] * 4
    plain = score_task(model, tokenizer, examples, "accuracy", False, max_new_tokens=64)
    assert plain["prompt"] == f"{INSTRUCTION}\n{INPUTS[0]}\n" and plain["template"] == "plain"


def test_segmentation_f1_of_a_model_that_answers_one_character() -> None:
    tokenizer = char_tokenizer()
    model = always_says(tokenizer, "是")
    examples = [TaskExample("分词", "是是", "是 是", "segmentation_f1"),
                TaskExample("分词", "否", "否", "segmentation_f1")]
    result = score_task(model, tokenizer, examples, "segmentation_f1", True, max_new_tokens=4)
    # Answers are "是是是是" (one word): it matches nothing; precision 0/2, recall 0/3.
    assert (result["words_right"], result["words_predicted"], result["words_reference"]) == (0, 2, 3)
    assert result["score"] == 0.0


def test_batched_greedy_answers_match_one_at_a_time() -> None:
    """Left padding must not change what a prompt's answer is."""
    tokenizer = char_tokenizer()
    model = tiny_llama(len(tokenizer), seed=3, tied=False)
    prompts = [INSTRUCTION + text for text in INPUTS]  # different lengths: the batch is padded
    batched = greedy_answers(model, tokenizer, prompts, max_new_tokens=6)
    alone = [greedy_answers(model, tokenizer, [prompt], max_new_tokens=6)[0] for prompt in prompts]
    assert batched == alone
    assert len(set(batched)) > 1  # the prompts really get different answers, so the comparison means something


def test_decoding_stops_at_the_end_of_the_first_non_empty_line() -> None:
    tokenizer = char_tokenizer()
    # after the prompt's last "\n": a blank line, then "否", then a new line that would say "否" again, forever
    model = successor_llama(tokenizer, {"\n": "否", "否": "\n"})
    blank_first = successor_llama(tokenizer, {":": "\n", "\n": "否", "否": "\n"})
    prompts = [INSTRUCTION + text + "\n" for text in INPUTS]
    assert greedy_answers(model, tokenizer, prompts, max_new_tokens=9) == ["否\n"] * 4
    # a leading blank line is not an answer: decoding goes on to the "否" line
    assert greedy_answers(blank_first, tokenizer, ["答:"], max_new_tokens=9) == ["\n否\n"]
    # without the stop the budget would be spent: 9 tokens alternating
    assert tokenizer.decode(model.generate(torch.tensor([tokenizer.encode(prompts[0])]), max_new_tokens=9,
                                           do_sample=False)[0, len(tokenizer.encode(prompts[0])):]) == "否\n" * 4 + "否"


def test_sample_generations_are_reproducible_with_the_seed() -> None:
    tokenizer = char_tokenizer()
    model = tiny_llama(len(tokenizer), seed=5, tied=False)
    settings = DecodingSettings(max_new_tokens=5)
    first = sample_generations(model, tokenizer, INPUTS[:2], True, settings, seed=7)
    assert first == sample_generations(model, tokenizer, INPUTS[:2], True, settings, seed=7)
    assert first["decoding"]["temperature"] == 0.2 and first["seed"] == 7
    assert [g["prompt"] for g in first["generations"]] == [alpaca_prompt(text) for text in INPUTS[:2]]
