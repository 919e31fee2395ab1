"""Peak memory and time of zhllama's streaming merge against PEFT's merge_and_unload, on a >= 2 GB model.

Builds a random LLaMA-shaped base (fp16 safetensors shards), a 49953-token tokenizer and two PEFT-format
adapters (pretraining and SFT: LoRA on q,k,v,o,gate,up,down + full embed_tokens/lm_head copies), then runs
each merge in its own process and prints one JSON line per method (peak RSS from the child's own
getrusage, wall seconds), then one line comparing the two outputs.

    python bench/merge.py [--layers 18] [--hidden 2048] [--max-shard-size 1GB] [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from zhllama.merge import merge_lora, parse_size
from zhllama.merge.shards import write_shards

BASE_VOCAB, EXTENDED_VOCAB = 32000, 49953
TARGETS = {
    "self_attn": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "mlp": ("gate_proj", "up_proj", "down_proj"),
}


def llama_shapes(layers: int, hidden: int, intermediate: int, vocab: int) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(layers):
        prefix = f"model.layers.{i}"
        shapes[f"{prefix}.input_layernorm.weight"] = (hidden,)
        for name in TARGETS["self_attn"]:
            shapes[f"{prefix}.self_attn.{name}.weight"] = (hidden, hidden)
        shapes[f"{prefix}.post_attention_layernorm.weight"] = (hidden,)
        shapes[f"{prefix}.mlp.gate_proj.weight"] = (intermediate, hidden)
        shapes[f"{prefix}.mlp.up_proj.weight"] = (intermediate, hidden)
        shapes[f"{prefix}.mlp.down_proj.weight"] = (hidden, intermediate)
    shapes["model.norm.weight"] = (hidden,)
    shapes["lm_head.weight"] = (vocab, hidden)
    return shapes


def build_base(path: Path, layers: int, hidden: int, intermediate: int, max_shard_bytes: int) -> None:
    path.mkdir(parents=True)
    shapes = llama_shapes(layers, hidden, intermediate, BASE_VOCAB)
    generator = torch.Generator().manual_seed(0)

    def random_tensor(name: str) -> torch.Tensor:
        if len(shapes[name]) == 1:
            return torch.ones(shapes[name])
        return torch.randn(shapes[name], generator=generator, dtype=torch.float16) * 0.02

    write_shards(path, shapes, torch.float16, max_shard_bytes, random_tensor)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": hidden // 128,
        "num_key_value_heads": hidden // 128,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "vocab_size": BASE_VOCAB,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "dtype": "float16",
    }
    (path / "config.json").write_text(json.dumps(config, indent=2))


def build_tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"t{i}": i for i in range(3, EXTENDED_VOCAB)}}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = Whitespace()
    PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    ).save_pretrained(path)


def build_adapter(path: Path, layers: int, hidden: int, intermediate: int, rank: int, seed: int) -> None:
    """A PEFT LoRA adapter directory as PEFT saves it (same keys, same config fields that matter)."""
    path.mkdir(parents=True)
    generator = torch.Generator().manual_seed(seed)
    dims = {"q_proj": (hidden, hidden), "k_proj": (hidden, hidden), "v_proj": (hidden, hidden)}
    dims |= {"o_proj": (hidden, hidden), "gate_proj": (intermediate, hidden), "up_proj": (intermediate, hidden)}
    dims |= {"down_proj": (hidden, intermediate)}
    tensors: dict[str, torch.Tensor] = {}
    for i in range(layers):
        for block, names in TARGETS.items():
            for name in names:
                out_features, in_features = dims[name]
                key = f"base_model.model.model.layers.{i}.{block}.{name}"
                tensors[f"{key}.lora_A.weight"] = torch.randn(rank, in_features, generator=generator) * 0.01
                tensors[f"{key}.lora_B.weight"] = torch.randn(out_features, rank, generator=generator) * 0.01
    for key in ("base_model.model.model.embed_tokens.weight", "base_model.model.lm_head.weight"):
        tensors[key] = torch.randn(EXTENDED_VOCAB, hidden, generator=generator, dtype=torch.float16) * 0.02
    save_file(tensors, str(path / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": rank,
        "lora_alpha": 2 * rank,
        "lora_dropout": 0.0,
        "target_modules": [name for names in TARGETS.values() for name in names],
        "modules_to_save": ["embed_tokens", "lm_head"],
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "inference_mode": True,
        "base_model_name_or_path": None,
    }
    (path / "adapter_config.json").write_text(json.dumps(config, indent=2))


def child_streaming(root: Path, max_shard_bytes: int) -> dict[str, object]:
    summary = merge_lora(
        root / "base",
        [root / "pt-lora", root / "sft-lora"],
        root / "tokenizer",
        root / "merged-zhllama",
        max_shard_bytes=max_shard_bytes,
        dtype="float16",
    )
    return {"shards": summary["shards"]}


def child_naive(root: Path, max_shard_bytes: int) -> dict[str, object]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(root / "base", dtype=torch.float16)
    model.resize_token_embeddings(EXTENDED_VOCAB, mean_resizing=False)
    for adapter in ("pt-lora", "sft-lora"):
        model = PeftModel.from_pretrained(model, root / adapter).merge_and_unload()
    model.save_pretrained(root / "merged-peft", max_shard_size=max_shard_bytes)
    return {}


def run_child(method: str, root: Path, max_shard_bytes: int) -> dict[str, object]:
    done = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            method,
            "--workdir",
            str(root),
            "--max-shard-bytes",
            str(max_shard_bytes),
        ],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"{method} merge failed:\n{done.stderr[-3000:]}")
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def compare_outputs(root: Path) -> dict[str, object]:
    """The two merges must agree: same tensors, differences only from fp16 rounding order."""

    def load(directory: Path, name: str) -> torch.Tensor:
        index = json.loads((directory / "model.safetensors.index.json").read_text())["weight_map"]
        with safe_open(str(directory / index[name]), framework="pt") as handle:
            return handle.get_tensor(name).float()

    names = ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.down_proj.weight", "lm_head.weight"]
    differences = {
        name: float((load(root / "merged-zhllama", name) - load(root / "merged-peft", name)).abs().max())
        for name in names
    }
    return {"check": "max |zhllama - peft| per tensor", **differences}


def largest_file_mb(directory: Path) -> float:
    return max(path.stat().st_size for path in directory.glob("*.safetensors")) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=18)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--intermediate", type=int, default=5632)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--max-shard-size", default="1GB")
    parser.add_argument("--max-shard-bytes", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the built models")
    parser.add_argument("--child", choices=["streaming", "naive"], help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        child_main(args)
    else:
        compare_merges(args)


def child_main(args: argparse.Namespace) -> None:
    """One merge method in a process of its own, so its peak RSS is its own."""
    started = time.perf_counter()
    extra = (child_streaming if args.child == "streaming" else child_naive)(args.workdir, args.max_shard_bytes)
    seconds = time.perf_counter() - started
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: kilobytes
    print(json.dumps({"seconds": round(seconds, 1), "peak_rss_mb": round(peak_kb * 1024 / 1e6, 1), **extra}))


def compare_merges(args: argparse.Namespace) -> None:
    """Build the random base and adapters, then run both merges side by side and compare their outputs."""
    max_shard_bytes = parse_size(args.max_shard_size)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="bench-merge-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        started = time.perf_counter()
        build_base(root / "base", args.layers, args.hidden, args.intermediate, max_shard_bytes)
        build_tokenizer(root / "tokenizer")
        for name, seed in (("pt-lora", 1), ("sft-lora", 2)):
            build_adapter(root / name, args.layers, args.hidden, args.intermediate, args.rank, seed)
        base_bytes = sum(path.stat().st_size for path in (root / "base").glob("*.safetensors"))
        print(
            json.dumps(
                {
                    "setup": "random LLaMA base, fp16",
                    "layers": args.layers,
                    "hidden": args.hidden,
                    "base_gb": round(base_bytes / 1e9, 2),
                    "largest_base_shard_mb": round(largest_file_mb(root / "base"), 1),
                    "adapter_mb": round((root / "sft-lora" / "adapter_model.safetensors").stat().st_size / 1e6, 1),
                    "vocab": f"{BASE_VOCAB} -> {EXTENDED_VOCAB}",
                    "build_seconds": round(time.perf_counter() - started, 1),
                }
            ),
            flush=True,
        )
        for method, label, out in (
            ("streaming", "zhllama merge_lora (streaming)", "merged-zhllama"),
            ("naive", "PeftModel.merge_and_unload (whole model)", "merged-peft"),
        ):
            result = run_child(method, root, max_shard_bytes)
            largest = largest_file_mb(root / out)
            budget = largest + 1000  # MB
            print(
                json.dumps(
                    {
                        "method": label,
                        **result,
                        "largest_output_shard_mb": round(largest, 1),
                        "within_largest_shard_plus_1gb": float(result["peak_rss_mb"]) <= budget,  # type: ignore[arg-type]
                    }
                ),
                flush=True,
            )
        print(json.dumps(compare_outputs(root)), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
