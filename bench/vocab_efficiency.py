"""Extended vs base vocabulary at equal training wall time: held-out per-character perplexity, JSON lines and a PNG.

  nice -n 5 .venv/bin/python bench/vocab_efficiency.py [--seconds 600] [--every 120] [--heldout-chars 1000]
      [--tokenizer DIR] [--out docs/vocab_efficiency.png] [--smoke] [--replot SAVED_STDOUT]

The claim under test (Chinese-LLaMA, Cui et al. 2023): the extended vocabulary learns Chinese faster per unit of
compute because it needs fewer tokens per character. Two copies of the embedded SmolLM2-135M are pretrained with
zhllama's recipe (`smol` preset: block 256, micro batch 2, bf16, lr 2e-3, the spec's LoRA r=8 on attention + MLP,
embed_tokens/lm_head trained in full) on the embedded People's Daily, one with SmolLM2's own byte-level BPE
vocabulary (49152 tokens; not LLaMA's), one with the vocabulary the tokenizer stage makes from it (smol: 20000
Chinese SentencePiece pieces merged in). Both live in this one process and take optimizer steps in turn
(A, B, A, B, ...), each charged only the wall time of its own steps, so both see the same machine contention.
Every `--every` seconds of a model's charged time (and at 0) its per-character perplexity on the first
`--heldout-chars` characters of embedded://peoples-daily-heldout is measured (not charged) and printed as one JSON
line; the last line compares the two final perplexities. `--tokenizer DIR` reuses a built extended tokenizer
(e.g. the tokenizer stage's output) instead of building it here (~1-2 minutes).

On the 2 CPU cores here the defaults took 22 minutes (2 x 600 s charged, plus the setup and the evaluations):
about 3.1 s per step with the extended vocabulary and 2.8 s with the base one, so ~200 steps each, the demo's
pretraining twice over. `--smoke` (20 s budget, 10 s checkpoints) takes a few minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from zhllama.data import BlockData, DocumentEncoder, blocks_of_files
from zhllama.embedded import BUILDERS
from zhllama.embedded.models import smollm2_gguf
from zhllama.eval.perplexity import PerplexityResult, per_char_perplexity, read_documents
from zhllama.models.dtypes import torch_dtype
from zhllama.models.gguf import import_gguf
from zhllama.models.loading import load_tokenizer
from zhllama.spec import EvalSpec, TrainSpec
from zhllama.spec.presets import preset_values
from zhllama.train.loop import train_step
from zhllama.train.recipe import TrainOutputs, TrainSetup, local_setup

BENCH = "vocab_efficiency"
OUT = Path("docs/vocab_efficiency.png")
SMOKE_OUT = Path(tempfile.gettempdir()) / "vocab_efficiency_smoke.png"
EVAL = preset_values("smol", "eval")
EVAL_WINDOW = int(EvalSpec.model_fields["window"].default)
EVAL_STRIDE = int(EVAL["stride"])
DEMO_STEPS = int(preset_values("smol", "pretrain")["max_steps"])
# The demo warms up over 5% of its steps (4 of 80); the same steps here, then a constant lr (see train_spec).
WARMUP_STEPS = int(DEMO_STEPS * TrainSpec.model_fields["warmup_ratio"].default)
STEP_CAP = 100_000
"""max_steps of the spec: a cap the time budget always stops short of."""


class BlocksInOrder(BlockData):
    """Blocks read in corpus order. BlockData shuffles blocks, and a block of one vocabulary holds other text than
    the same block of the other: in order, both models read the (once-shuffled) documents in the same order."""

    def indices(self, seed: int, start: int, count: int) -> list[int]:
        return [(start + i) % len(self) for i in range(count)]


@dataclass
class Arm:
    """One model being trained, and what it has been charged and read so far."""

    vocab: str
    setup: TrainSetup
    steps: int = 0
    samples: int = 0
    tokens: int = 0
    chars: int = 0
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)
    """Training losses since the last checkpoint."""
    next_checkpoint: float = 0.0
    curve: list[dict[str, Any]] = field(default_factory=list)


def corpus_files(scratch: Path, seed: int) -> tuple[Path, Path]:
    """The embedded People's Daily training text (documents shuffled once, for both models) and held-out text."""
    for name in ("peoples-daily-train", "peoples-daily-heldout"):
        (scratch / name).mkdir()
        BUILDERS[name](scratch / name)
    train = scratch / "peoples-daily-train" / "train.txt"
    lines = [line for line in train.read_text(encoding="utf-8").splitlines() if line.strip()]
    # The corpus is in date order, a day's articles together: shuffled, a few minutes of training see the year.
    random.Random(seed).shuffle(lines)
    shuffled = scratch / "train-shuffled.txt"
    shuffled.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return shuffled, scratch / "peoples-daily-heldout" / "heldout.txt"


