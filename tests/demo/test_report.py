"""The pipeline report, built from stage outputs written in each stage's format into a real directory store."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest

from zhllama.pipeline import plan
from zhllama.report import write_report
from zhllama.run import run_key
from zhllama.spec import PipelineSpec, StageSpec, resolve_spec
from zhllama.store import ArtifactStore, DirStore

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HELDOUT = "embedded://peoples-daily-heldout-tiny"
SENTIMENT, SEGMENTATION = "embedded://sentiment-heldout", "embedded://segmentation-heldout"
PROMPT = "Below is an instruction.\n\n### Instruction:\n判断下面评论的情感倾向\n很好\n\n### Response:\n"


def publish(store: ArtifactStore, key: str, files: dict[str, str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in files.items():
            (Path(tmp) / name).write_text(text, encoding="utf-8")
        store.publish_dir(Path(tmp), key, progress=False)


def finished(store: ArtifactStore, spec: StageSpec, seconds: int) -> None:
    store.write_json(run_key(spec.run_id, "status.json"), {
        "run_id": spec.run_id, "stage": spec.stage, "state": "Succeeded",
        "started": "2026-01-01T00:00:00+00:00",
        "finished": f"2026-01-01T00:{seconds // 60:02d}:{seconds % 60:02d}+00:00",
    })


def eval_report(ppl: float, sentiment: float, f1: float, sample: str) -> dict[str, Any]:
    """report.json as the eval stage writes it (EvalReport.as_dict plus the tasks and samples keys)."""
    return {
        "model": "m", "adapters": [], "instruction_model": True,
        "perplexity": {"window": 64, "stride": 32, "sources": {HELDOUT: {
            "documents": 10, "characters": 2000, "tokens": 1500, "nll": 1500 * 1.0,
            "ppl_per_char": ppl, "ppl_per_token": 2.7, "tokens_per_char": 0.75}}},
        "exams": [],
        "tasks": {
            SENTIMENT: {"metric": "accuracy", "score": sentiment, "examples": 20, "template": "alpaca",
                        "prompt": PROMPT, "decoding": {"greedy": True, "max_new_tokens": 10},
                        "answers": [{"input": "很好", "expected": "正面",
                                     "answer": "正面" if sentiment > 0.5 else "###"}],
                        "correct": round(sentiment * 20), "labels": ["正面", "负面"], "unanswered": 0},
            SEGMENTATION: {"metric": "segmentation_f1", "score": f1, "examples": 20, "template": "alpaca",
                           "prompt": PROMPT, "decoding": {"greedy": True, "max_new_tokens": 30},
                           "answers": [{"input": "我们要", "expected": "我们 要", "answer": "我们 要"}],
                           "precision": f1, "recall": f1, "words_right": 1, "words_predicted": 2,
                           "words_reference": 2},
        },
        "samples": {"decoding": {"temperature": 0.2, "top_k": 40, "top_p": 0.9, "repetition_penalty": 1.1,
                                 "max_new_tokens": 8}, "seed": 42,
                    "generations": [{"instruction": "介绍北京", "prompt": PROMPT, "output": sample}]},
    }


QUANTIZE_REPORT = {
    "model": "/work/model", "heldout": {"documents": 10, "characters": 2000, "window": 64, "stride": 32},
    "hf": {"ppl_per_char": 12.0, "tokens": 1500}, "llama_cpp": {"available": True, "reason": None},
    "types": [
        {"type": "F16", "file": "model-F16.gguf", "bytes": 2_500_000, "readback": {"ok": True},
         "transformers": {"loaded": True, "top1_agreement": 1.0},
         "llama_cpp": {"loaded": True, "ppl_per_char": 12.0, "delta_pct": 0.0, "tokens_per_second": 300.0}},
        {"type": "Q4_0", "file": "model-Q4_0.gguf", "bytes": 700_000, "readback": {"ok": True},
         "transformers": {"loaded": True, "top1_agreement": 0.9},
         "llama_cpp": {"loaded": True, "ppl_per_char": 12.6, "delta_pct": 5.0, "tokens_per_second": 650.4}},
        {"type": "Q5_0", "file": "model-Q5_0.gguf", "bytes": 800_000, "readback": {"ok": True},
         "transformers": {"loaded": True, "ppl_per_char": 12.3, "delta_pct": 0.5, "top1_agreement": 0.95},
         "llama_cpp": {"loaded": False, "error": "unsupported type"}},
        {"type": "Q4_K", "skipped": "K-quants are made only by llama.cpp's quantizer: not installed"},
    ],
    "transformers_delta_reference": "HF model", "llama_cpp_delta_reference": "F16",
}
TOKENIZER_REPORT = {
    "base": {"path": "tiny", "kind": "bytelevel_bpe", "vocab_size": 49152}, "pieces_added": 700,
    "merged_vocab_size": 49852, "vocab_size": 49853, "heldout": {"lines": 200, "characters": 63000},
    "tokens_per_char": {"base": 1.84, "extended": 0.92}, "checks": [], "samples": [],
}


@pytest.fixture
def pipeline(tmp_path: Path) -> tuple[DirStore, PipelineSpec, list[tuple[str, StageSpec]]]:
    """A finished tiny pipeline's outputs, in the formats the stages write."""
    store = DirStore(tmp_path / "store")
    spec = resolve_spec("pipeline", size="tiny", run_id="demo", values={"store": store.root_uri})
    assert isinstance(spec, PipelineSpec)
    steps = plan(spec)
    evals = {"eval-base": eval_report(40.0, 0.10, 0.20, "base says ###\n```python\nprint(1)\n```"),
             "eval-pretrain": eval_report(24.0, 0.30, 0.25, "pretrain says 北京"),
             "eval-sft": eval_report(22.0, 0.85, 0.70, "北京是中国的首都。")}
    for index, (step, step_spec) in enumerate(steps):
        finished(store, step_spec, 30 + index)
        outputs = run_key(step_spec.run_id, "outputs")
        if step == "tokenizer":
            publish(store, f"{outputs}/tokenizer", {"report.json": json.dumps(TOKENIZER_REPORT)})
        elif step in ("pretrain", "sft"):
            losses = [5.0, 4.0, 3.5] if step == "pretrain" else [2.0, 1.0]
            records = [{"step": 2 * (i + 1), "loss": loss, "lr": 1e-3, "grad_norm": 1.0, "tokens_per_s": 100.0 + i,
                        "samples": 8 * (i + 1), "batch_crc": 1} for i, loss in enumerate(losses)]
            publish(store, run_key(step_spec.run_id, "metrics"),
                    {"metrics.jsonl": "".join(json.dumps(r) + "\n" for r in records)})
            publish(store, f"{outputs}/adapter", {"adapter_config.json": "{}"})
        elif step == "quantize":
            publish(store, f"{outputs}/gguf", {"report.json": json.dumps(QUANTIZE_REPORT)})
        elif step in evals:
            publish(store, f"{outputs}/eval", {"report.json": json.dumps(evals[step], ensure_ascii=False)})
    return store, spec, steps


