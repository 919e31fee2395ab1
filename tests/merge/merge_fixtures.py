"""Builders for tiny LLaMA bases, tokenizers and PEFT adapters (random, non-zero LoRA B)."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

from tests.fixtures.tiny_llama import tiny_llama

BASE_VOCAB = 256
EXTENDED_VOCAB = 300
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def merge_llama(tied: bool, hidden: int = 64, layers: int = 2, seed: int = 0) -> LlamaForCausalLM:
    """The tests' tiny LLaMA with a short context, and the width and depth the architecture checks vary."""
    return tiny_llama(BASE_VOCAB, seed, tied=tied, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, max_position_embeddings=64)


def save_base(path: Path, tied: bool, hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    merge_llama(tied, hidden, layers, seed).save_pretrained(path)
    return path


def save_tokenizer(path: Path, size: int) -> Path:
    """A word-level tokenizer with exactly `size` tokens (the merge only cares about its length)."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, size)}}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    tokenizer.save_pretrained(path)
    return path


def train_adapter(model: PreTrainedModel, path: Path, rank: int, seed: int, rslora: bool = False) -> PeftModel:
    """Attach a LoRA adapter and give every trainable tensor random values, as training would."""
    torch.manual_seed(seed)
    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=TARGETS,
        modules_to_save=["embed_tokens", "lm_head"],
        use_rslora=rslora,
    )
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)
            elif "modules_to_save" in name:
                parameter.add_(torch.randn_like(parameter) * 0.05)
    peft_model.save_pretrained(path)
    return peft_model
