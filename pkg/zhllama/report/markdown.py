"""report.md, section by section; each section draws its figure into the report directory and links it."""

from __future__ import annotations

import re
import statistics
from pathlib import Path
from typing import Any

from zhllama.report import figures
from zhllama.report.collect import PipelineResults

BEFORE, AFTER = "base", "sft"
"""The models compared in the task and sample sections: the base and the instruction-tuned model."""
MODEL_NAMES = {"base": "base model", "pretrain": "after pretraining", "sft": "after SFT"}
LANGUAGE_NAMES = {"zh": "Chinese", "en": "English", "other": "other"}
PER_TOKEN_LANGUAGES = frozenset({"en"})
"""Held-out text read per token: English, which both vocabularies cut (nearly) alike. Chinese stays per character
(the extended vocabulary halves its tokens, so per-token numbers would not compare)."""


def model_name(label: str) -> str:
    return MODEL_NAMES.get(label, label)


def task_name(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


def change(before: float, after: float) -> str:
    return f"{100 * (after / before - 1):+.1f}%"


def fence(text: str) -> list[str]:
    """A code block that holds `text` verbatim, even when the model wrote ``` fences of its own."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    marker = "`" * max(3, longest + 1)
    return [f"{marker}text", text.rstrip("\n"), marker]


def steps_table(results: PipelineResults) -> list[str]:
    lines = ["| step | run | state | time |", "|---|---|---|---:|"]
    for step in results.steps:
        took = "reused" if step.reused else (f"{step.seconds:.0f} s" if step.seconds is not None else "–")
        lines.append(f"| {step.step} | `{step.run_id}` | {step.state} | {took} |")
    return lines


def perplexities(results: PipelineResults) -> dict[str, dict[str, dict[str, Any]]]:
    """Held-out source -> model label -> perplexity record."""
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for label, report in results.evals.items():
        for source, record in report.get("perplexity", {}).get("sources", {}).items():
            table.setdefault(source, {})[label] = record
    return table


def language(source: str, record: dict[str, Any]) -> str:
    """The eval's label for the text (zh, en, other); reports from before the label: English by its URI, else ""."""
    label = record.get("language")
    if isinstance(label, str):
        return label
    return "en" if "english" in source.lower() else ""


def source_language(source: str, by_model: dict[str, dict[str, Any]]) -> str:
    return next((language(source, record) for record in by_model.values()), "")


def ppl_key(lang: str) -> str:
    """The record field the report reads for text of this language."""
    return "ppl_per_token" if lang in PER_TOKEN_LANGUAGES else "ppl_per_char"


def task_scores(results: PipelineResults) -> dict[str, dict[str, dict[str, Any]]]:
    """Task URI -> model label -> score_task result."""
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for label, report in results.evals.items():
        for uri, result in report.get("tasks", {}).items():
            table.setdefault(uri, {})[label] = result
    return table


def summary(results: PipelineResults) -> list[str]:
    lines = []
    if results.tokenizer:
        tpc = results.tokenizer["tokens_per_char"]
        lines.append(f"- Tokens per Chinese character on held-out text: {tpc['base']:.3f} (base) → "
                     f"{tpc['extended']:.3f} (extended vocabulary), {tpc['base'] / tpc['extended']:.2f}× fewer.")
    for source, by_model in perplexities(results).items():
        lang = source_language(source, by_model)
        key = ppl_key(lang)
        steps = [f"{model_name(label)} {record[key]:.2f}" for label, record in by_model.items()]
        what = "Per-token perplexity" if key == "ppl_per_token" else "Per-character perplexity"
        named = f" ({LANGUAGE_NAMES[lang]})" if lang in PER_TOKEN_LANGUAGES else ""
        lines.append(f"- {what} on {task_name(source)}{named}: " + " → ".join(steps) + _ppl_change(by_model, key))
    for uri, by_model in task_scores(results).items():
        if BEFORE in by_model and AFTER in by_model:
            before, after = by_model[BEFORE]["score"], by_model[AFTER]["score"]
            lines.append(f"- {task_name(uri)} ({by_model[AFTER]['metric']}, {by_model[AFTER]['examples']} held-out "
                         f"examples): {before:.1%} (base) → {after:.1%} (after SFT), "
                         f"{100 * (after - before):+.1f} points.")
    return lines


def _ppl_change(by_model: dict[str, dict[str, Any]], key: str = "ppl_per_char") -> str:
    if BEFORE in by_model and "pretrain" in by_model:
        base, pretrained = by_model[BEFORE][key], by_model["pretrain"][key]
        return f" ({change(base, pretrained)} after pretraining)."
    return "."


def tokenizer_section(report: dict[str, Any]) -> list[str]:
    tpc, heldout = report["tokens_per_char"], report["heldout"]
    return [
        "## Tokenizer",
        "",
        f"Base vocabulary {report['base']['vocab_size']} tokens + {report['pieces_added']} Chinese pieces → "
        f"{report['vocab_size']} tokens.",
        "",
        f"| tokenizer | tokens per character ({heldout['lines']} held-out lines, {heldout['characters']} characters) |",
        "|---|---:|",
        f"| base | {tpc['base']:.3f} |",
        f"| extended | {tpc['extended']:.3f} |",
    ]


def training_section(training: dict[str, list[dict[str, Any]]], out_dir: Path) -> list[str]:
    figures.loss_curves(training, out_dir / "loss.png")
    lines = ["## Training", "", "![training loss](loss.png)", "",
             "| step | optimizer steps | first loss | last loss | tokens/s (mean) |", "|---|---:|---:|---:|---:|"]
    for step, records in training.items():
        speed = statistics.fmean(r["tokens_per_s"] for r in records) if records else float("nan")
        lines.append(f"| {step} | {records[-1]['step']} | {records[0]['loss']:.3f} | {records[-1]['loss']:.3f} | "
                     f"{speed:.0f} |")
    return lines


def perplexity_section(results: PipelineResults, out_dir: Path) -> list[str]:
    lines = ["## Per-character perplexity on held-out text", "",
             "exp(total negative log-likelihood / characters): comparable across tokenizers. Each model is scored "
             "with its own tokenizer (the base model with the base vocabulary).", ""]
    for index, (source, by_model) in enumerate(perplexities(results).items()):
        figure = f"perplexity-{index + 1}.png"
        labels = [model_name(label) for label in by_model]
        figures.bars(labels, [r["ppl_per_char"] for r in by_model.values()],
                     f"per-character perplexity, {task_name(source)}", "perplexity per character", out_dir / figure)
        lines += [f"`{source}`", "", "| model | characters | tokens | tokens/char | ppl per char | vs base |",
                  "|---|---:|---:|---:|---:|---:|"]
        base = by_model.get(BEFORE, {}).get("ppl_per_char")
        for label, record in by_model.items():
            versus = change(base, record["ppl_per_char"]) if base and label != BEFORE else "–"
            lines.append(f"| {model_name(label)} | {record['characters']} | {record['tokens']} | "
                         f"{record['tokens_per_char']:.3f} | {record['ppl_per_char']:.3f} | {versus} |")
        lines += ["", f"![perplexity]({figure})", ""]
    return lines


def languages_section(results: PipelineResults) -> list[str]:
    """Chinese and English held-out text side by side, for every model: did pretraining on Chinese cost English?"""
    table = perplexities(results)
    if not any(source_language(source, by_model) in PER_TOKEN_LANGUAGES for source, by_model in table.items()):
        return []  # Chinese alone: the per-character section below says it all
    labels = [label for label in [*MODEL_NAMES, *results.evals] if label in results.evals]
    labels = list(dict.fromkeys(labels))
    lines = ["## Chinese and English before and after pretraining", "",
             "Chinese per character (comparable across the two vocabularies); English per token, each model with "
             "its own tokenizer (the extension adds Chinese pieces, so English is cut nearly alike: the tokens "
             "column shows each model's count). Lower is better; English rising after pretraining is what "
             "training on Chinese made the model forget, and what the English replay in the data is for.", "",
             "| held-out text | language | perplexity | " + " | ".join(model_name(label) for label in labels)
             + " | pretraining changed it | tokens |",
             "|---|---|---|" + "---:|" * len(labels) + "---:|---|"]
    for source, by_model in table.items():
        lang = source_language(source, by_model)
        key = ppl_key(lang)
        cells = [f"{by_model[label][key]:.3f}" if label in by_model else "–" for label in labels]
        pretrained = (change(by_model[BEFORE][key], by_model["pretrain"][key])
                      if BEFORE in by_model and "pretrain" in by_model else "–")
        tokens = " / ".join(str(by_model[label]["tokens"]) if label in by_model else "–" for label in labels)
        lines.append(f"| {task_name(source)} | {LANGUAGE_NAMES.get(lang, '–')} | "
                     f"{'per token' if key == 'ppl_per_token' else 'per char'} | " + " | ".join(cells)
                     + f" | {pretrained} | {tokens} |")
    return [*lines, ""]


def mixture_section(results: PipelineResults) -> list[str]:
    """The pretraining data: each source's weight, its share of the samples, and (prepared) its size."""
    if results.dataset is not None:
        sources = [s for s in results.dataset["sources"] if isinstance(s, dict)]
        block_size = results.dataset.get("block_size")
        where = (f"The prepare step's dataset (`{results.dataset_uri}`"
                 + (f", blocks of {block_size} tokens" if block_size is not None else "") + ")")
    elif results.pretrain_sources:
        sources = results.pretrain_sources
        where = "The pretrain step's data (it tokenized the text itself: no prepared dataset, so no counts)"
    else:
        return []
    weights = [s.get("weight") for s in sources]
    total = sum(w for w in weights if isinstance(w, (int, float)))
    lines = ["## Pretraining data", "",
             f"{where}. Each training sample is drawn from a source by its weight's share of the samples; a source "
             "smaller than its share repeats.", "",
             "| source | weight | share of samples | documents | tokens | blocks | bad records |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for source, weight in zip(sources, weights, strict=True):
        share = f"{weight / total:.1%}" if isinstance(weight, (int, float)) and total > 0 else "–"
        counts = [_count(source.get(name)) for name in ("documents", "tokens", "blocks", "bad_records")]
        lines.append(f"| `{source.get('uri', '?')}` | {_count(weight)} | {share} | " + " | ".join(counts) + " |")
    return lines


def _count(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "–"
    return f"{value:g}" if isinstance(value, float) else str(value)


def tasks_section(results: PipelineResults, out_dir: Path) -> list[str]:
    scores = task_scores(results)
    if not scores:
        return []
    labels = [label for label in results.evals if all(label in by_model for by_model in scores.values())]
    figures.grouped_bars([task_name(uri) for uri in scores],
                         {model_name(label): [scores[uri][label]["score"] for uri in scores] for label in labels},
                         "held-out tasks", "score", out_dir / "tasks.png")
    lines = ["## Held-out tasks", "", "Answers are decoded greedily; accuracy takes the first label the answer "
             "mentions, segmentation F1 matches words by their character spans.", "", "![tasks](tasks.png)", ""]
    for uri, by_model in scores.items():
        lines += [f"### {task_name(uri)}", "", "| model | metric | score | examples | details |",
                  "|---|---|---:|---:|---|"]
        for label, result in by_model.items():
            if result["metric"] == "accuracy":
                details = f"{result['correct']} right, {result['unanswered']} answers named no label"
            else:
                details = f"precision {result['precision']:.3f}, recall {result['recall']:.3f}"
            lines.append(f"| {model_name(label)} | {result['metric']} | {result['score']:.1%} | "
                         f"{result['examples']} | {details} |")
        prompts: dict[str, list[str]] = {}
        for label, result in by_model.items():
            prompts.setdefault(result["prompt"], []).append(model_name(label))
        for prompt, names in prompts.items():
            lines += ["", f"The exact prompt of the first example, as {', '.join(names)} saw it:", "", *fence(prompt)]
        lines.append("")
        lines += _answers(by_model)
    return lines


def _answers(by_model: dict[str, dict[str, Any]]) -> list[str]:
    if BEFORE not in by_model or AFTER not in by_model:
        return []
    lines = ["| input | expected | base answer | SFT answer |", "|---|---|---|---|"]
    for before, after in zip(by_model[BEFORE]["answers"], by_model[AFTER]["answers"], strict=False):
        lines.append(f"| {cell(before['input'])} | {cell(before['expected'])} | {cell(before['answer'])} | "
                     f"{cell(after['answer'])} |")
    return [*lines, ""]


def cell(text: str, limit: int = 80) -> str:
    flat = " ".join(text.split())
    flat = flat if len(flat) <= limit else flat[: limit - 1] + "…"
    return flat.replace("|", "\\|") or "(empty)"


def quantize_section(report: dict[str, Any]) -> list[str]:
    """The paper's quantization table; each row measured by llama.cpp when it ran, else by transformers."""
    # the stage's own renderings of the quantizer comparison and the notes (its report format)
    from zhllama.quantize.report import ENGINES, comparison_lines, double_quantization_note, float32_reference

    heldout = report["heldout"]
    lines = ["## Quantization", "",
             f"GGUF files of the merged model; per-character perplexity on {heldout['characters']} held-out "
             f"characters; {float32_reference(report)}", "",
             "| type | file size | ppl per char | Δ | vs | tokens/s | measured by |",
             "|---|---:|---:|---:|---|---:|---|"]
    for row in report["types"]:
        if "skipped" in row:
            lines.append(f"| {row['type']} | – | – | – | – | – | skipped: {cell(row['skipped'])} |")
            continue
        engine = next((e for e in ENGINES if row.get(e, {}).get("ppl_per_char") is not None), None)
        size = f"{row['bytes'] / 1e6:.1f} MB"
        if engine is None:
            errors = "; ".join(f"{ENGINES[e]}: {row[e]['error']}" for e in ENGINES if row.get(e, {}).get("error"))
            lines.append(f"| {row['type']} | {size} | – | – | – | – | {cell(errors or 'not measured')} |")
            continue
        measured = row[engine]
        speed = measured.get("tokens_per_second")
        lines.append(f"| {row['type']} | {size} | {measured['ppl_per_char']:.3f} | {measured['delta_pct']:+.2f}% | "
                     f"{report.get(f'{engine}_delta_reference', 'F16')} | "
                     f"{'–' if speed is None else f'{speed:.0f}'} | {ENGINES[engine]} |")
    return lines + comparison_lines(report) + double_quantization_note(report)


def samples_section(results: PipelineResults) -> list[str]:
    before = results.evals.get(BEFORE, {}).get("samples")
    after = results.evals.get(AFTER, {}).get("samples")
    if not before or not after:
        return []
    decoding = after["decoding"]
    settings = ", ".join(f"{key} {value}" for key, value in decoding.items())
    lines = ["## Sample generations", "", f"Decoding (the paper's settings): {settings}; seed {after['seed']}.", ""]
    answers = {g["instruction"]: g for g in before["generations"]}
    for generation in after["generations"]:
        lines += [f"### {generation['instruction']}", "", "Base model:"]
        earlier = answers.get(generation["instruction"])
        lines += fence(earlier["output"] if earlier else "(not asked)")
        lines += ["", "After SFT:"] + fence(generation["output"]) + [""]
    return lines