def read_report(store: DirStore) -> str:
    store.verify("runs/demo/report")
    return (store.path("runs/demo/report") / "report.md").read_text(encoding="utf-8")


def test_report_shows_every_stage_and_the_improvement(pipeline: tuple[DirStore, PipelineSpec, list]) -> None:
    store, spec, steps = pipeline
    assert write_report(store, spec, steps) == "runs/demo/report"
    report = read_report(store)
    # Tokenizer: tokens per character of both vocabularies and the ratio.
    assert "1.840 (base) → 0.920 (extended vocabulary), 2.00× fewer" in report
    # Training: the loss table from metrics.jsonl (first/last loss, mean tokens/s) and the figure.
    assert "| pretrain | 6 | 5.000 | 3.500 | 101 |" in report
    assert "| sft | 4 | 2.000 | 1.000 | 100 |" in report
    # Held-out perplexity: base 40 -> pretrain 24 is -40.0%, SFT 22 is -45.0%.
    assert "base model 40.00 → after pretraining 24.00 → after SFT 22.00 (-40.0% after pretraining)" in report
    assert "| after SFT | 2000 | 1500 | 0.750 | 22.000 | -45.0% |" in report
    # Tasks: base vs SFT with the points gained, the exact prompt, and the answers side by side.
    assert ("sentiment-heldout (accuracy, 20 held-out examples): 10.0% (base) → 85.0% (after SFT), +75.0 points"
            in report)
    assert "| after SFT | accuracy | 85.0% | 20 | 17 right, 0 answers named no label |" in report
    assert "as base model, after pretraining, after SFT saw it:" in report and PROMPT.strip() in report
    assert "| 很好 | 正面 | ### | 正面 |" in report
    # Quantization table, a skipped type explained, and the sample generations before and after.
    # Rows measured by llama.cpp when it loaded the file, by transformers otherwise, each against its reference.
    assert "| Q4_0 | 0.7 MB | 12.600 | +5.00% | F16 | 650 | llama.cpp |" in report
    assert "| Q5_0 | 0.8 MB | 12.300 | +0.50% | HF model | – | transformers |" in report
    assert "| Q4_K | – | – | – | – | – | skipped: K-quants are made only" in report
    assert "temperature 0.2, top_k 40, top_p 0.9, repetition_penalty 1.1" in report
    assert report.index("base says ###") < report.index("北京是中国的首都。")
    # A generation with its own ``` fence stays inside a longer one instead of ending it.
    assert "````text\nbase says ###\n```python\nprint(1)\n```\n````" in report
    assert "## Not available" not in report
    for figure in ("loss.png", "perplexity-1.png", "tasks.png"):
        assert f"]({figure})" in report
        assert (store.path("runs/demo/report") / figure).read_bytes().startswith(PNG_MAGIC)
    assert "| tokenizer | `demo-tokenizer` | Succeeded | 30 s |" in report


def test_rebuilding_the_report_gives_the_same_bytes(pipeline: tuple[DirStore, PipelineSpec, list]) -> None:
    store, spec, steps = pipeline
    write_report(store, spec, steps)
    first = {name: sha for name, sha in store.read_manifest("runs/demo/report")["files"].items()}
    write_report(store, spec, steps)
    assert store.read_manifest("runs/demo/report")["files"] == first


def test_missing_or_corrupt_outputs_are_named_not_fatal(pipeline: tuple[DirStore, PipelineSpec, list]) -> None:
    store, spec, steps = pipeline
    store.delete_prefix("runs/demo-quantize/outputs/gguf")
    (store.path("runs/demo-eval-base/outputs/eval") / "report.json").write_text("{}", encoding="utf-8")
    write_report(store, spec, steps)
    report = read_report(store)
    assert "## Not available" in report
    assert "- quantize: " in report and "runs/demo-quantize/outputs/gguf is incomplete" in report
    assert "- eval-base: " in report and "eval/report.json is corrupt" in report
    assert "## Quantization" not in report
    # Without the base model's numbers there is no base-vs-SFT line, but the other models still show.
    assert "(base) → " not in report.split("## Summary")[1].split("##")[0].replace("(base) → 0.920", "")
    assert "after pretraining 24.00 → after SFT 22.00" in report
