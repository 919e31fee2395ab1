"""The pipeline report, built from stage outputs written in each stage's format into a real directory store."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import pytest

from zhllama.pipeline import plan
from zhllama.report import write_report
from zhllama.run import run_key
from zhllama.spec import PipelineSpec, StageSpec, TrainSpec, resolve_spec
from zhllama.store import ArtifactStore, DirStore

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HELDOUT = "embedded://peoples-daily-heldout-tiny"
ENGLISH = "embedded://english-heldout-tiny"
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


def ppl_record(characters: int, tokens: int, nll: float, language: str) -> dict[str, Any]:
    """One held-out source as the eval stage writes it (PerplexityResult.as_dict and the language label)."""
    return {"documents": 10, "characters": characters, "tokens": tokens, "nll": nll,
            "ppl_per_char": math.exp(nll / characters), "ppl_per_token": math.exp(nll / tokens),
            "tokens_per_char": tokens / characters, "language": language}


ENGLISH_NLL = {"eval-base": 1800.0, "eval-pretrain": 2100.0, "eval-sft": 2250.0}
"""Summed NLL of the English held-out text per eval step: pretraining on Chinese makes English a little worse."""
ENGLISH_TOKENS = {"eval-base": 900, "eval-pretrain": 905, "eval-sft": 905}


def eval_report(ppl: float, sentiment: float, f1: float, sample: str, english_nll: float = 1800.0,
                english_tokens: int = 900) -> dict[str, Any]:
    """report.json as the eval stage writes it (EvalReport.as_dict plus the tasks and samples keys)."""
    return {
        "model": "m", "adapters": [], "instruction_model": True,
        "perplexity": {"window": 64, "stride": 32, "sources": {
            HELDOUT: {**ppl_record(2000, 1500, 1500 * 1.0, "zh"), "ppl_per_char": ppl},
            ENGLISH: ppl_record(4000, english_tokens, english_nll, "en")}},
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


DATASET: dict[str, Any] = {
    "format": "zhllama.tokens/v1", "block_size": 64, "dtype": "uint16", "eos_id": 2, "tokenizer": "abc",
    "sources": [
        {"uri": "embedded://peoples-daily-tiny", "weight": 0.9, "documents": 1500, "characters": 120000,
         "tokens": 64000, "blocks": 990, "tokens_dropped": 40, "bad_records": 0, "first_bad": "", "files": 1,
         "shards": [{"unit": "u1", "name": "shard-00000.bin", "blocks": 990, "meta": {}}]},
        {"uri": "embedded://english-replay-tiny", "weight": 0.1, "documents": 300, "characters": 68902,
         "tokens": 16000, "blocks": 248, "tokens_dropped": 8, "bad_records": 2, "first_bad": "x:3", "files": 1,
         "shards": [{"unit": "u2", "name": "shard-00000.bin", "blocks": 248, "meta": {}}]},
    ],
}


@pytest.fixture
def pipeline(tmp_path: Path) -> tuple[DirStore, PipelineSpec, list[tuple[str, StageSpec]]]:
    """A finished tiny pipeline's outputs, in the formats the stages write."""
    store = DirStore(tmp_path / "store")
    spec = resolve_spec("pipeline", size="tiny", run_id="demo", values={"store": store.root_uri})
    assert isinstance(spec, PipelineSpec)
    steps = plan(spec)
    samples = {"eval-base": "base says ###\n```python\nprint(1)\n```", "eval-pretrain": "pretrain says 北京",
               "eval-sft": "北京是中国的首都。"}
    evals = {step: eval_report(ppl, sentiment, f1, samples[step], ENGLISH_NLL[step], ENGLISH_TOKENS[step])
             for step, ppl, sentiment, f1 in (("eval-base", 40.0, 0.10, 0.20), ("eval-pretrain", 24.0, 0.30, 0.25),
                                              ("eval-sft", 22.0, 0.85, 0.70))}
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
        elif step == "prepare":
            publish(store, f"{outputs}/dataset", {"dataset.json": json.dumps(DATASET)})
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


