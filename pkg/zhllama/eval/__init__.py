"""Evaluation: per-character perplexity, C-Eval/CMMLU-style exams and held-out generation tasks, into one report.

Generation itself (the generate stage, `ctl chat`, the paper's decoding) is zhllama.generate.
"""

from zhllama.eval.exams import Question, Subject, SubjectScore, exam_prompt, read_exam_csv, read_exam_dir, score_subject
from zhllama.eval.perplexity import PerplexityResult, per_char_perplexity, read_documents
from zhllama.eval.scoring import score_choices
from zhllama.eval.stage import run_eval

__all__ = [
    "PerplexityResult",
    "Question",
    "Subject",
    "SubjectScore",
    "exam_prompt",
    "per_char_perplexity",
    "read_documents",
    "read_exam_csv",
    "read_exam_dir",
    "run_eval",
    "score_choices",
    "score_subject",
]
