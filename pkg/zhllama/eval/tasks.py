"""Held-out generation tasks: ask each instruction, compare the model's answer with the reference answer.

A task file is Alpaca JSONL (instruction, input, output) whose records also name a `metric`:
  accuracy          classification: the prediction is the first of the task's labels (its distinct reference
                    outputs) that the answer mentions; an answer that mentions none is wrong
  segmentation_f1   word segmentation: the answer and the reference split on "/" or whitespace (either
                    separator), words matched by their character span against the reference words (the SIGHAN
                    bakeoff's word F1)
An answer is the first non-empty line the model writes (every reference answer is one line), and decoding stops
there: a model that goes on to a second line or a new "### Instruction:" is scored on what it answered, at the
cost of that line only. Answers are decoded greedily, so a score is a property of the model and the prompt, not
of a sampling seed; the budget is the longest reference answer plus a margin, for a model that never ends a line.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList

from zhllama.errors import UserError
from zhllama.generate.decoding import DecodingSettings, generate
from zhllama.models.loading import encode, model_device
from zhllama.prompts import alpaca_prompt
from zhllama.records import LineError, list_files, read_json_lines, string_fields

METRICS = ("accuracy", "segmentation_f1")
ANSWER_MARGIN_TOKENS = 8
BATCH_SIZE = 8
SHOWN_EXAMPLES = 5
WORD_BOUNDARY = re.compile(r"[\s/]+")
LINE_ENDED = re.compile(r"\S[^\n]*\n")
"""A non-empty line and its end: where an answer is complete."""

Progress = Callable[[Iterable[Any]], Iterable[Any]]


@dataclass(frozen=True)
class TaskExample:
    instruction: str
    input: str
    output: str
    metric: str


def read_task_file(path: Path) -> list[TaskExample]:
    """The examples of a task: one JSONL file, or a directory holding exactly one; every record has one metric."""
    files = list_files([path], (".jsonl",), "task")
    if len(files) != 1:
        raise UserError(f"task {path}: expected one .jsonl file in the directory, found {len(files)}; "
                        "put each task in a directory of its own")
    examples: list[TaskExample] = []
    for where, record in read_json_lines(files[0]):
        instruction, output, metric = string_fields(record, where, "instruction", "output", "metric")
        if metric not in METRICS:
            raise LineError(where, f"metric {metric!r} is unknown", f"use one of {', '.join(METRICS)}")
        if examples and metric != examples[0].metric:
            raise LineError(where, f"metric {metric!r} differs from the file's first record ({examples[0].metric!r})",
                            "put each metric in a task file of its own")
        examples.append(TaskExample(instruction, str(record.get("input") or ""), output, metric))
    if not examples:
        raise UserError(f"task {path}: no records; a task file is JSONL with instruction, input, output, metric")
    return examples


def task_prompt(example: TaskExample, instruction_model: bool) -> str:
    """The Alpaca prompt for instruction-tuned models, else the instruction and input as plain lines."""
    if instruction_model:
        return alpaca_prompt(example.instruction, example.input)
    return f"{example.instruction}\n{example.input}\n" if example.input else f"{example.instruction}\n"


def first_line(answer: str) -> str:
    """What the model answered: its first non-empty line, stripped ("" when it wrote only blank lines)."""
    return next((line.strip() for line in answer.splitlines() if line.strip()), "")


def predicted_label(answer: str, labels: Sequence[str]) -> str | None:
    """The label the answer's first line mentions first (the longest one when several start at the same place)."""
    answer = first_line(answer)
    found = [(answer.find(label), -len(label), label) for label in labels if label in answer]
    return min(found)[2] if found else None


def word_spans(words: Sequence[str]) -> set[tuple[int, int, str]]:
    spans, start = set(), 0
    for word in words:
        spans.add((start, start + len(word), word))
        start += len(word)
    return spans


def segmented_words(line: str) -> list[str]:
    return [word for word in WORD_BOUNDARY.split(line) if word]


def segmentation_counts(reference: str, answer: str) -> tuple[int, int, int]:
    """(words right, words predicted, words in the reference); a word is right when its span and text match."""
    predicted = segmented_words(first_line(answer))
    gold = segmented_words(reference)
    return len(word_spans(gold) & word_spans(predicted)), len(predicted), len(gold)


