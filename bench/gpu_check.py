"""The GPU check of the training paths, one JSON line per figure (run through bench/gpu_check.sh).

  python bench/gpu_check.py [--cpu] [--steps N]

On a GPU (bf16, a 1B-class LLaMA shape, synthesized: random init from a config, random token blocks):
  1. throughput: tokens/s and MFU of zhllama's pretrain loop against HF Trainer + PEFT on the same model, data and
     LoRA, as a ratio; and zhllama with the fused loss, with packed SFT batches and with compiled layers.
  2. memory: torch.cuda.max_memory_allocated of each run against the memory plan's estimate for it.
  3. quantized bases: bits 8 and 4 with gradient checkpointing on a small shape: the loss falls, embed_tokens and
     lm_head move (their gradients were not zero), and the adapter merges.
  4. engines: zero_stage 2 against zero_stage 0 on one device, 10 steps, the same seed: per-step losses within 1e-2.
--cpu runs the same checks with tiny shapes in fp32 (the fused loss is then `chunked`; 8/4 bits report why not).
A check that cannot run prints a line saying why; the last line sums up.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from train import metric_records, steady_tokens_per_s, trainer_tokens_per_s  # noqa: E402  (bench/train.py)
from zhllama.data import BlockData, Sample, SequenceData  # noqa: E402
from zhllama.data.sft import pack_sequences  # noqa: E402
from zhllama.spec import TrainSpec  # noqa: E402
from zhllama.train import train  # noqa: E402
from zhllama.train.architecture import Architecture  # noqa: E402
from zhllama.train.memory import estimate_for_run  # noqa: E402

GPU_SHAPE = {"num_hidden_layers": 16, "hidden_size": 2048, "intermediate_size": 5632, "num_attention_heads": 16,
             "num_key_value_heads": 16, "vocab_size": 49954}
SMALL_GPU_SHAPE = {"num_hidden_layers": 4, "hidden_size": 512, "intermediate_size": 1376, "num_attention_heads": 8,
                   "num_key_value_heads": 8, "vocab_size": 49954}
CPU_SHAPE = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": 2000}
RESULTS: list[dict[str, Any]] = []


def emit(check: str, **figures: Any) -> None:
    line = {"check": check, **figures}
    RESULTS.append(line)
    print(json.dumps(line), flush=True)


def synthetic_model(shape: dict[str, Any], out: Path) -> Path:
    """A random LLaMA of `shape` and a word-level tokenizer of exactly its vocabulary (no resize in training)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    vocab = {token: i for i, token in enumerate(specials + [f"t{i}" for i in range(shape["vocab_size"] - 4)])}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="<unk>")),
                                        unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    torch.manual_seed(0)
    config = LlamaConfig(**shape, max_position_embeddings=4096, bos_token_id=1, eos_token_id=2, pad_token_id=3,
                         tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def random_blocks(vocab: int, block: int, count: int) -> BlockData:
    return BlockData(np.random.default_rng(0).integers(4, vocab, size=(count, block), dtype=np.int64))


def packed_examples(vocab: int, block: int, count: int) -> SequenceData:
    """SFT-like examples of 16..block/2 tokens (prompt half masked), packed whole into blocks."""
    rng = np.random.default_rng(1)
    examples = []
    for _ in range(count):
        ids = rng.integers(4, vocab, size=int(rng.integers(16, block // 2))).tolist()
        half = len(ids) // 2
        examples.append((ids, [-100] * half + ids[half:]))
    return SequenceData([Sample(np.asarray(i), np.asarray(lab), np.asarray(pos))
                         for i, lab, pos in pack_sequences(examples, block)])


def spec_for(model_dir: Path, run: dict[str, Any], **values: Any) -> TrainSpec:
    return TrainSpec.model_validate({
        "run_id": "gpu-check", "base_model": f"file://{model_dir}", "tokenizer": f"file://{model_dir}", "data": [],
        "block_size": run["block"], "micro_batch_size": run["micro"], "max_steps": run["steps"], "zero_stage": 0,
        "log_every": 1, "checkpoint_every": 10**6, "precision": run["precision"], "warmup_ratio": 0.0,
        "fused_cross_entropy": "off", **values,
    })


def run_zhllama(spec: TrainSpec, model_dir: Path, data: Any, scratch: Path) -> dict[str, Any]:
    """One training run: steady tokens/s, MFU, losses, peak device memory, and the memory plan for it."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    result = train(spec, base_model_dir=model_dir, tokenizer_dir=model_dir, dataset=data,
                   output_dir=scratch / "adapter", metrics_dir=scratch / "metrics")
    records = metric_records(scratch / "metrics")
    config = json.loads((model_dir / "config.json").read_text())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    plan = estimate_for_run(spec, Architecture.from_config(config, result.vocab["rows"]), 1, device)
    figures: dict[str, Any] = {
        "tokens_per_s": round(steady_tokens_per_s(records), 1), "losses": [round(r["loss"], 4) for r in records],
        "seconds": round(time.perf_counter() - started, 1), "planned_gib": round(plan.allocator_bytes / 2**30, 2),
    }
    mfu = [r["mfu"] for r in records[1:] if "mfu" in r]
    if mfu:
        figures["mfu"] = round(sum(mfu) / len(mfu), 4)
    if device == "cuda":
        figures["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        figures["peak_over_plan"] = round(figures["peak_gib"] / figures["planned_gib"], 3)
    return figures


def throughput_and_memory(run: dict[str, Any], scratch: Path) -> None:
    """Checks 1 and 2: zhllama against HF Trainer + PEFT, then each throughput feature on and off."""
    model_dir = synthetic_model(run["shape"], scratch / "model")
    vocab = run["shape"]["vocab_size"]
    blocks = random_blocks(vocab, run["block"], 64)
    base = spec_for(model_dir, run)
    ours = run_zhllama(base, model_dir, blocks, scratch / "zhllama")
    emit("throughput", impl="zhllama", **ours)
    theirs = trainer_tokens_per_s(base, model_dir, blocks, scratch / "hf")
    emit("throughput", impl="hf_trainer_peft", tokens_per_s=round(theirs, 1))
    emit("throughput", ratio_zhllama_over_hf=round(ours["tokens_per_s"] / theirs, 3))
    fused = "chunked" if run["cpu"] else "liger" if importlib.util.find_spec("liger_kernel") else "chunked"
    variants: dict[str, tuple[dict[str, Any], Any]] = {
        f"fused_cross_entropy={fused}": ({"fused_cross_entropy": fused}, blocks),
        "packing (SFT)": ({"stage": "sft", "packing": True}, packed_examples(vocab, run["block"], 400)),
        "compile": ({"compile": True}, blocks),
    }
    for name, (values, data) in variants.items():
        try:
            figures = run_zhllama(spec_for(model_dir, run, **values), model_dir, data, scratch / name)
        except Exception as err:  # a variant that fails is a finding, the others still run
            emit("throughput", variant=name, error=f"{type(err).__name__}: {str(err).splitlines()[0][:300]}")
            continue
        if name.startswith("fused"):
            figures["loss_diff_vs_off"] = round(max(abs(a - b) for a, b in zip(figures["losses"], ours["losses"],
                                                                               strict=True)), 5)
        emit("throughput", variant=name, ratio_vs_plain=round(figures["tokens_per_s"] / ours["tokens_per_s"], 3),
             **figures)


def quantized_bases(run: dict[str, Any], scratch: Path) -> None:
    """Check 3: bits 8 and 4 train (loss falls, embed_tokens/lm_head move) and their adapters merge."""
    if run["cpu"] or importlib.util.find_spec("bitsandbytes") is None:
        why = "needs CUDA" if run["cpu"] else "bitsandbytes is not installed (not in the carried wheels)"
        emit("quantized", skipped=why)
        return
    from safetensors.torch import load_file

    from zhllama.merge.merge import merge_lora

    model_dir = synthetic_model(SMALL_GPU_SHAPE, scratch / "small")
    base = load_file(str(model_dir / "model.safetensors"))
    small = {**run, "block": 256, "steps": 12}
    # A repeated handful of blocks: the loss must fall within a dozen steps.
    blocks = random_blocks(SMALL_GPU_SHAPE["vocab_size"], 256, 8)
    for bits in (8, 4):
        out = scratch / f"bits{bits}"
        spec = spec_for(model_dir, small, bits=bits, gradient_checkpointing=True, lr=2e-3)
        figures = run_zhllama(spec, model_dir, blocks, out)
        losses = figures["losses"]
        adapter = load_file(str(out / "adapter" / "adapter_model.safetensors"))
        moved = {name: float((adapter[key].float() - base[name].float()).abs().max())
                 for name in ("model.embed_tokens.weight", "lm_head.weight")
                 for key in adapter if key.endswith(name)}
        merge_lora(model_dir, [out / "adapter"], model_dir, out / "merged", max_shard_bytes=2**31, dtype="bfloat16")
        emit("quantized", bits=bits, loss_first=losses[0], loss_last=losses[-1],
             loss_fell=sum(losses[-3:]) < sum(losses[:3]), max_change=moved,
             merged=(out / "merged" / "config.json").is_file(), peak_gib=figures.get("peak_gib"))


def two_engines(run: dict[str, Any], scratch: Path) -> None:
    """Check 4: ZeRO-2 (DeepSpeed) and the plain engine take the same steps."""
    if importlib.util.find_spec("deepspeed") is None:
        emit("engines", skipped="deepspeed is not installed (not in the carried wheels)")
        return
    model_dir = synthetic_model(run["shape"] if run["cpu"] else SMALL_GPU_SHAPE, scratch / "engines-model")
    blocks = random_blocks((run["shape"] if run["cpu"] else SMALL_GPU_SHAPE)["vocab_size"], run["block"], 64)
    steps = {**run, "steps": 10}
    losses = {stage: run_zhllama(spec_for(model_dir, steps, zero_stage=stage, seed=7), model_dir, blocks,
                                 scratch / f"zero{stage}")["losses"] for stage in (0, 2)}
    diff = max(abs(a - b) for a, b in zip(losses[0], losses[2], strict=True))
    emit("engines", zero0=losses[0], zero2=losses[2], max_loss_diff=round(diff, 5), agree=diff < 1e-2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="tiny shapes in fp32 on this machine's CPU")
    parser.add_argument("--steps", type=int, default=None, help="steps per throughput run (default 12 GPU, 4 CPU)")
    args = parser.parse_args()
    if not args.cpu and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device; run with --cpu for the tiny-shape run")
    run = {"cpu": args.cpu, "shape": CPU_SHAPE if args.cpu else GPU_SHAPE, "block": 64 if args.cpu else 512,
           "micro": 2 if args.cpu else 4, "steps": args.steps or (4 if args.cpu else 12),
           "precision": "fp32" if args.cpu else "bf16"}
    device = "cpu" if args.cpu else torch.cuda.get_device_name()
    emit("environment", device=device, torch=torch.__version__, **{
        name: importlib.util.find_spec(name) is not None
        for name in ("deepspeed", "bitsandbytes", "liger_kernel", "flash_attn")})
    with tempfile.TemporaryDirectory(prefix="zhllama-gpu-check-") as tmp:
        for check in (throughput_and_memory, quantized_bases, two_engines):
            scratch = Path(tmp) / check.__name__
            try:
                check(run, scratch)
            except Exception as err:  # report and go on: one broken check must not hide the others
                emit(check.__name__, error=f"{type(err).__name__}: {str(err).splitlines()[0][:300]}")
    failed = [r for r in RESULTS if "error" in r or r.get("agree") is False or r.get("loss_fell") is False]
    emit("summary", lines=len(RESULTS), problems=len(failed))


if __name__ == "__main__":
    main()
