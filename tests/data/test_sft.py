"""SFT formats, templates and loss masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from zhllama.data import (
    IGNORE_INDEX,
    SftReport,
    build_sft_sequences,
    collate,
    pack_sequences,
    read_sft_examples,
    sample_indices,
)
from zhllama.errors import UserError
from zhllama.prompts import alpaca_prompt, chat_prompt

EOS = 2


class CharTokenizer:
    """One id per character (bos = 1 when asked for special tokens): easy to check masks against."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return ([1] if add_special_tokens else []) + [3 + ord(c) % 5000 for c in text]


def write_jsonl(path: Path, records: list[object]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def test_alpaca_records_use_the_paper_template(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", [
        {"instruction": "翻译", "input": "hello", "output": "你好"},
        {"instruction": "写诗", "input": "", "output": "春眠不觉晓"},
    ])
    examples, report = read_sft_examples([path])
    assert [e.prompt for e in examples] == [alpaca_prompt("翻译", "hello"), alpaca_prompt("写诗")]
    assert "翻译\nhello\n\n### Response:\n" in examples[0].prompt
    assert [e.response for e in examples] == ["你好", "春眠不觉晓"]
    assert examples[1].where == f"{path}:2" and report.examples == 2


def test_json_array_conversations_and_role_text(tmp_path: Path) -> None:
    array = tmp_path / "alpaca.json"
    array.write_text(json.dumps([{"instruction": "一", "output": "1"}, {"instruction": "二", "output": "2"}],
                                ensure_ascii=False, indent=1), encoding="utf-8")
    conv = write_jsonl(tmp_path / "conv.jsonl", [{"conversations": [
        {"from": "human", "value": "你好"}, {"from": "gpt", "value": "你好！"},
        {"from": "human", "value": "再见"}, {"from": "gpt", "value": "再见！"}]}])
    roles = write_jsonl(tmp_path / "roles.jsonl", [[{"role": "user", "text": "问"}, {"role": "assistant",
                                                                                     "text": "答"}]])
    examples, _ = read_sft_examples([array, conv, roles])
    assert [e.response for e in examples] == ["1", "2", "你好！", "再见！", "答"]
    assert examples[1].where == f"{array}:6"
    assert examples[2].prompt == chat_prompt([], "你好")
    assert examples[3].prompt == chat_prompt([("你好", "你好！")], "再见")
    assert examples[4].prompt == alpaca_prompt("问")


def test_prompt_tokens_carry_no_loss() -> None:
    from zhllama.data import SftExample

    tokenizer = CharTokenizer()
    examples = [SftExample(alpaca_prompt("重复"), "好的", "x:1"), SftExample(alpaca_prompt("说"), "是", "x:2")]
    report = SftReport()
    sequences = build_sft_sequences(examples, tokenizer, EOS, 512, packing=False, report=report)
    for example, (ids, labels, _) in zip(examples, sequences, strict=True):
        prompt = tokenizer.encode(example.prompt)
        assert ids.tolist() == prompt + tokenizer.encode(example.response, False) + [EOS]
        assert (labels[: len(prompt)] == IGNORE_INDEX).all()
        assert labels[len(prompt) :].tolist() == ids[len(prompt) :].tolist()
    batch = collate(sequences, pad_id=0)
    assert batch["labels"].shape == batch["input_ids"].shape
    assert (batch["labels"][1, len(sequences[1][0]) :] == IGNORE_INDEX).all()
    assert (batch["attention_mask"][1, len(sequences[1][0]) :] == 0).all()


def test_packing_keeps_masks_and_length_and_long_prompts_are_dropped() -> None:
    from zhllama.data import SftExample

    tokenizer = CharTokenizer()
    examples = [SftExample(f"问题{i}：", f"答{i}", "x") for i in range(10)]
    examples.append(SftExample("长" * 100, "答", "x"))
    report = SftReport()
    unpacked = build_sft_sequences(examples, tokenizer, EOS, 24, packing=False, report=report)
    assert report.dropped_too_long == 1 and len(unpacked) == 10
    packed = pack_sequences([(i.tolist(), lab.tolist()) for i, lab, _ in unpacked], 24)
    assert len(packed) < len(unpacked)
    assert all(len(ids) <= 24 and len(ids) == len(labels) == len(positions) for ids, labels, positions in packed)
    assert [t for _, labels, _ in packed for t in labels] == [t for _, labels, _ in unpacked for t in labels.tolist()]


def test_a_broken_line_fails_with_file_and_line_unless_skipped(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c", \n{"input": "x"}\n'
                    '{"instruction": "d", "output": "e"}\n', encoding="utf-8")
    with pytest.raises(UserError, match=rf"^{path}:2: not valid JSON") as err:
        read_sft_examples([path])
    assert "\n" not in str(err.value) and "skip_bad_records" in str(err.value)
    examples, report = read_sft_examples([path], skip_bad_records=True)
    assert [e.response for e in examples] == ["b", "e"]
    assert report.bad_records == 2 and report.first_bad.startswith(f"{path}:2")
    turns = write_jsonl(tmp_path / "turns.jsonl", [[{"role": "assistant", "text": "先答"}]])
    with pytest.raises(UserError, match=rf"{turns}:1: turns must alternate"):
        read_sft_examples([turns])


def test_sample_order_is_a_function_of_seed_and_position() -> None:
    first = sample_indices(10, 7, 0, 25)
    assert sorted(first[:10]) == list(range(10)) and sorted(first[10:20]) == list(range(10))
    assert first[:10] != first[10:20]
    assert sample_indices(10, 7, 13, 5) == first[13:18]
    assert sample_indices(10, 8, 0, 10) != first[:10]
    assert np.array_equal(np.array(sample_indices(10, 7, 0, 25)), np.array(first))
