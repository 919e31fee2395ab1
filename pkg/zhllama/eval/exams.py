"""C-Eval and CMMLU through lm-evaluation-harness, with its own task definitions, on local CSVs.

Each subject runs as the harness's own task (`cmmlu_<subject>`, `ceval-valid_<subject>`: its prompt, choices,
few-shot sampler and metric); only where the data comes from changes. The task is a YAML file that includes the
harness's definition and points `dataset_path` at the CSVs (`datasets`' csv builder), which is also how anyone
reproduces a score with `lm_eval run --tasks <that file>`. Nothing is fetched from a hub.

An exam directory has the layout of the benchmark's own download:
  CMMLU   dev/<subject>.csv and test/<subject>.csv, header `,Question,A,B,C,D,Answer`; test is scored
  C-Eval  dev/<subject>_dev.csv and val/<subject>_val.csv, header `id,question,A,B,C,D,answer,explanation`;
          val is scored (C-Eval keeps its test answers private)
A directory with val/ is C-Eval, else CMMLU. The `_<split>` suffix is optional for both.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from zhllama.errors import UserError

LETTERS = ("A", "B", "C", "D")


@dataclass(frozen=True)
class Benchmark:
    name: str
    task_prefix: str
    """The harness's task names are this prefix and the subject (`cmmlu_agronomy`), see `task`."""
    scored_split: str
    """The split scored: its directory name and the harness's split name."""
    question_column: str
    answer_column: str
    header: str
    """The header of the benchmark's own CSVs, for error messages."""

    def task(self, subject: str) -> str:
        return f"{self.task_prefix}{subject}"

    @property
    def columns(self) -> tuple[str, ...]:
        """The columns the harness's prompt template reads (case matters: they are Jinja variable names)."""
        return (self.question_column, *LETTERS, self.answer_column)


CMMLU = Benchmark("CMMLU", "cmmlu_", "test", "Question", "Answer", ",Question,A,B,C,D,Answer")
CEVAL = Benchmark("C-Eval", "ceval-valid_", "val", "question", "answer", "id,question,A,B,C,D,answer,explanation")
FEWSHOT_SPLIT = "dev"
"""Both benchmarks take few-shot examples from dev, in file order (the harness's `first_n` sampler)."""


@dataclass(frozen=True)
class ExamSubject:
    benchmark: Benchmark
    subject: str
    scored: Path
    dev: Path
    questions: int

    @property
    def task(self) -> str:
        return self.benchmark.task(self.subject)


def benchmark_of(path: Path) -> Benchmark:
    if (path / CEVAL.scored_split).is_dir():
        return CEVAL
    if (path / CMMLU.scored_split).is_dir():
        return CMMLU
    raise UserError(f"exams: {path} has neither test/ (CMMLU: dev/<subject>.csv, test/<subject>.csv) nor val/ "
                    "(C-Eval: dev/<subject>_dev.csv, val/<subject>_val.csv); pass a CMMLU or C-Eval download")


def read_exam_dir(path: Path, known_tasks: set[str]) -> list[ExamSubject]:
    """Every subject of an exam directory, sorted, each CSV checked the way the harness will read it."""
    benchmark = benchmark_of(path)
    scored_dir = path / benchmark.scored_split
    subjects = []
    for scored in sorted(scored_dir.glob("*.csv")):
        subject = scored.stem.removesuffix(f"_{benchmark.scored_split}")
        task = benchmark.task(subject)
        if task not in known_tasks:
            raise UserError(f"exams: {scored}: lm-eval has no task {task}; name the file after a {benchmark.name} "
                            f"subject (`lm_eval ls tasks` lists the {benchmark.task_prefix}* tasks)")
        dev = next((file for file in (path / FEWSHOT_SPLIT / f"{subject}.csv",
                                      path / FEWSHOT_SPLIT / f"{subject}_{FEWSHOT_SPLIT}.csv") if file.is_file()), None)
        if dev is None:
            raise UserError(f"exams: {scored} has no few-shot file; add {path}/dev/{subject}.csv "
                            f"(the harness's {task} reads its dev split even at 0-shot)")
        check_exam_csv(dev, benchmark)
        subjects.append(ExamSubject(benchmark, subject, scored, dev, check_exam_csv(scored, benchmark)))
    if not subjects:
        raise UserError(f"exams: {scored_dir} has no <subject>.csv files")
    return subjects


def check_exam_csv(path: Path, benchmark: Benchmark) -> int:
    """The number of questions in one CSV; a header or answer the harness would trip over is a one-line error."""
    with path.open(encoding="utf-8-sig", newline="") as file:
        rows = csv.reader(file)
        header = next(rows, None) or []
        missing = [column for column in benchmark.columns if column not in header]
        if missing:
            raise UserError(f"{path}:1: header {','.join(header) or '(empty)'} lacks {', '.join(missing)}; "
                            f"{benchmark.name} CSVs need the header {benchmark.header} "
                            "(the harness's prompt reads these columns, case included)")
        answer = header.index(benchmark.answer_column)
        questions = 0
        for row in rows:
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise UserError(f"{path}:{rows.line_num}: {len(row)} fields, the header has {len(header)}; "
                                "quote fields that contain commas")
            if row[answer].strip() not in LETTERS:
                raise UserError(f"{path}:{rows.line_num}: {benchmark.answer_column} {row[answer]!r} is not one of "
                                "A, B, C, D")
            questions += 1
    if not questions:
        raise UserError(f"{path}: no questions below the header")
    return questions


def task_config(subject: ExamSubject, definition: Path, cache_dir: Path | None = None) -> dict[str, Any]:
    """The harness task `subject.task` as defined in `definition` (its YAML), reading the subject's CSVs."""
    data_files = {subject.benchmark.scored_split: str(subject.scored), FEWSHOT_SPLIT: str(subject.dev)}
    kwargs: dict[str, Any] = {"data_files": data_files}
    if cache_dir is not None:
        kwargs["cache_dir"] = str(cache_dir)
    return {"include": str(definition), "task": subject.task, "dataset_path": "csv", "dataset_name": None,
            "dataset_kwargs": kwargs}


def write_task_file(config: dict[str, Any], directory: Path) -> Path:
    path = directory / f"{config['task']}.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path