def english_ppl(step: str) -> float:
    return math.exp(ENGLISH_NLL[step] / ENGLISH_TOKENS[step])


def test_report_shows_english_per_token_perplexity_beside_chinese(
        pipeline: tuple[DirStore, PipelineSpec, list]) -> None:
    store, spec, steps = pipeline
    write_report(store, spec, steps)
    report = read_report(store)
    section = report.split("## Chinese and English before and after pretraining")[1].split("\n## ")[0]
    print(section)
    base, pretrained, sft = (english_ppl(step) for step in ("eval-base", "eval-pretrain", "eval-sft"))
    rise = f"{100 * (pretrained / base - 1):+.1f}%"
    assert ("| held-out text | language | perplexity | base model | after pretraining | after SFT | "
            "pretraining changed it | tokens |") in section
    # Chinese keeps its per-character numbers; English is per token, each model with its own token count.
    assert "| peoples-daily-heldout-tiny | Chinese | per char | 40.000 | 24.000 | 22.000 | -40.0% | " \
           "1500 / 1500 / 1500 |" in section
    tokens = " / ".join(str(ENGLISH_TOKENS[step]) for step in ("eval-base", "eval-pretrain", "eval-sft"))
    assert (f"| english-heldout-tiny | English | per token | {base:.3f} | {pretrained:.3f} | {sft:.3f} | {rise} | "
            f"{tokens} |") in section
    assert rise.startswith("+")
    # The summary reads English per token too, and Chinese per character as before.
    assert (f"- Per-token perplexity on english-heldout-tiny (English): base model {base:.2f} → after pretraining "
            f"{pretrained:.2f} → after SFT {sft:.2f} ({rise} after pretraining).") in report
    assert "Per-character perplexity on peoples-daily-heldout-tiny: base model 40.00" in report


def test_report_shows_the_pretraining_mixture(pipeline: tuple[DirStore, PipelineSpec, list]) -> None:
    store, spec, steps = pipeline
    write_report(store, spec, steps)
    report = read_report(store)
    section = report.split("## Pretraining data")[1].split("\n## ")[0]
    print(section)
    assert "`run://demo-prepare/outputs/dataset`, blocks of 64 tokens" in section
    total = sum(source["weight"] for source in DATASET["sources"])
    for source in DATASET["sources"]:
        assert (f"| `{source['uri']}` | {source['weight']:g} | {source['weight'] / total:.1%} | "
                f"{source['documents']} | {source['tokens']} | {source['blocks']} | {source['bad_records']} |"
                in section), source["uri"]
    # Without the prepare step's dataset the section is left out, and the report says why in one line.
    store.delete_prefix("runs/demo-prepare/outputs/dataset")
    write_report(store, spec, steps)
    report = read_report(store)
    assert "## Pretraining data" not in report
    assert "- prepare: " in report and "runs/demo-prepare/outputs/dataset is incomplete" in report


def test_a_pretrain_step_without_a_dataset_shows_its_own_weights(tmp_path: Path) -> None:
    store = DirStore(tmp_path / "store")
    spec = resolve_spec("pipeline", size="tiny", run_id="demo", values={
        "store": store.root_uri, "stages": ["tokenizer", "pretrain"]})
    assert isinstance(spec, PipelineSpec)
    planned = dict(plan(spec))
    assert isinstance(planned["pretrain"], TrainSpec)
    # Whatever the plan wires, this pretrain step tokenizes its own data (no prepared dataset).
    pretrain = planned["pretrain"].model_copy(update={"dataset": None})
    steps: list[tuple[str, StageSpec]] = [("tokenizer", planned["tokenizer"]), ("pretrain", pretrain)]
    write_report(store, spec, steps)
    report = read_report(store)
    section = report.split("## Pretraining data")[1].split("\n## ")[0]
    assert "The pretrain step's data (it tokenized the text itself" in section
    total = sum(source.weight for source in pretrain.data)
    for source in pretrain.data:
        assert f"| `{source.uri}` | {source.weight:g} | {source.weight / total:.1%} | – | – | – | – |" in section


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
