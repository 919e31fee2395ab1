"""Evaluation (per-character perplexity, C-Eval/CMMLU-style exams) and generation (batch and chat)."""

from zhllama.eval.exams import Question, Subject, SubjectScore, exam_prompt, read_exam_csv, read_exam_dir, score_subject
from zhllama.eval.generation import (
    PAPER_DECODING,
    DecodingSettings,
    chat,
    chat_loop,
    decoding_settings,
    generate,
    read_prompts,
)
from zhllama.eval.loading import load_causal_lm, load_spec_model
from zhllama.eval.perplexity import PerplexityResult, per_char_perplexity, read_documents
from zhllama.eval.scoring import score_choices
from zhllama.eval.stage import run_eval, run_generate

__all__ = [
    "PAPER_DECODING",
    "DecodingSettings",
    "PerplexityResult",
    "Question",
    "Subject",
    "SubjectScore",
    "chat",
    "chat_loop",
    "decoding_settings",
    "exam_prompt",
    "generate",
    "load_causal_lm",
    "load_spec_model",
    "per_char_perplexity",
    "read_documents",
    "read_exam_csv",
    "read_exam_dir",
    "read_prompts",
    "run_eval",
    "run_generate",
    "score_choices",
    "score_subject",
]
