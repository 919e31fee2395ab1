from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerFast

from tests.eval.eval_fixtures import EVAL_LLAMA, EXAM_DIR
from tests.fixtures.tiny_llama import save_model, scripted_llama
from zhllama.errors import UserError
from zhllama.eval.stage import run_eval
from zhllama.run import RunContext
from zhllama.spec.models import EvalSpec


def context(spec: EvalSpec, tmp_path: Path) -> RunContext:
    return RunContext.create(spec, workdir=tmp_path / "work")


def test_run_eval_writes_the_report(tmp_path: Path, chars: PreTrainedTokenizerFast) -> None:
    model_dir = save_model(scripted_llama(chars, {"B": 2.0, "A": 1.0}, **EVAL_LLAMA), chars, tmp_path / "model")
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
    assert (ppl["characters"], ppl["tokens"], ppl["documents"], ppl["language"]) == (12, 12, 2, "zh")
    assert report["harness"] == f"lm-eval {importlib.metadata.version('lm-eval')}"
    assert [(exam["benchmark"], exam["shots"]) for exam in report["exams"]] == [("CMMLU", 0), ("CMMLU", 5)]
    for exam in report["exams"]:
        subjects = exam["subjects"]
        # the scripted model prefers B, then A: every prediction is B
        assert subjects["cmmlu_chinese_history"] == {"accuracy": 3 / 6, "correct": 3, "total": 6}
        assert subjects["cmmlu_agronomy"] == {"accuracy": 1 / 6, "correct": 1, "total": 6}
        assert exam["average_accuracy"] == pytest.approx((3 / 6 + 1 / 6) / 2)
    lines = (ctx.output_dir("eval") / "questions.jsonl").read_text(encoding="utf-8").splitlines()
    questions = [json.loads(line) for line in lines]
    assert len(questions) == 2 * 12 and {q["prediction"] for q in questions} == {"B"}
    first = questions[0]
    assert (first["source"], first["task"], first["shots"], first["doc_id"], first["answer"]) == (
        f"file://{EXAM_DIR}", "cmmlu_agronomy", 0, 0, "D")
    assert first["loglikelihoods"][1] == max(first["loglikelihoods"]) and first["correct"] is False
    markdown = (ctx.output_dir("eval") / "report.md").read_text(encoding="utf-8")
    assert f"| file://{heldout} | Chinese | 12 | 12 | 1.000 |" in markdown
    assert "| cmmlu_chinese_history | 50.00% | 3 | 6 |" in markdown
    assert f"## CMMLU (file://{EXAM_DIR}), 5-shot: average accuracy 33.33%" in markdown


def test_run_eval_rejects_a_bad_exam_before_loading(tmp_path: Path) -> None:
    for split in ("dev", "test"):
        (tmp_path / "exam" / split).mkdir(parents=True)
        (tmp_path / "exam" / split / "international_law.csv").write_text(",Question,A,B,C,Answer\n", encoding="utf-8")
    spec = EvalSpec(
        run_id="eval-test",
        store=f"file://{tmp_path}/store",
        model=f"file://{tmp_path}/no-model",
        heldout=[],
        exams=[f"file://{tmp_path}/exam"],
    )
    # the model does not exist: the CSV must fail first, naming the header the harness's task needs
    with pytest.raises(UserError, match=r"law\.csv:1: header ,Question,A,B,C,Answer lacks D; CMMLU CSVs need"):
        run_eval(context(spec, tmp_path))
