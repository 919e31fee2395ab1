from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerFast

from tests.eval.tiny_lm import EXAM_DIR, save_model, scripted_llama
from zhllama.errors import UserError
from zhllama.eval.stage import run_eval, run_generate
from zhllama.runs import RunContext
from zhllama.spec.models import EvalSpec, GenerateSpec


def context(spec: EvalSpec | GenerateSpec, tmp_path: Path) -> RunContext:
    return RunContext.create(spec, workdir=tmp_path / "work")


def test_run_eval_writes_the_report(tmp_path: Path, chars: PreTrainedTokenizerFast) -> None:
    model_dir = save_model(scripted_llama(chars, {"B": 2.0, "A": 1.0}), chars, tmp_path / "model")
    heldout = tmp_path / "heldout.txt"
    heldout.write_text("人民日报社论\n新华社北京电\n", encoding="utf-8")
    spec = EvalSpec(
        run_id="eval-test",
        store=f"file://{tmp_path}/store",
        model=f"file://{model_dir}",
        heldout=[f"file://{heldout}"],
        exams=[f"file://{EXAM_DIR}"],
        window=8,
        stride=4,
    )
    ctx = context(spec, tmp_path)
    run_eval(ctx)

    assert ctx.output_complete("eval")
    report = json.loads((ctx.output_dir("eval") / "report.json").read_text(encoding="utf-8"))
    ppl = report["perplexity"]["sources"][f"file://{heldout}"]
    assert (ppl["characters"], ppl["tokens"], ppl["documents"]) == (12, 12, 2)
    assert [exam["shots"] for exam in report["exams"]] == [0, 5]
    for exam in report["exams"]:
        subjects = exam["subjects"]
        assert subjects["chinese_history"] == {"accuracy": 0.25, "correct": 1, "total": 4, "shots_used": exam["shots"]}
        assert subjects["agronomy"]["accuracy"] == 0.0
        assert exam["average_accuracy"] == pytest.approx(0.125)
    markdown = (ctx.output_dir("eval") / "report.md").read_text(encoding="utf-8")
    assert "| chinese_history | 25.00% | 1 | 4 | 5 |" in markdown and "5-shot: average accuracy 12.50%" in markdown


def test_run_eval_rejects_a_bad_exam_before_loading(tmp_path: Path) -> None:
    (tmp_path / "exam" / "test").mkdir(parents=True)
    (tmp_path / "exam" / "test" / "law.csv").write_text("Question,A,B,C,Answer\n", encoding="utf-8")
    spec = EvalSpec(
        run_id="eval-test",
        store=f"file://{tmp_path}/store",
        model=f"file://{tmp_path}/no-model",
        heldout=[],
        exams=[f"file://{tmp_path}/exam"],
    )
    with pytest.raises(UserError, match="law.csv: missing column D"):
        run_eval(context(spec, tmp_path))


def test_run_generate_writes_generations(tmp_path: Path, tiny_model_dir: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"instruction": "翻译", "input": "秦朝"}\n', encoding="utf-8")
    spec = GenerateSpec(
        run_id="gen-test",
        store=f"file://{tmp_path}/store",
        model=f"file://{tiny_model_dir}",
        prompts=["介绍唐朝"],
        prompts_file=f"file://{prompts}",
        max_new_tokens=6,
    )
    ctx = context(spec, tmp_path)
    run_generate(ctx)
    assert ctx.output_complete("generations")
    lines = (ctx.output_dir("generations") / "generations.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["instruction"] for r in records] == ["介绍唐朝", "翻译"]
    assert records[1]["prompt"].endswith("### Instruction:\n翻译\n秦朝\n\n### Response:\n")
    assert all(r["output"] for r in records)
    config = json.loads((ctx.output_dir("generations") / "generation_config.json").read_text())
    assert config == {"temperature": 0.2, "top_k": 40, "top_p": 0.9, "repetition_penalty": 1.1, "max_new_tokens": 6}
