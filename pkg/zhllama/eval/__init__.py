"""Evaluation: per-character perplexity, C-Eval/CMMLU through lm-evaluation-harness and held-out generation tasks,
into one report.

Generation itself (the generate stage, `ctl chat`, the paper's decoding) is zhllama.generate.
"""

from zhllama.eval.exams import CEVAL, CMMLU, ExamSubject, read_exam_dir
from zhllama.eval.perplexity import PerplexityResult, per_char_perplexity, read_documents
from zhllama.eval.stage import run_eval

__all__ = [
    "CEVAL",
    "CMMLU",
    "ExamSubject",
    "PerplexityResult",
    "per_char_perplexity",
    "read_documents",
    "read_exam_dir",
    "run_eval",
]