def extended_tokenizer(scratch: Path, corpus: Path, heldout: Path) -> tuple[Path, dict[str, Any]]:
    """The tokenizer stage's build for `--size smol` (spec defaults: the embedded SmolLM2 base, People's Daily
    train/held-out), made here so the bench needs no store; returns its directory and report."""
    from zhllama.tokenizer.build import build_tokenizer

    out = scratch / "tokenizer-extended"
    report = build_tokenizer(smollm2_gguf(), out, corpus=[corpus], heldout=[heldout],
                             vocab_size=int(preset_values("smol", "tokenizer")["vocab_size"]))
    return out, report


def train_spec(model_dir: Path, tokenizer_dir: Path) -> TrainSpec:
    """The smol preset's pretraining, with one change: a step-count schedule (cosine to 0 at max_steps) cannot end
    at an equal time budget for two models whose steps cost differently, so after the demo's warmup the lr stays
    at its peak and both models train at the same lr at every checkpoint."""
    pretrain = preset_values("smol", "pretrain")
    keep = ("block_size", "micro_batch_size", "grad_accum_steps", "precision", "zero_stage", "lr")
    return TrainSpec.model_validate({
        "run_id": "bench", "base_model": f"file://{model_dir}", "tokenizer": f"file://{tokenizer_dir}",
        "data": [], **{key: pretrain[key] for key in keep},
        "max_steps": STEP_CAP, "lr_scheduler": "constant", "warmup_ratio": (WARMUP_STEPS + 0.5) / STEP_CAP,
        "log_every": 10**6, "checkpoint_every": 10**6,
    })


def make_arm(vocab: str, model_dir: Path, tokenizer_dir: Path, corpus: Path, scratch: Path) -> Arm:
    """zhllama's recipe up to its first step (local_setup: base, untied and resized embeddings, LoRA, engine with
    AdamW + schedule), on `corpus` tokenized and packed as `prepare` does it."""
    spec = train_spec(model_dir, tokenizer_dir)
    tokenizer = load_tokenizer(tokenizer_dir)
    encoder = DocumentEncoder(tokenizer.backend_tokenizer, tokenizer.eos_token_id)
    blocks = BlocksInOrder(blocks_of_files([corpus], encoder, spec.block_size, scratch / f"blocks-{vocab}"))
    outputs = TrainOutputs(adapter_dir=scratch / f"adapter-{vocab}", metrics_dir=scratch / f"metrics-{vocab}")
    # The recipe prints its progress on stdout, which is this bench's JSON lines.
    with contextlib.redirect_stdout(sys.stderr):
        setup = local_setup(spec, base_model_dir=model_dir, tokenizer_dir=tokenizer_dir, dataset=blocks,
                            outputs=outputs)
    setup.model.train()
    return Arm(vocab, setup)


