"""The eval report: report.json for machines, report.md for people."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zhllama.eval.harness import ExamRun
from zhllama.eval.perplexity import LANGUAGES, PerplexityResult

QUESTIONS_FILE = "questions.jsonl"
"""Every exam question as the harness scored it, one JSON line each (harness.question_record)."""


@dataclass(frozen=True)
class ExamResult:
    source: str
    benchmark: str
    run: ExamRun

    @property
    def average(self) -> float:
        """Mean of the per-subject accuracies (C-Eval and CMMLU average subjects, not questions)."""
        return sum(score.accuracy for score in self.run.subjects) / len(self.run.subjects)


@dataclass(frozen=True)
class EvalReport:
    model: str
    adapters: list[str]
    instruction_model: bool
    window: int
    stride: int
    perplexity: dict[str, PerplexityResult] = field(default_factory=dict)
    """Held-out source URI -> result."""
    languages: dict[str, str] = field(default_factory=dict)
    """Held-out source URI -> text_language's label (zh, en, other), written beside each result."""
    exams: list[ExamResult] = field(default_factory=list)
    harness: str | None = None
    """The exam harness and its version (`lm-eval 0.4.13`), when the report has exams."""
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Task source URI -> score_task's result (metric, score, the exact prompt, answers)."""
    samples: dict[str, Any] | None = None
    """sample_generations' result: decoding settings and the generations."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "adapters": self.adapters,
            "instruction_model": self.instruction_model,
            "perplexity": {
                "window": self.window,
                "stride": self.stride,
                "sources": {
                    source: {**result.as_dict(), **({"language": self.languages[source]}
                                                    if source in self.languages else {})}
                    for source, result in self.perplexity.items()
                },
            },
            "harness": self.harness,
            "exams": [
                {
                    "source": exam.source,
                    "benchmark": exam.benchmark,
                    "shots": exam.run.shots,
                    "average_accuracy": exam.average,
                    "subjects": {
                        score.task: {"accuracy": score.accuracy, "correct": score.correct, "total": score.total}
                        for score in exam.run.subjects
                    },
                    "questions": QUESTIONS_FILE,
                }
                for exam in self.exams
            ],
            "tasks": self.tasks,
            "samples": self.samples,
        }


def write_report(report: EvalReport, directory: Path) -> None:
    """Write report.json, report.md and (with exams) the per-question file into `directory`."""
    if report.exams:
        lines = (json.dumps({"source": exam.source, **question}, ensure_ascii=False) + "\n"
                 for exam in report.exams for question in exam.run.questions)
        (directory / QUESTIONS_FILE).write_text("".join(lines), encoding="utf-8")
    (directory / "report.json").write_text(
        json.dumps(report.as_dict(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
    (directory / "report.md").write_text(render_markdown(report), encoding="utf-8")


def render_markdown(report: EvalReport) -> str:
    adapters = ", ".join(report.adapters) or "none"
    template = "Alpaca" if report.instruction_model else "plain"
    lines = [f"# Evaluation of {report.model}", "", f"Adapters: {adapters}. Prompts: {template}.", ""]
    if report.perplexity:
        lines += [
            f"## Held-out perplexity (window {report.window}, stride {report.stride})",
            "",
            "| held-out text | language | characters | tokens | tokens/char | ppl per char | ppl per token |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {source} | {LANGUAGES.get(report.languages.get(source, ''), '–')} | {r.characters} | {r.tokens} | "
            f"{r.tokens_per_char:.3f} | {r.per_char:.3f} | {r.per_token:.3f} |"
            for source, r in report.perplexity.items()
        ]
        lines.append("")
    for exam in report.exams:
        lines += [
            f"## {exam.benchmark} ({exam.source}), {exam.run.shots}-shot: average accuracy {exam.average:.2%}",
            "",
            f"Scored by {report.harness} with its own task definitions; every question is in {QUESTIONS_FILE}.",
            "",
            "| task | accuracy | correct | questions |",
            "|---|---:|---:|---:|",
        ]
        lines += [f"| {s.task} | {s.accuracy:.2%} | {s.correct} | {s.total} |" for s in exam.run.subjects]
        lines.append("")
    return "\n".join(lines)
