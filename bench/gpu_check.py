"""The GPU check of the training paths, one JSON line per figure (run through bench/gpu_check.sh).

  python bench/gpu_check.py [--cpu] [--budget-s 540]

On a GPU (bf16, a 1B-class LLaMA shape, synthesized: random init from a config, random token blocks):
  1. throughput: steady tokens/s and MFU of zhllama's pretrain loop against HF Trainer + PEFT on the same model, data
     and LoRA, as a ratio; zhllama with each fused loss and with compiled layers against its plain run; SFT with and
     without packing on the same examples.
  2. memory: torch.cuda.max_memory_allocated of each of those runs against the memory plan's `allocator_bytes`.
  3. quantized bases: bits 8 and 4 with gradient checkpointing on a small shape: the loss falls, the trained
     embed_tokens/lm_head copies moved (weight decay off, so only a non-zero gradient moves them) and the adapter
     merges into the 16-bit base.
  4. engines: zero_stage 2 (DeepSpeed) against zero_stage 0 on one device, 10 steps, the same seed: per-step losses
     within 1e-2, in bf16 and in fp32 (which separates the engines from bf16 rounding).
--cpu runs the same code with tiny shapes in fp32: the fused loss is `chunked`, and check 3 runs its path at bits 16
(8 and 4 need CUDA) so that its adapter and merge steps still run here. A check that cannot run prints a line saying
why, and a run that fails prints its error (a feature not in yet shows up so); the last line sums up. Runs go
cheapest first and compile last, each only while the time budget leaves room for it.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.synthetic import random_blocks, sft_sequences, synthetic_model  # noqa: E402
from bench.train import metric_records, steady_tokens_per_s, trainer_tokens_per_s  # noqa: E402

from zhllama.data import BlockData  # noqa: E402
from zhllama.spec import TrainSpec  # noqa: E402
from zhllama.train import train  # noqa: E402
from zhllama.train.architecture import Architecture  # noqa: E402
from zhllama.train.memory import GIB, estimate_for_run  # noqa: E402

GPU_SHAPE = {"num_hidden_layers": 16, "hidden_size": 2048, "intermediate_size": 5632, "num_attention_heads": 16,
             "num_key_value_heads": 16, "vocab_size": 49954}
SMALL_GPU_SHAPE = {"num_hidden_layers": 4, "hidden_size": 512, "intermediate_size": 1376, "num_attention_heads": 8,
                   "num_key_value_heads": 8, "vocab_size": 49954}
CPU_SHAPE = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": 2000}
LIGER = "liger_kernel.transformers.fused_linear_cross_entropy"
"""What zhllama's fused_cross_entropy=liger imports (train/forward.py): the package alone imports without triton."""
RESULTS: list[dict[str, Any]] = []
JSON_LINES = sys.stdout
"""Where the figures go; main() sends every other print (HF Trainer's logs, DeepSpeed's) to stderr."""


@dataclass(frozen=True)
class Setting:
    cpu: bool
    shape: dict[str, Any]
    small_shape: dict[str, Any]
    block: int
    micro: int
    steps: int
    warmup: int
    """Steps left out of the steady rate (CUDA graphs, autotuning, compilation)."""
    precision: str
    deadline: float
    run_s: float
    """What one training run is expected to take: none starts with less time left (compile: three times that)."""

    @property
    def device_type(self) -> str:
        return "cpu" if self.cpu else "cuda"


def setting(cpu: bool, budget_s: float) -> Setting:
    deadline = time.monotonic() + budget_s
    if cpu:
        return Setting(True, CPU_SHAPE, CPU_SHAPE, block=64, micro=2, steps=5, warmup=1, precision="fp32",
                       deadline=deadline, run_s=10)
    return Setting(False, GPU_SHAPE, SMALL_GPU_SHAPE, block=512, micro=8, steps=15, warmup=3, precision="bf16",
                   deadline=deadline, run_s=40)


def emit(check: str, **figures: Any) -> None:
    line = {"check": check, **figures}
    RESULTS.append(line)
    print(json.dumps(line), file=JSON_LINES, flush=True)


def error_text(err: BaseException) -> str:
    return f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:300]}"


def importable(name: str) -> bool | str:
    """True, or why the import fails (a package present but unusable, e.g. DeepSpeed without hjson)."""
    try:
        importlib.import_module(name)
    except Exception as err:  # ImportError, or whatever the package raises while it initialises
        return error_text(err)
    return True


def room_for(s: Setting, check: str, run: str, runs: float = 1) -> bool:
    left = s.deadline - time.monotonic()
    if left >= runs * s.run_s:
        return True
    emit(check, run=run, skipped=f"time budget: {left:.0f} s left, the run needs about {runs * s.run_s:.0f} s")
    return False


