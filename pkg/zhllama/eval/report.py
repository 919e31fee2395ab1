"""The eval report: report.json for machines, report.md for people."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zhllama.eval.exams import SubjectScore
from zhllama.eval.perplexity import LANGUAGES, PerplexityResult


@dataclass(frozen=True)
class ExamResult:
    source: str
    shots: int
    subjects: list[SubjectScore]

    @property
    def average(self) -> float:
        """Mean of the per-subject accuracies (C-Eval and CMMLU average subjects, not questions)."""
        return sum(score.accuracy for score in self.subjects) / len(self.subjects)


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
            "exams": [
                {
                    "source": exam.source,
                    "shots": exam.shots,
                    "average_accuracy": exam.average,
                    "subjects": {
                        score.subject: {
                            "accuracy": score.accuracy,
                            "correct": score.correct,
                            "total": score.total,
                            "shots_used": score.shots_used,
                        }
                        for score in exam.subjects
                    },
                }
                for exam in self.exams
            ],
            "tasks": self.tasks,
            "samples": self.samples,
        }


def write_report(report: EvalReport, directory: Path) -> None:
    """Write report.json and report.md into `directory`."""
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
            f"## {exam.source}, {exam.shots}-shot: average accuracy {exam.average:.2%}",
            "",
            "| subject | accuracy | correct | questions | shots used |",
            "|---|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {s.subject} | {s.accuracy:.2%} | {s.correct} | {s.total} | {s.shots_used} |" for s in exam.subjects
        ]
        lines.append("")
    return "\n".join(lines)
