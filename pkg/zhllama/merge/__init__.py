"""Merge LoRA adapters (pretraining, then SFT) into the base model, streaming shard by shard."""

from zhllama.merge.merge import merge_lora, plan_merge
from zhllama.merge.stage import parse_size, run_merge

__all__ = ["merge_lora", "parse_size", "plan_merge", "run_merge"]