def timed_step(arm: Arm) -> None:
    """One optimizer step of zhllama's own train_step (fit's loop runs to max_steps with no room for a turn-taking
    partner), charged with its wall time only; the characters it read are counted after the clock stops."""
    s = arm.setup
    on_gpu = s.env.device.type == "cuda"
    started = time.perf_counter()
    outcome = train_step(s, arm.samples)
    loss = float(outcome.loss)  # waits for the device, so the step's work is inside the clock
    if on_gpu:
        torch.cuda.synchronize()
    arm.seconds += time.perf_counter() - started
    indices = s.data.indices(s.spec.seed, arm.samples, s.global_batch)
    eos = s.tokenizer.eos_token_id
    ids = [int(i) for index in indices for i in s.data[index].input_ids if int(i) != eos]
    arm.chars += len(s.tokenizer.decode(ids))
    arm.tokens += outcome.tokens
    arm.samples += s.global_batch
    arm.steps += 1
    arm.losses.append(loss)


def evaluate(arm: Arm, documents: list[str]) -> PerplexityResult:
    """zhllama's per-character perplexity, under the autocast the model trains with (its frozen base is bf16)."""
    s = arm.setup
    s.model.eval()
    autocast = torch.autocast(s.env.device.type, dtype=torch_dtype(s.precision)) if s.precision != "fp32" \
        else contextlib.nullcontext()
    with autocast:
        result = per_char_perplexity(s.model, s.tokenizer, documents, EVAL_WINDOW, EVAL_STRIDE)
    s.model.train()
    return result


def checkpoint(arm: Arm, documents: list[str], every: float) -> PerplexityResult:
    result = evaluate(arm, documents)
    line = {"bench": BENCH, "vocab": arm.vocab, "vocab_size": len(arm.setup.tokenizer),
            "train_seconds": round(arm.seconds, 1), "steps": arm.steps, "tokens": arm.tokens, "chars": arm.chars,
            "per_char_ppl": round(result.per_char, 2),
            "train_loss": round(sum(arm.losses) / len(arm.losses), 4) if arm.losses else None}
    print(json.dumps(line), flush=True)
    arm.curve.append(line)
    arm.losses = []
    arm.next_checkpoint += every
    return result


def turns(arms: list[Arm], budget: float) -> Iterator[Arm]:
    """The arms in turn, one step each, while each has budget left (the last one alone finishes its budget)."""
    while True:
        running = [arm for arm in arms if arm.seconds < budget]
        if not running:
            return
        yield from running


def race(arms: list[Arm], documents: list[str], budget: float, every: float) -> dict[str, PerplexityResult]:
    """Train the arms in turn up to `budget` charged seconds each, evaluating at 0, every `every` s and at the end."""
    final = {arm.vocab: checkpoint(arm, documents, every) for arm in arms}
    for arm in turns(arms, budget):
        timed_step(arm)
        if arm.seconds >= min(arm.next_checkpoint, budget):
            final[arm.vocab] = checkpoint(arm, documents, every)
    return final


def plot(curves: dict[str, list[dict[str, Any]]], tokens_per_char: dict[str, float], path: Path) -> None:
    """Per-character perplexity against charged seconds, one curve per vocabulary (its checkpoint lines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=120)
    for vocab, curve in curves.items():
        label = f"{vocab} vocabulary ({curve[0]['vocab_size']} tokens, {tokens_per_char[vocab]:.2f} tokens/char)"
        axes.plot([c["train_seconds"] for c in curve], [c["per_char_ppl"] for c in curve], marker="o", label=label)
        for c in curve:
            axes.annotate(f"{c['steps']}", (c["train_seconds"], c["per_char_ppl"]), textcoords="offset points",
                          xytext=(4, 4), fontsize=7)
    axes.set_xlabel("training wall time charged to the model (s); labels: optimizer steps")
    axes.set_ylabel("held-out per-character perplexity")
    axes.set_title("SmolLM2-135M + LoRA on People's Daily: extended vs base vocabulary")
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)


def replot(lines_file: Path, path: Path) -> None:
    """The PNG again from a run's saved JSON lines (stdout), without training."""
    lines = [json.loads(line) for line in lines_file.read_text(encoding="utf-8").splitlines()
             if line.startswith("{")]
    curves: dict[str, list[dict[str, Any]]] = {}
    for line in lines:
        if "vocab" in line:
            curves.setdefault(line["vocab"], []).append(line)
    plot(curves, lines[-1]["heldout_tokens_per_char"], path)