class FirstLineEnded(StoppingCriteria):
    """Done, row by row, once the generated text holds a complete non-empty line (what `first_line` reads)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, prompt_width: int) -> None:
        self.tokenizer = tokenizer
        self.prompt_width = prompt_width

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        generated = self.tokenizer.batch_decode(input_ids[:, self.prompt_width :], skip_special_tokens=True)
        return torch.tensor([LINE_ENDED.search(text) is not None for text in generated], device=input_ids.device)


@torch.no_grad()
def greedy_answers(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], max_new_tokens: int,
    progress: Progress = lambda batches: batches,
) -> list[str]:
    """Greedy continuations of `prompts` up to the end of their first non-empty line, BATCH_SIZE at a time,
    left-padded; similar lengths share a batch."""
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    device = model_device(model)
    encoded = [encode(tokenizer, prompt) for prompt in prompts]
    order = sorted(range(len(prompts)), key=lambda index: len(encoded[index]))
    batches = [order[i : i + BATCH_SIZE] for i in range(0, len(order), BATCH_SIZE)]
    answers: dict[int, str] = {}
    for batch in progress(batches):
        width = max(len(encoded[index]) for index in batch)
        input_ids = torch.tensor([[pad] * (width - len(encoded[i])) + encoded[i] for i in batch], device=device)
        attention = torch.tensor([[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in batch],
                                 device=device)
        output = model.generate(  # type: ignore[operator]
            input_ids=input_ids, attention_mask=attention, max_new_tokens=max_new_tokens, do_sample=False,
            eos_token_id=eos, pad_token_id=pad,
            stopping_criteria=StoppingCriteriaList([FirstLineEnded(tokenizer, width)]),
        )
        answers.update(zip(batch, tokenizer.batch_decode(output[:, width:], skip_special_tokens=True), strict=True))
    return [answers[index] for index in range(len(prompts))]


def score_task(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[TaskExample],
    metric: str,
    instruction_model: bool,
    max_new_tokens: int,
    progress: Progress = lambda batches: batches,
) -> dict[str, Any]:
    """The task's score and how it was obtained: the exact prompt of the first example, counts, a few answers."""
    if metric not in METRICS:
        raise UserError(f"task metric {metric!r} is unknown; use one of {', '.join(METRICS)}")
    if not examples:
        raise UserError("a task needs at least one example")
    longest = max(len(tokenizer(e.output, add_special_tokens=False)["input_ids"]) for e in examples)
    budget = min(max_new_tokens, longest + ANSWER_MARGIN_TOKENS)
    prompts = [task_prompt(e, instruction_model) for e in examples]
    answers = greedy_answers(model, tokenizer, prompts, budget, progress)
    result: dict[str, Any] = {
        "metric": metric,
        "examples": len(examples),
        "template": "alpaca" if instruction_model else "plain",
        "prompt": prompts[0],
        "decoding": {"greedy": True, "max_new_tokens": budget},
        "answers": [{"input": e.input, "expected": e.output, "answer": a}
                    for e, a in zip(examples[:SHOWN_EXAMPLES], answers, strict=False)],
    }
    if metric == "accuracy":
        labels = sorted({e.output for e in examples})
        predictions = [predicted_label(a, labels) for a in answers]
        correct = sum(p == e.output for p, e in zip(predictions, examples, strict=True))
        result.update(score=correct / len(examples), correct=correct, labels=labels,
                      unanswered=sum(p is None for p in predictions))
        return result
    right = predicted_words = gold_words = 0
    for example, answer in zip(examples, answers, strict=True):
        counts = segmentation_counts(example.output, answer)
        right, predicted_words, gold_words = right + counts[0], predicted_words + counts[1], gold_words + counts[2]
    precision = right / predicted_words if predicted_words else 0.0
    recall = right / gold_words
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    result.update(score=f1, precision=precision, recall=recall, words_right=right,
                  words_predicted=predicted_words, words_reference=gold_words)
    return result


def sample_generations(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    instructions: Sequence[str],
    instruction_model: bool,
    settings: DecodingSettings,
    seed: int,
) -> dict[str, Any]:
    """Answers to `instructions` with `settings` (the paper's sampling), seeded so a re-run reproduces them."""
    torch.manual_seed(seed)
    generations = []
    for instruction in instructions:
        prompt = alpaca_prompt(instruction) if instruction_model else instruction
        generations.append({"instruction": instruction, "prompt": prompt,
                            "output": generate(model, tokenizer, prompt, settings)})
    return {"decoding": asdict(settings), "seed": seed, "generations": generations}
