"""Exams through lm-evaluation-harness (`pip install 'zhllama[eval]'`): the one module that imports `lm_eval`.

The model the eval stage loaded (base, adapters, resized vocabulary, any dtype) goes to the harness as an `HFLM`
instance, so a score is the harness's own loglikelihood scoring of exactly that model. Every question's four
log-likelihoods come back (`log_samples`), so a score can be traced to a question and compared with anyone's run.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from zhllama.errors import UserError
from zhllama.eval.exams import LETTERS, ExamSubject, task_config, write_task_file

HARNESS = "lm-eval"


@dataclass(frozen=True)
class SubjectScore:
    task: str
    correct: int
    total: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.total


@dataclass(frozen=True)
class ExamRun:
    """One exam directory at one shot count: per-subject scores and every question."""

    shots: int
    subjects: list[SubjectScore]
    questions: list[dict[str, Any]]
    """task, shots, doc_id, id, loglikelihoods (A-D), prediction, answer, correct."""


def harness_version() -> str:
    """The installed harness's version; a missing harness is a one-line error saying how to install it."""
    if importlib.util.find_spec("lm_eval") is None:
        raise UserError("eval: exams run on lm-evaluation-harness, which is not installed; "
                        "pip install 'zhllama[eval]' (make setup installs it), or drop `exams`")
    return importlib.metadata.version(HARNESS)


class TaskDefinitions:
    """The harness's registered tasks: which names exist and where each one's YAML definition is."""

    def __init__(self) -> None:
        harness_version()
        from lm_eval.tasks import TaskManager

        self.manager = TaskManager()
        self.names = set(self.manager.all_subtasks)

    def definition(self, task: str) -> Path:
        entry = self.manager.task_index[task]
        assert entry.yaml_path is not None, f"{task} is a Python task, not a YAML definition"
        return Path(entry.yaml_path)


def run_exam(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    subjects: Sequence[ExamSubject],
    shots: int,
    definitions: TaskDefinitions,
    scratch: Path,
    batch_size: int,
) -> ExamRun:
    """Every subject as the harness's own task at `shots` shots, on the subjects' CSVs."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    task_dir = scratch / "lm_eval_tasks"
    task_dir.mkdir(parents=True, exist_ok=True)
    task_files = [str(write_task_file(task_config(subject, definitions.definition(subject.task),
                                                  cache_dir=scratch / "datasets"), task_dir))
                  for subject in subjects]
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    # The tasks read the CSVs with the csv builder that ships with `datasets`: nothing is fetched from a hub.
    with _quiet_harness():
        results = lm_eval.simple_evaluate(model=lm, tasks=task_files, num_fewshot=shots, log_samples=True,
                                          bootstrap_iters=0, task_manager=definitions.manager)
    assert results is not None  # only None on non-zero ranks of a distributed harness run
    questions = [question_record(subject, shots, sample) for subject in subjects
                 for sample in sorted(results["samples"][subject.task], key=lambda sample: sample["doc_id"])]
    scores = [SubjectScore(subject.task, sum(q["correct"] for q in questions if q["task"] == subject.task),
                           subject.questions) for subject in subjects]
    for subject, score in zip(subjects, scores, strict=True):
        harness_accuracy = results["results"][subject.task]["acc,none"]
        assert abs(harness_accuracy - score.accuracy) < 1e-9, (subject.task, harness_accuracy, score.accuracy)
    return ExamRun(shots, scores, questions)


def question_record(subject: ExamSubject, shots: int, sample: dict[str, Any]) -> dict[str, Any]:
    """One question as the harness scored it: a choice's log-likelihood is the first of its (loglik, greedy)."""
    loglikelihoods = [float(response[0]) for response in sample["filtered_resps"]]
    prediction = LETTERS[max(range(len(LETTERS)), key=loglikelihoods.__getitem__)]
    doc = sample["doc"]
    answer = str(doc[subject.benchmark.answer_column]).strip()
    return {
        "task": subject.task,
        "shots": shots,
        "doc_id": sample["doc_id"],
        # C-Eval's rows carry an id; CMMLU's leading unnamed column is its row number
        "id": doc.get("id", doc.get("Unnamed: 0", sample["doc_id"])),
        "loglikelihoods": loglikelihoods,
        "prediction": prediction,
        "answer": answer,
        "correct": prediction == answer,
    }


class _quiet_harness:
    """The harness logs every request, and warns that it was handed a model object, which is the point here."""

    def __enter__(self) -> None:
        self.logger = logging.getLogger("lm_eval")
        self.level = self.logger.level
        self.logger.setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        self.logger.setLevel(self.level)
