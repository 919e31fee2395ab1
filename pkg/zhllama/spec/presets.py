"""Size presets: the paper's recipe lives in the spec defaults; a preset adds what changes with model size.

`tiny` trains a 2-layer, 64-wide LLaMA in seconds (tests); `smol` is the embedded SmolLM2-135M sized for a
2-core laptop (`make demo`); 7b-65b are cluster runs whose base weights the user uploads to the store first.
Global batch for the cluster sizes follows the paper (about 1024 sequences of 512 tokens).
"""

from __future__ import annotations

from typing import Any

TINY_DATA = {
    "train": "embedded://peoples-daily-tiny",
    "heldout": "embedded://peoples-daily-heldout-tiny",
    "sft": "embedded://sft-train-tiny",
}

# The demo's pretraining mixture: People's Daily, with English replay so the model keeps some English (the
# report shows English perplexity before and after). Pretrain and prepare read this one list.
SMOL_DATA = [{"uri": "embedded://peoples-daily-train", "weight": 0.9},
             {"uri": "embedded://english-replay", "weight": 0.1}]
TINY_PRETRAIN_DATA = [{"uri": TINY_DATA["train"], "weight": 0.9},
                      {"uri": "embedded://english-replay-tiny", "weight": 0.1}]

# The demo report's held-out tasks (the two skills the embedded SFT data teaches), and its sample instructions:
# an open question the SFT data never asks, and one unseen example of each task.
DEMO_TASKS = ["embedded://sentiment-heldout", "embedded://segmentation-heldout"]
DEMO_PROMPTS = [
    "用一句话介绍一下北京。",
    "判断下面评论的情感倾向，回答正面或负面。\n房间很干净，服务也很周到，下次还会再来。",
    "对下面的句子进行分词，词之间用/分隔。\n我们要加快经济体制改革",
]


def _cluster(base: str, nodes: int, gpus: int, bits: int, micro: int, accum: int, memory: str,
             checkpointing: bool = False) -> dict[str, Any]:
    """`checkpointing`: where the memory plan (zhllama.train.memory) does not fit 80 GiB GPUs without it."""
    weights = f"store://models/{base}"
    tokenizer = f"store://tokenizers/{base}-zh"
    return {
        "common": {"resources": {"nodes": nodes, "gpus_per_node": gpus, "cpu": "32", "memory": memory}},
        "tokenizer": {
            "base_tokenizer": weights,
            "corpus": ["store://data/pretrain"],
            "heldout": [],
            "resources": {"nodes": 1, "gpus_per_node": 0, "cpu": "8"},
        },
        "prepare": {
            "tokenizer": tokenizer,
            "data": ["store://data/pretrain"],
            # 32 pods x 16 cores: see bench/prepare.py for the projected wall time of 120 GB.
            "workers": 32,
            "resources": {"nodes": 1, "gpus_per_node": 0, "cpu": "16", "memory": "32Gi"},
        },
        "pretrain": {
            "base_model": weights,
            "tokenizer": tokenizer,
            "data": ["store://data/pretrain"],
            "bits": bits,
            "micro_batch_size": micro,
            "grad_accum_steps": accum,
            "gradient_checkpointing": checkpointing,
            "max_steps": 6000,
            "checkpoint_every": 200,
            "log_every": 10,
        },
        "sft": {
            "base_model": weights,
            "tokenizer": tokenizer,
            "data": ["store://data/sft"],
            "bits": bits,
            "micro_batch_size": micro,
            "grad_accum_steps": accum,
            "gradient_checkpointing": checkpointing,
            "max_steps": 3000,
            # The reference run_sft.sh (Chinese-LLaMA-Alpaca); pretraining keeps the spec defaults 2e-4/0.05/0.01.
            "lr": 1e-4,
            "warmup_ratio": 0.03,
            "weight_decay": 0.0,
            "checkpoint_every": 200,
            "log_every": 10,
        },
        "merge": {
            "base_model": weights,
            "tokenizer": tokenizer,
            "resources": {"nodes": 1, "gpus_per_node": 0, "cpu": "8"},
        },
        "quantize": {"resources": {"nodes": 1, "gpus_per_node": 0, "cpu": "16"}},
        "eval": {"resources": {"nodes": 1, "gpus_per_node": 1, "cpu": "8"}},
        "generate": {"resources": {"nodes": 1, "gpus_per_node": 1, "cpu": "8"}},
    }


PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {
        "common": {"resources": {"nodes": 1, "gpus_per_node": 0, "nproc_per_node": 1, "cpu": "2", "memory": "4Gi"}},
        "tokenizer": {
            "base_tokenizer": "embedded://tiny-llama",
            "corpus": [TINY_DATA["train"]],
            "heldout": [TINY_DATA["heldout"]],
            "vocab_size": 4000,
        },
        "prepare": {"tokenizer": "embedded://tiny-llama", "data": TINY_PRETRAIN_DATA, "block_size": 64,
                    "shard_mb": 1},
        "pretrain": {
            "base_model": "embedded://tiny-llama",
            "tokenizer": "embedded://tiny-llama",
            "data": TINY_PRETRAIN_DATA,
            "block_size": 64,
            "micro_batch_size": 4,
            "max_steps": 8,
            "zero_stage": 0,
            "log_every": 1,
            "checkpoint_every": 4,
            "lr": 1e-3,
        },
        "sft": {
            "base_model": "embedded://tiny-llama",
            "tokenizer": "embedded://tiny-llama",
            "data": [TINY_DATA["sft"]],
            "block_size": 160,
            "micro_batch_size": 4,
            "max_steps": 6,
            "zero_stage": 0,
            "log_every": 1,
            "checkpoint_every": 3,
            "lr": 1e-3,
        },
        "merge": {"base_model": "embedded://tiny-llama", "max_shard_size": "2MB", "dtype": "float32"},
        "quantize": {"types": ["F16", "Q8_0", "Q4_0"], "heldout": [TINY_DATA["heldout"]], "max_eval_chars": 2000},
        "eval": {"heldout": [TINY_DATA["heldout"], "embedded://english-heldout-tiny"], "window": 64, "stride": 32,
                 "max_chars": 2000,
                 "tasks": DEMO_TASKS, "max_task_examples": 4, "sample_prompts": DEMO_PROMPTS[:1],
                 "max_new_tokens": 8},
        "generate": {"max_new_tokens": 16},
    },
    "smol": {
        "common": {"resources": {"nodes": 1, "gpus_per_node": 0, "nproc_per_node": 1, "cpu": "2", "memory": "8Gi"}},
        "tokenizer": {"vocab_size": 20000},
        # bf16 autocast: twice fp32's speed on AVX-512 CPUs; 80 steps (~41k tokens)
        # cut held-out perplexity by ~40% (the demo report).
        "prepare": {"data": SMOL_DATA, "block_size": 256, "shard_mb": 64},
        "pretrain": {
            "data": SMOL_DATA,
            "block_size": 256,
            "micro_batch_size": 2,
            "grad_accum_steps": 1,
            "max_steps": 80,
            "precision": "bf16",
            "zero_stage": 0,
            "log_every": 5,
            "checkpoint_every": 40,
            "lr": 2e-3,
        },
        "sft": {
            "data": ["embedded://sft-train"],
            "block_size": 128,
            "micro_batch_size": 8,
            # 30 steps at 1e-3 end where 100 at 5e-4 did (format learned, held-out perplexity within 1.15x of
            # pretraining's) in a third of the time; 2e-3 x 100 costs perplexity (2.3x) and teaches no more.
            "max_steps": 30,
            "precision": "bf16",
            "zero_stage": 0,
            "log_every": 5,
            "checkpoint_every": 15,
            "lr": 1e-3,
            # embed_tokens/lm_head stay as pretraining left them: SFT's narrow answers would pull them away
            "lora": {"modules_to_save": []},
        },
        "merge": {"max_shard_size": "500MB", "dtype": "float32"},
        "quantize": {"types": ["F16", "Q8_0", "Q6_K", "Q4_K_M", "Q4_0"], "max_eval_chars": 20000},
        "eval": {"heldout": ["embedded://peoples-daily-heldout", "embedded://english-heldout"],
                 "max_chars": 4000, "stride": 448, "tasks": DEMO_TASKS, "max_task_examples": 80,
                 "sample_prompts": DEMO_PROMPTS, "max_new_tokens": 64},
        "generate": {"max_new_tokens": 64},
    },
    "7b": _cluster("llama-7b", nodes=2, gpus=8, bits=16, micro=8, accum=8, memory="400Gi"),
    "13b": _cluster("llama-13b", nodes=4, gpus=8, bits=16, micro=4, accum=8, memory="600Gi"),
    "33b": _cluster("llama-33b", nodes=6, gpus=8, bits=8, micro=2, accum=11, memory="900Gi", checkpointing=True),
    "65b": _cluster("llama-65b", nodes=8, gpus=8, bits=4, micro=2, accum=8, memory="1200Gi", checkpointing=True),
}
# The paper's 7B recipe trains the embeddings alone first, then LoRA + embeddings.
PRESETS["7b"]["pretrain"]["embedding_only_steps"] = 500


def preset_values(size: str, stage: str) -> dict[str, Any]:
    """The preset's values for one stage: the size's common settings, then the stage's own."""
    preset = PRESETS[size]
    return deep_merge(preset.get("common", {}), preset.get(stage, {}))


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
