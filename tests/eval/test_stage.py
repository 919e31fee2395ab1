from __future__ import annotations

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
    assert [exam["shots"] for exam in report["exams"]] == [0, 5]
    for exam in report["exams"]:
        subjects = exam["subjects"]
        assert subjects["chinese_history"] == {"accuracy": 0.25, "correct": 1, "total": 4, "shots_used": exam["shots"]}
        assert subjects["agronomy"]["accuracy"] == 0.0
        assert exam["average_accuracy"] == pytest.approx(0.125)
    markdown = (ctx.output_dir("eval") / "report.md").read_text(encoding="utf-8")
    assert f"| file://{heldout} | Chinese | 12 | 12 | 1.000 |" in markdown
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