def summary(arms: list[Arm], final: dict[str, PerplexityResult], report: dict[str, Any] | None,
            args: argparse.Namespace, wall: float) -> dict[str, Any]:
    extended, base = final["extended"], final["base"]
    line: dict[str, Any] = {
        "bench": BENCH, "summary": True, "budget_seconds": args.seconds, "heldout_chars": base.characters,
        "per_char_ppl": {"extended": round(extended.per_char, 2), "base": round(base.per_char, 2)},
        "ppl_ratio_extended_over_base": round(extended.per_char / base.per_char, 3),
        "heldout_tokens_per_char": {k: round(v.tokens_per_char, 3) for k, v in final.items()},
        "steps": {arm.vocab: arm.steps for arm in arms},
        "seconds_per_step": {arm.vocab: round(arm.seconds / max(arm.steps, 1), 2) for arm in arms},
        "chars_per_second": {arm.vocab: round(arm.chars / max(arm.seconds, 1e-9), 1) for arm in arms},
        "threads": torch.get_num_threads(), "device": arms[0].setup.env.device.type, "png": str(args.out),
        "bench_wall_seconds": round(wall, 1),
    }
    if report is not None:  # the tokenizer stage's own figure, on all 3000 held-out lines
        line["tokenizer_report_tokens_per_char"] = report["tokens_per_char"]
    return line


def run(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="zhllama-bench-vocab-") as tmp:
        scratch = Path(tmp)
        corpus, heldout = corpus_files(scratch, seed=0)
        report = None
        tokenizer_dir = args.tokenizer
        if tokenizer_dir is None:
            tokenizer_dir, report = extended_tokenizer(scratch, corpus, heldout)
        model_dir = scratch / "smollm2-135m"
        import_gguf(smollm2_gguf(), model_dir)
        documents = read_documents(heldout, args.heldout_chars)
        # Alternating from the first step: A, B, A, B, ... (extended first; either order sees the same machine).
        arms = [make_arm("extended", model_dir, tokenizer_dir, corpus, scratch),
                make_arm("base", model_dir, model_dir, corpus, scratch)]
        final = race(arms, documents, args.seconds, args.every)
        line = summary(arms, final, report, args, time.perf_counter() - started)
        plot({arm.vocab: arm.curve for arm in arms}, line["heldout_tokens_per_char"], args.out)
        print(json.dumps(line), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=600.0, help="training seconds charged to each model")
    parser.add_argument("--every", type=float, default=120.0, help="charged seconds between checkpoints")
    # 1000 characters: an evaluation of the base model costs ~40 s of this machine (~1800 tokens, 4 windows).
    parser.add_argument("--heldout-chars", type=int, default=1000)
    parser.add_argument("--tokenizer", type=Path, default=None, help="a built extended tokenizer directory")
    parser.add_argument("--out", type=Path, default=None, help=f"the PNG (default {OUT}; --smoke: {SMOKE_OUT})")
    parser.add_argument("--smoke", action="store_true", help="--seconds 20 --every 10 --heldout-chars 500")
    parser.add_argument("--replot", type=Path, default=None, help="only redraw the PNG from a run's saved stdout")
    args = parser.parse_args()
    if args.smoke:
        args.seconds, args.every, args.heldout_chars = 20.0, 10.0, 500
    # A smoke run never overwrites the figure the README shows.
    args.out = args.out or (SMOKE_OUT if args.smoke else OUT)
    replot(args.replot, args.out) if args.replot else run(args)


if __name__ == "__main__":
    main()
