"""Continued pretraining and SFT of a LoRA adapter (+ full embeddings/head): one loop, plain PyTorch or DeepSpeed."""

from zhllama.train.checkpoint import Checkpoints, TrainerState
from zhllama.train.distributed import DistEnv, init_distributed
from zhllama.train.engine import deepspeed_config, lr_lambda, resolve_precision
from zhllama.train.loop import TrainResult, build_model, train, write_adapter
from zhllama.train.model import (
    ADAPTER_RECORD,
    add_lora,
    check_quantization_supported,
    import_gguf,
    load_base,
    load_tokenizer,
    merge_adapters,
    resize_vocabulary,
    untie_embeddings,
)
from zhllama.train.stage import base_model_dir, pretrain_dataset, run_pretrain, run_sft, run_train, sft_dataset

__all__ = [
    "ADAPTER_RECORD", "Checkpoints", "DistEnv", "TrainResult", "TrainerState", "add_lora", "base_model_dir",
    "build_model", "check_quantization_supported", "deepspeed_config", "import_gguf", "init_distributed",
    "load_base", "load_tokenizer", "lr_lambda", "merge_adapters", "pretrain_dataset", "resize_vocabulary",
    "resolve_precision", "run_pretrain", "run_sft", "run_train", "sft_dataset", "train", "untie_embeddings",
    "write_adapter",
]
