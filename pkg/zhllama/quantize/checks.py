"""Checks of a written GGUF file: it reads back, transformers loads it, and it predicts like the HF model."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import gguf
import torch


def read_back(reader: gguf.GGUFReader, hf_tokens: list[str]) -> dict[str, Any]:
    """What gguf.GGUFReader read of the file; the token list must hold the HF tokens at the same ids."""
    fields = reader.fields
    tokens = fields["tokenizer.ggml.tokens"].contents()
    embedding = next(t for t in reader.tensors if t.name == "token_embd.weight")
    rows = int(embedding.shape[-1])  # GGUF lists dimensions innermost first
    mismatched = [i for i, (ours, theirs) in enumerate(zip(tokens, hf_tokens, strict=False)) if ours != theirs]
    return {
        "architecture": fields["general.architecture"].contents(),
        "tensors": len(reader.tensors),
        "tensor_types": dict(Counter(t.tensor_type.name for t in reader.tensors)),
        "tokens": len(tokens),
        "embedding_rows": rows,
        "tokens_match_hf": not mismatched and len(tokens) >= len(hf_tokens),
        "first_mismatched_id": mismatched[0] if mismatched else None,
        "ok": len(tokens) == rows and not mismatched and len(tokens) >= len(hf_tokens),
    }


def load_with_transformers(path: Path) -> torch.nn.Module:
    """The GGUF file dequantized by transformers (its own GGUF reader and Q/K un-permutation, not ours)."""
    from transformers import AutoModelForCausalLM

    model: torch.nn.Module = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return model.eval()


@torch.no_grad()
def compare_logits(logits: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """How far a file's logits are from the HF model's on the same tokens."""
    logits, reference = logits.float(), reference.float()
    return {
        "logits_max_abs_diff": float((logits - reference).abs().max()),
        "top1_agreement": float((logits.argmax(-1) == reference.argmax(-1)).float().mean()),
    }


@torch.no_grad()
def model_logits(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    return model(torch.tensor([ids])).logits[0]
