"""The eval stage: inputs from the run context, the plain functions, the report published."""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, cast

from zhllama.errors import UserError
from zhllama.eval.exams import read_exam_dir
from zhllama.eval.harness import HARNESS, TaskDefinitions, harness_version, run_exam
from zhllama.eval.perplexity import per_char_perplexity, read_documents, text_language
from zhllama.eval.report import EvalReport, ExamResult, write_report
from zhllama.eval.tasks import read_task_file, sample_generations, score_task
from zhllama.generate.decoding import PAPER_DECODING
from zhllama.models.loading import context_length, load_spec_model
from zhllama.spec.models import EvalSpec

if TYPE_CHECKING:
    from zhllama.run import RunContext


def run_eval(ctx: RunContext) -> None:
    """Perplexity on each held-out text (per character and per token, labelled by language), accuracy on each
    exam through the harness for every shot count, and the generation tasks."""
    spec = cast(EvalSpec, ctx.spec)
    if spec.stride >= spec.window:
        raise UserError(f"eval: stride {spec.stride} must be smaller than window {spec.window}")
    # Read every input before loading the model, so that a bad CSV fails in seconds, not after the load.
    heldout = {uri: read_documents(ctx.input(uri), spec.max_chars) for uri in spec.heldout}
    definitions = TaskDefinitions() if spec.exams else None
    exams = {uri: read_exam_dir(ctx.input(uri), definitions.names) for uri in spec.exams if definitions}
    tasks = {uri: read_task_file(ctx.input(uri))[: spec.max_task_examples] for uri in spec.tasks}
    model, tokenizer = load_spec_model(ctx, spec)
    window = min(spec.window, context_length(model))
    if spec.stride >= window:
        raise UserError(f"eval: stride {spec.stride} must be smaller than the model's context ({window} tokens)")

    report = EvalReport(spec.model, list(spec.adapters), spec.instruction_model, window, spec.stride,
                        harness=f"{HARNESS} {harness_version()}" if exams else None)
    for uri, documents in heldout.items():
        report.perplexity[uri] = per_char_perplexity(
            model, tokenizer, documents, window, spec.stride, progress=partial(ctx.progress, desc=uri)
        )
        report.languages[uri] = text_language(documents)
    for uri, subjects in exams.items():
        assert definitions is not None
        for shots in spec.shots:
            print(f"{uri}: {len(subjects)} {subjects[0].benchmark.name} subjects, {shots}-shot, "
                  f"{sum(s.questions for s in subjects)} questions", flush=True)
            run = run_exam(model, tokenizer, subjects, shots, definitions, ctx.workdir / "exams",
                           spec.exam_batch_size)
            report.exams.append(ExamResult(uri, subjects[0].benchmark.name, run))
    for uri, examples in tasks.items():
        report.tasks[uri] = score_task(
            model,
            tokenizer,
            examples,
            examples[0].metric,
            spec.instruction_model,
            spec.max_new_tokens,
            progress=partial(ctx.progress, desc=uri),
        )
    if spec.sample_prompts:
        settings = replace(PAPER_DECODING, max_new_tokens=spec.max_new_tokens)
        samples = sample_generations(model, tokenizer, spec.sample_prompts, spec.instruction_model, settings, spec.seed)
        report = replace(report, samples=samples)
    write_report(report, ctx.output_dir("eval"))
    ctx.publish("eval")

