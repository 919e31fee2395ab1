"""Instruction data: read the three formats, render them with the Alpaca templates, mask prompts out of the loss.

Formats, recognised per record:
  Alpaca         {"instruction": ..., "input": ..., "output": ...}   (a JSON array file, or JSONL)
  conversations  {"conversations": [{"from": "human", "value": ...}, {"from": "gpt", "value": ...}, ...]}
  role/text      [{"role": "user", "text": ...}, {"role": "assistant", "text": ...}, ...]   (one per JSONL line)
A conversation gives one example per assistant turn: the earlier turns are its history in `chat_prompt`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from zhllama.data.batches import IGNORE_INDEX as IGNORE_INDEX  # re-exported: forward.py and tests import it here
from zhllama.data.batches import Sample
from zhllama.errors import UserError
from zhllama.prompts import alpaca_prompt, chat_prompt
from zhllama.records import LineError, read_json_records

USER_ROLES = {"user", "human"}
ASSISTANT_ROLES = {"assistant", "gpt", "bot", "model"}


class TextTokenizer(Protocol):
    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...


@dataclass(frozen=True)
class SftExample:
    prompt: str
    response: str
    where: str
    """file:line the example came from (for error messages)."""


@dataclass
class SftReport:
    examples: int = 0
    bad_records: int = 0
    first_bad: str = ""
    truncated: int = 0
    dropped_too_long: int = 0
    sequences: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class RecordError(ValueError):
    """A record that is valid JSON but not one of the formats."""


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise RecordError(f"{what} must be a string, got {type(value).__name__}")
    return value


def _turns(items: Any, role_key: str, text_keys: Sequence[str]) -> list[tuple[str, str]]:
    if not isinstance(items, list) or not items:
        raise RecordError("a conversation must be a non-empty list of turns")
    turns = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise RecordError(f"turn {index} is not an object")
        role = str(item.get(role_key, "")).lower()
        text_key = next((k for k in text_keys if k in item), None)
        if text_key is None:
            raise RecordError(f"turn {index} has no {' or '.join(text_keys)!r}")
        if role in USER_ROLES:
            turns.append(("user", _text(item[text_key], f"turn {index} {text_key}")))
        elif role in ASSISTANT_ROLES:
            turns.append(("assistant", _text(item[text_key], f"turn {index} {text_key}")))
        else:
            raise RecordError(f"turn {index} has role {role!r}; use user/human or assistant/gpt")
    return turns


def _conversation_examples(turns: list[tuple[str, str]], where: str) -> list[SftExample]:
    examples: list[SftExample] = []
    history: list[tuple[str, str]] = []
    for index in range(0, len(turns), 2):
        pair = turns[index : index + 2]
        if len(pair) < 2 or pair[0][0] != "user" or pair[1][0] != "assistant":
            raise RecordError("turns must alternate user, assistant, starting with user and ending with assistant")
        question, answer = pair[0][1], pair[1][1]
        examples.append(SftExample(chat_prompt(history, question), answer, where))
        history.append((question, answer))
    return examples


def record_examples(record: Any, where: str) -> list[SftExample]:
    """The examples of one record, in any of the three formats; RecordError says what is wrong."""
    if isinstance(record, list):
        return _conversation_examples(_turns(record, "role", ("text", "content")), where)
    if not isinstance(record, dict):
        raise RecordError(f"expected an object or a list of turns, got {type(record).__name__}")
    if "conversations" in record:
        items = record["conversations"]
        role_key = "from" if items and isinstance(items[0], dict) and "from" in items[0] else "role"
        return _conversation_examples(_turns(items, role_key, ("value", "content", "text")), where)
    if "instruction" in record:
        if "output" not in record:
            raise RecordError("an Alpaca record needs `output`")
        instruction = _text(record["instruction"], "instruction")
        extra = _text(record.get("input") or "", "input")
        return [SftExample(alpaca_prompt(instruction, extra), _text(record["output"], "output"), where)]
    raise RecordError("not an Alpaca record (instruction/input/output), a conversation or a role/text list")


def read_sft_examples(files: Sequence[Path], *, skip_bad_records: bool = False) -> tuple[list[SftExample], SftReport]:
    """Every example in `files`; a malformed record fails the run (file:line) unless `skip_bad_records`."""
    examples: list[SftExample] = []
    report = SftReport()

    def bad_record(error: LineError) -> None:
        if not skip_bad_records:
            raise LineError(error.where, error.problem, f"{error.fix}, or set skip_bad_records")
        report.bad_records += 1
        report.first_bad = report.first_bad or f"{error.where}: {error.problem}"

    for path in files:
        for where, record in read_json_records(path, skip_bad=bad_record):
            try:
                examples.extend(record_examples(record, where))
            except RecordError as err:
                bad_record(LineError(where, str(err), "fix the record"))
    if not examples:
        raise UserError(f"data: no SFT examples in {', '.join(str(f) for f in files)}; check the files and format")
    report.examples = len(examples)
    return examples, report


def tokenize_example(
    example: SftExample, tokenizer: TextTokenizer, eos_id: int, max_length: int
) -> tuple[list[int], list[int], bool] | None:
    """(input_ids, labels with the prompt masked to IGNORE_INDEX, truncated?); None when the prompt leaves no room.

    Prompt and response are tokenized apart, as at inference the model continues the tokenized prompt.
    """
    prompt = tokenizer.encode(example.prompt, add_special_tokens=True)
    response = [*tokenizer.encode(example.response, add_special_tokens=False), eos_id]
    if len(prompt) >= max_length:
        return None
    ids = (prompt + response)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt) + response)[:max_length]
    return ids, labels, len(prompt) + len(response) > max_length


def pack_sequences(
    sequences: Sequence[tuple[list[int], list[int]]], max_length: int
) -> list[tuple[list[int], list[int], list[int]]]:
    """Greedy in order: whole examples joined into sequences of at most `max_length` tokens, with the positions of
    each example counted from 0 (where they restart, attention is cut: no example sees another)."""
    packed: list[tuple[list[int], list[int], list[int]]] = []
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    for example_ids, example_labels in sequences:
        if ids and len(ids) + len(example_ids) > max_length:
            packed.append((ids, labels, positions))
            ids, labels, positions = [], [], []
        ids = ids + example_ids
        labels = labels + example_labels
        positions = positions + list(range(len(example_ids)))
    if ids:
        packed.append((ids, labels, positions))
    return packed


def build_sft_sequences(
    examples: Sequence[SftExample],
    tokenizer: TextTokenizer,
    eos_id: int,
    max_length: int,
    *,
    packing: bool,
    report: SftReport,
) -> list[Sample]:
    """Tokenized (and optionally packed) training sequences; the counts go into `report`."""
    sequences: list[tuple[list[int], list[int]]] = []
    for example in examples:
        tokenized = tokenize_example(example, tokenizer, eos_id, max_length)
        if tokenized is None:
            report.dropped_too_long += 1
            continue
        ids, labels, truncated = tokenized
        report.truncated += truncated
        sequences.append((ids, labels))
    if not sequences:
        raise UserError(
            f"data: every SFT prompt is longer than block_size={max_length} tokens; raise block_size"
        )
    if not packing:
        report.sequences = len(sequences)
        return [Sample(_array(ids), _array(labels)) for ids, labels in sequences]
    packed = pack_sequences(sequences, max_length)
    report.sequences = len(packed)
    return [Sample(_array(ids), _array(labels), _array(positions)) for ids, labels, positions in packed]


def _array(values: list[int]) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)
