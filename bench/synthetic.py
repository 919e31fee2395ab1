"""Synthesized training inputs for the GPU check (bench/gpu_check.py): a random LLaMA from a config with a tokenizer
of exactly its vocabulary, random pretraining blocks, SFT-like examples one per row or packed. Nothing downloaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from zhllama.data import IGNORE_INDEX, BlockData, Sample, SequenceData, pack_sequences


def synthetic_model(shape: dict[str, Any], out: Path, device_type: str) -> Path:
    """A random LLaMA of `shape` in the compute dtype, with a word-level tokenizer of exactly its vocabulary (so
    training resizes nothing)."""
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
    with torch.device(device_type):  # a 1B random init takes seconds on the GPU, minutes on a few cores
        model = LlamaForCausalLM._from_config(config, dtype=torch.float32 if device_type == "cpu" else torch.bfloat16)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def random_blocks(vocab: int, block: int, count: int) -> BlockData:
    return BlockData(np.random.default_rng(0).integers(4, vocab, size=(count, block), dtype=np.int64))


def sft_sequences(vocab: int, block: int, count: int, packing: bool) -> SequenceData:
    """The same SFT-like examples (16 to block/2 tokens, the first half a masked prompt), one per sequence or packed
    whole into blocks by zhllama's packer."""
    rng = np.random.default_rng(1)
    examples = []
    for _ in range(count):
        ids = rng.integers(4, vocab, size=int(rng.integers(16, block // 2))).tolist()
        half = len(ids) // 2
        examples.append((ids, [IGNORE_INDEX] * half + ids[half:]))
    if not packing:
        return SequenceData([Sample(np.asarray(ids), np.asarray(labels)) for ids, labels in examples])
    return SequenceData([Sample(np.asarray(ids), np.asarray(labels), np.asarray(positions))
                         for ids, labels, positions in pack_sequences(examples, block)])