def spec_for(model_dir: Path, s: Setting, **values: Any) -> TrainSpec:
    return TrainSpec.model_validate({
        "run_id": "gpu-check", "base_model": f"file://{model_dir}", "tokenizer": f"file://{model_dir}", "data": [],
        "block_size": s.block, "micro_batch_size": s.micro, "max_steps": s.steps, "zero_stage": 0, "log_every": 1,
        "checkpoint_every": 10**6, "precision": s.precision, "warmup_ratio": 0.0, "fused_cross_entropy": "off",
        "compile": False, **values,
    })


def with_cuda_peak(run: Callable[[], Any]) -> tuple[Any, int | None]:
    """`run()` and the CUDA allocator's peak over it, above what was allocated before it (None on CPU)."""
    if not torch.cuda.is_available():
        return run(), None
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    result = run()
    return result, torch.cuda.max_memory_allocated() - before


def run_zhllama(name: str, spec: TrainSpec, model_dir: Path, data: Any, scratch: Path, s: Setting) -> dict[str, Any]:
    """One training run through zhllama.train.train: its throughput figures, and its memory line (check 2)."""
    started = time.perf_counter()
    result, peak = with_cuda_peak(lambda: train(
        spec, base_model_dir=model_dir, tokenizer_dir=model_dir, dataset=data, output_dir=scratch / "adapter",
        metrics_dir=scratch / "metrics"))
    records = metric_records(scratch / "metrics")
    config = json.loads((model_dir / "config.json").read_text())
    # allocator_bytes leaves the runtime out, so the CPU plan needs no runtime probe here.
    plan = estimate_for_run(spec, Architecture.from_config(config, result.vocab["rows"]), 1, s.device_type,
                            runtime_bytes=0 if s.cpu else None)
    tokens_per_s = steady_tokens_per_s(records, s.warmup)
    figures: dict[str, Any] = {"tokens_per_s": round(tokens_per_s, 1), "losses": [round(r["loss"], 4)
                                                                                  for r in records],
                               "seconds": round(time.perf_counter() - started, 1)}
    if "mfu" in records[-1]:  # flops_per_token / peak FLOP/s is the record's mfu over its tokens/s
        figures["mfu"] = round(tokens_per_s * records[-1]["mfu"] / records[-1]["tokens_per_s"], 4)
    memory: dict[str, Any] = {"planned_gib": round(plan.allocator_bytes / GIB, 3)}
    if peak is None:
        memory["measured"] = "max_memory_allocated is CUDA's; bench/scale_memory.py checks the CPU plan"
    else:
        memory.update(peak_gib=round(peak / GIB, 3), peak_over_plan=round(peak / plan.allocator_bytes, 3))
    emit("memory", run=name, **memory)
    return figures


