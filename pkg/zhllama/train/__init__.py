"""Continued pretraining and SFT of a LoRA adapter (+ full embeddings/head), as a recipe: `setup` (recipe.py) builds
a TrainSetup, `fit` (loop.py) trains it, the stage (stage.py) publishes. Plain PyTorch or DeepSpeed (engine.py)."""

from zhllama.train.checkpoint import Checkpoints, TrainerState
from zhllama.train.datasets import Dataset, pretrain_dataset, sft_dataset
from zhllama.train.distributed import DistEnv, process_env, start_process_group
from zhllama.train.engine import build_engine, deepspeed_config, lr_lambda, resolve_precision
from zhllama.train.loop import TrainResult, fit, train, write_adapter
from zhllama.train.model import (
    add_lora,
    check_quantization_supported,
    load_base,
    merge_adapters,
    resize_vocabulary,
    untie_embeddings,
)
from zhllama.train.recipe import TrainInputs, TrainOutputs, TrainSetup, build_model, local_setup, prepare, setup
from zhllama.train.stage import run_pretrain, run_sft, run_train

__all__ = [
    "Checkpoints", "Dataset", "DistEnv", "TrainInputs", "TrainOutputs", "TrainResult",
    "TrainSetup", "TrainerState", "add_lora", "build_engine", "build_model", "check_quantization_supported",
    "deepspeed_config", "fit", "load_base", "local_setup", "lr_lambda", "merge_adapters", "prepare",
    "pretrain_dataset", "process_env", "resize_vocabulary", "resolve_precision", "run_pretrain", "run_sft",
    "run_train", "setup", "sft_dataset", "start_process_group", "train", "untie_embeddings", "write_adapter",
]
