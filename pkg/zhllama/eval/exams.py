"""Multiple-choice exams in the C-Eval / CMMLU layout, scored by the next-token probability of the letters.

An exam directory holds `dev/<subject>.csv` (few-shot examples) and `test/<subject>.csv` (scored), or `val/`
instead of `test/` (C-Eval keeps its test answers private, so its val split is the one that can be scored).
C-Eval names its files `<subject>_dev.csv`; the split suffix is dropped. An optional `subject_mapping.json`
(C-Eval's file: stem -> [English, Chinese, category], or stem -> name) gives the subject name used in the prompt.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from zhllama.errors import UserError
from zhllama.eval.scoring import score_choices
from zhllama.models.loading import context_length, encode
from zhllama.prompts import alpaca_prompt

LETTERS = ("A", "B", "C", "D")
COLUMNS = ("Question", *LETTERS, "Answer")
SUBJECT_MAPPING = "subject_mapping.json"


@dataclass(frozen=True)
class Question:
    question: str
    options: tuple[str, str, str, str]
    answer: str


@dataclass(frozen=True)
class Subject:
    name: str
    """The file stem (e.g. `agronomy`)."""
    title: str
    """The name the prompt uses (e.g. 农学)."""
    dev: list[Question]
    test: list[Question]


@dataclass(frozen=True)
class SubjectScore:
    subject: str
    shots: int
    shots_used: int
    """Fewest examples any prompt kept: fewer than `shots` when dev is short or prompts hit the context."""
    correct: int
    total: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.total


def read_exam_csv(path: Path) -> list[Question]:
    """Questions of one CSV with the header Question,A,B,C,D,Answer (any case; extra columns are ignored)."""
    with path.open(encoding="utf-8-sig", newline="") as file:
        rows = csv.reader(file)
        header = next(rows, None)
        if header is None:
            raise UserError(f"{path}: empty file; exam CSVs need the header {','.join(COLUMNS)}")
        found = {name.strip().casefold(): index for index, name in enumerate(header)}
        missing = [column for column in COLUMNS if column.casefold() not in found]
        if missing:
            raise UserError(
                f"{path}: missing column {', '.join(missing)} (header found: {','.join(header)}); "
                f"exam CSVs need the header {','.join(COLUMNS)}"
            )
        index = [found[column.casefold()] for column in COLUMNS]
        questions = []
        for row in rows:
            if not any(cell.strip() for cell in row):
                continue
            line = rows.line_num
            if len(row) != len(header):
                raise UserError(f"{path}:{line}: {len(row)} fields, the header has {len(header)}")
            question, a, b, c, d, answer = (row[i].strip() for i in index)
            if answer not in LETTERS:
                raise UserError(f"{path}:{line}: Answer {answer!r} is not one of A, B, C, D")
            questions.append(Question(question, (a, b, c, d), answer))
    if not questions:
        raise UserError(f"{path}: no questions below the header")
    return questions


def read_exam_dir(path: Path) -> list[Subject]:
    """Every subject of an exam directory, sorted by name."""
    scored_dir = path / "val" if (path / "val").is_dir() else path / "test"
    if not scored_dir.is_dir():
        raise UserError(f"{path}: an exam directory needs test/<subject>.csv (or val/) and dev/<subject>.csv")
    titles = _subject_titles(path / SUBJECT_MAPPING)
    subjects = []
    for test_file in sorted(scored_dir.glob("*.csv")):
        name = test_file.stem.removesuffix(f"_{scored_dir.name}")
        dev_files = [path / "dev" / f"{name}.csv", path / "dev" / f"{name}_dev.csv"]
        dev_file = next((file for file in dev_files if file.is_file()), None)
        dev = read_exam_csv(dev_file) if dev_file else []
        subjects.append(Subject(name, titles.get(name, name), dev, read_exam_csv(test_file)))
    if not subjects:
        raise UserError(f"{scored_dir}: no <subject>.csv files")
    return subjects


def _subject_titles(mapping_file: Path) -> dict[str, str]:
    if not mapping_file.is_file():
        return {}
    mapping = json.loads(mapping_file.read_text(encoding="utf-8"))
    return {stem: value if isinstance(value, str) else value[1] for stem, value in mapping.items()}


def format_question(question: Question, answer: str | None) -> str:
    options = "".join(f"\n{letter}. {option}" for letter, option in zip(LETTERS, question.options, strict=True))
    return f"{question.question}{options}\n答案：{answer}\n\n" if answer else f"{question.question}{options}"


def exam_prompt(title: str, examples: Sequence[Question], question: Question, instruction_model: bool) -> str:
    """The paper's exam prompt: header, solved examples, then the question, ending where the letter goes.

    Base models continue "答案："; instruction models get the whole exam as an Alpaca instruction that asks
    for the answer (as in Chinese-LLaMA-Alpaca's C-Eval script) and answer after "### Response:".
    """
    header = f"以下是中国关于{title}考试的单项选择题，请选出其中的正确答案。\n\n"
    solved = "".join(format_question(example, example.answer) for example in examples)
    asked = format_question(question, None)
    if instruction_model:
        return alpaca_prompt(f"{header}{solved}{asked}\n答案是什么？")
    return f"{header}{solved}{asked}\n答案："


def fitted_prompt(
    tokenizer: PreTrainedTokenizerBase,
    max_tokens: int,
    subject: Subject,
    question: Question,
    shots: int,
    instruction_model: bool,
) -> tuple[str, int]:
    """The prompt with up to `shots` dev examples, dropping examples from the end until it fits `max_tokens`."""
    examples = subject.dev[:shots]
    while True:
        prompt = exam_prompt(subject.title, examples, question, instruction_model)
        if not examples or len(encode(tokenizer, prompt)) < max_tokens:
            return prompt, len(examples)
        examples = examples[:-1]


def score_subject(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    subject: Subject,
    shots: int,
    instruction_model: bool,
    progress: Callable[[Iterable[Question]], Iterable[Question]] = lambda items: items,
) -> SubjectScore:
    """Accuracy on the subject's scored split: the predicted letter is the likeliest of A/B/C/D."""
    if shots and not subject.dev:
        raise UserError(f"subject {subject.name}: {shots}-shot needs dev/{subject.name}.csv with examples")
    correct, shots_used = 0, shots
    for question in progress(subject.test):
        prompt, used = fitted_prompt(tokenizer, context_length(model), subject, question, shots, instruction_model)
        shots_used = min(shots_used, used)
        scores = score_choices(model, tokenizer, prompt, list(LETTERS))
        predicted = LETTERS[max(range(len(LETTERS)), key=scores.__getitem__)]
        correct += predicted == question.answer
    return SubjectScore(subject.name, shots, shots_used, correct, len(subject.test))