def attempt(check: str, name: str, run: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
    """A run whose failure is a finding (a feature not in yet, a kernel missing): reported, the others go on."""
    try:
        return run()
    except Exception as err:
        emit(check, run=name, error=error_text(err))
        return None


@dataclass(frozen=True)
class Baseline:
    """zhllama's plain pretraining run, which the feature variants are measured against."""

    model_dir: Path
    blocks: BlockData
    figures: dict[str, Any]


def throughput_and_memory(s: Setting, scratch: Path) -> Baseline | None:
    """Checks 1 and 2: zhllama's plain run against HF Trainer + PEFT, each fused loss against the plain run, and SFT
    with and without packing. Compiled layers run last, apart (`feature_variants` on the returned baseline)."""
    model_dir = synthetic_model(s.shape, scratch / "model", s.device_type)
    blocks = random_blocks(s.shape["vocab_size"], s.block, 64)
    plain = attempt("throughput", "zhllama", partial(run_zhllama, "zhllama", spec_for(model_dir, s), model_dir,
                                                     blocks, scratch / "zhllama", s))
    if plain is None:
        return None
    emit("throughput", run="zhllama", **plain)
    baseline = Baseline(model_dir, blocks, plain)
    hf_trainer(s, baseline, scratch / "hf")
    fused = ["chunked"]
    if not s.cpu and (found := importable(LIGER)) is True:
        fused.insert(0, "liger")
    elif not s.cpu:
        emit("throughput", run="fused_cross_entropy=liger", skipped=f"liger-kernel is not importable ({found})")
    feature_variants(s, baseline, scratch, {f"fused_cross_entropy={name}": {"fused_cross_entropy": name}
                                            for name in fused})
    packing(s, model_dir, scratch)
    return baseline


def feature_variants(s: Setting, baseline: Baseline, scratch: Path, variants: dict[str, dict[str, Any]],
                     runs: float = 1) -> None:
    """Each variant's spec values on the plain run's model and data: tokens/s and losses against the plain run's."""
    plain = baseline.figures
    for name, values in variants.items():
        if not room_for(s, "throughput", name, runs):
            continue
        figures = attempt("throughput", name, partial(run_zhllama, name, spec_for(baseline.model_dir, s, **values),
                                                      baseline.model_dir, baseline.blocks, scratch / name, s))
        if figures is not None:
            diff = max(abs(a - b) for a, b in zip(figures["losses"], plain["losses"], strict=True))
            emit("throughput", run=name, ratio_vs_plain=round(figures["tokens_per_s"] / plain["tokens_per_s"], 3),
                 loss_diff_vs_plain=round(diff, 5), **figures)


def hf_trainer(s: Setting, baseline: Baseline, scratch: Path) -> None:
    if not room_for(s, "throughput", "hf_trainer_peft"):
        return
    spec, ours = spec_for(baseline.model_dir, s), baseline.figures
    try:
        theirs, peak = with_cuda_peak(partial(trainer_tokens_per_s, spec, baseline.model_dir, baseline.blocks,
                                              scratch, s.warmup))
    except Exception as err:
        emit("throughput", run="hf_trainer_peft", error=error_text(err))
        return
    figures: dict[str, Any] = {"tokens_per_s": round(theirs, 1)}
    if "mfu" in ours:  # the same model and LoRA: the same FLOPs per token
        figures["mfu"] = round(ours["mfu"] * theirs / ours["tokens_per_s"], 4)
    emit("throughput", run="hf_trainer_peft", **figures)
    if peak is not None:
        emit("memory", run="hf_trainer_peft", peak_gib=round(peak / GIB, 3))
    emit("throughput", run="zhllama_vs_hf_trainer_peft", ratio=round(ours["tokens_per_s"] / theirs, 3),
         precision=s.precision, block_size=s.block, micro_batch_size=s.micro)


def packing(s: Setting, model_dir: Path, scratch: Path) -> None:
    """SFT on the same examples, one per row (padded) and packed: real tokens/s of each."""
    rates = {}
    for packed in (False, True):
        name = f"sft packing={str(packed).lower()}"
        if not room_for(s, "throughput", name):
            return
        data = sft_sequences(s.shape["vocab_size"], s.block, 400, packed)
        spec = spec_for(model_dir, s, stage="sft", packing=packed)
        figures = attempt("throughput", name, partial(run_zhllama, name, spec, model_dir, data, scratch / name, s))
        if figures is None:
            return
        rates[packed] = figures["tokens_per_s"]
        emit("throughput", run=name, sequences=len(data), **figures)
    emit("throughput", run="sft packing", ratio_packed_over_unpacked=round(rates[True] / rates[False], 3))


def quantized_bases(s: Setting, scratch: Path) -> None:
    """Check 3: bits 8 and 4 train (loss falls, embed_tokens/lm_head move) and their adapters merge. On CPU the same
    path runs at bits 16: 8 and 4 need CUDA."""
    if s.cpu:
        emit("quantized", bits=[8, 4], skipped="bits 8/4 need CUDA (bitsandbytes); the path below runs at bits 16")
        bits_list = [16]
    elif (found := importable("bitsandbytes")) is not True:
        emit("quantized", bits=[8, 4], skipped=f"bitsandbytes is not importable ({found}): its wheel was not carried "
                                                 "(bench/gpu_wheels.sh --no-bitsandbytes) or does not load here")
        return
    else:
        bits_list = [8, 4]
    model_dir = synthetic_model(s.small_shape, scratch / "model", s.device_type)
    # A repeated handful of blocks at a high rate: the loss must fall within a dozen steps.
    blocks = random_blocks(s.small_shape["vocab_size"], s.block, 4)
    for bits in bits_list:
        if room_for(s, "quantized", f"bits={bits}"):
            attempt("quantized", f"bits={bits}", partial(quantized_run, bits, model_dir, blocks, scratch, s))


def quantized_run(bits: int, model_dir: Path, blocks: BlockData, scratch: Path, s: Setting) -> dict[str, Any]:
    from safetensors.torch import load_file

    from zhllama.merge import merge_lora

    out = scratch / f"bits{bits}"
    # No weight decay: AdamW then moves a weight only along a non-zero gradient, so "moved" means "had a gradient".
    spec = spec_for(model_dir, replace(s, steps=12), bits=bits, gradient_checkpointing=True, lr=2e-3,
                    weight_decay=0.0)
    figures = run_zhllama(f"bits={bits}", spec, model_dir, blocks, out, s)
    losses = figures["losses"]
    base = load_file(str(model_dir / "model.safetensors"))
    adapter = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    trained = {name: next(tensor for key, tensor in adapter.items() if key.endswith(name))
               for name in ("model.embed_tokens.weight", "lm_head.weight")}
    moved = {name.split(".")[-2]: float((tensor.float() - base[name].float()).abs().max())
             for name, tensor in trained.items()}
    dtype = "float32" if s.cpu else "bfloat16"
    merge_lora(model_dir, [out / "adapter"], model_dir, out / "merged", max_shard_bytes=2**31, dtype=dtype)
    merged = {key: tensor for file in (out / "merged").glob("*.safetensors") for key, tensor in load_file(file).items()}
    head_kept = float((merged["lm_head.weight"].float() - trained["lm_head.weight"].float()).abs().max())
    line = {"bits": bits, "gradient_checkpointing": True, "loss_first": losses[0], "loss_last": losses[-1],
            "loss_fell": losses[-1] < losses[0], "max_weight_change": moved,
            "head_and_embeddings_had_gradients": all(change > 0 for change in moved.values()),
            "merged": (out / "merged" / "config.json").is_file() and head_kept < 1e-2,
            "merged_head_max_diff": head_kept, "seconds": figures["seconds"]}
    emit("quantized", **line)
    return line


def two_engines(s: Setting, scratch: Path) -> None:
    """Check 4: ZeRO-2 (DeepSpeed) and the plain engine take the same steps, on one device, from the same seed."""
    if (found := importable("deepspeed")) is not True:
        emit("engines", skipped=f"deepspeed is not importable ({found})")
        return
    model_dir = synthetic_model(s.small_shape, scratch / "model", s.device_type)
    blocks = random_blocks(s.small_shape["vocab_size"], s.block, 64)
    for precision in ["fp32"] if s.cpu else ["bf16", "fp32"]:
        losses: dict[int, list[float]] = {}
        for stage in (0, 2):
            name = f"zero_stage={stage} {precision}"
            if not room_for(s, "engines", name):
                return
            spec = spec_for(model_dir, replace(s, steps=10, precision=precision), zero_stage=stage, seed=7)
            figures = attempt("engines", name, partial(run_zhllama, name, spec, model_dir, blocks,
                                                       scratch / f"zero{stage}-{precision}", s))
            if figures is None:
                break
            losses[stage] = figures["losses"]
        if len(losses) == 2:
            diff = max(abs(a - b) for a, b in zip(losses[0], losses[2], strict=True))
            emit("engines", precision=precision, zero0=losses[0], zero2=losses[2], max_loss_diff=round(diff, 5),
                 agree=diff < 1e-2)


def guarded(check: str, run: Callable[[], Any]) -> Any:
    """Report a check that broke and go on: one broken check must not hide the others."""
    try:
        return run()
    except Exception as err:
        emit(check, error=error_text(err))
        return None


def environment(s: Setting) -> None:
    import peft
    import transformers

    emit("environment", device="cpu" if s.cpu else torch.cuda.get_device_name(), python=platform.python_version(),
         torch=torch.__version__, transformers=transformers.__version__, peft=peft.__version__,
         precision=s.precision, shape=s.shape, block_size=s.block, micro_batch_size=s.micro, steps=s.steps,
         deepspeed=importable("deepspeed"), bitsandbytes=importable("bitsandbytes"), liger_kernel=importable(LIGER),
         flash_attn=importable("flash_attn"))


def summary(started: float) -> None:
    problems = [r for r in RESULTS if "error" in r or False in (r.get("agree"), r.get("loss_fell"), r.get("merged"),
                                                                r.get("head_and_embeddings_had_gradients"))]
    emit("summary", lines=len(RESULTS), skipped=sum("skipped" in r for r in RESULTS), problems=len(problems),
         problem_runs=[f"{r['check']}: {r.get('run', r.get('precision', r.get('bits', '')))}" for r in problems],
         seconds=round(time.monotonic() - started, 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="tiny shapes in fp32 on this machine's CPU")
    parser.add_argument("--budget-s", type=float, default=540,
                        help="no run starts that would end past this many seconds (gpu_check.sh allows 570)")
    args = parser.parse_args()
    if not args.cpu and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device; run with --cpu for the tiny-shape run")
    started = time.monotonic()
    sys.stdout = sys.stderr
    s = setting(args.cpu, args.budget_s)
    environment(s)
    with tempfile.TemporaryDirectory(prefix="zhllama-gpu-check-") as tmp:
        scratch = Path(tmp)
        baseline = guarded("throughput", partial(throughput_and_memory, s, scratch / "throughput"))
        guarded("quantized", partial(quantized_bases, s, scratch / "quantized"))
        guarded("engines", partial(two_engines, s, scratch / "engines"))
        if baseline is not None:  # last: a slow compilation must not starve the other checks of their time
            guarded("compile", partial(feature_variants, s, baseline, scratch / "throughput",
                                       {"compile": {"compile": True}}, runs=3))
    summary(started)


if __name__ == "__main__":
    main()
