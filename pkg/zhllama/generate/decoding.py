"""Sampling with the paper's decoding settings, streamed as it is produced: what generate, chat and the eval
report's sample outputs all decode with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TextIO

import torch
from transformers import PreTrainedTokenizerBase, TextStreamer

from zhllama.models.loading import encode, model_device
from zhllama.spec.models import GenerateSpec


@dataclass(frozen=True)
class DecodingSettings:
    """Sampling settings; the defaults are the paper's (as in Chinese-LLaMA-Alpaca's inference scripts)."""

    temperature: float = 0.2
    """0 decodes greedily."""
    top_k: int = 40
    top_p: float = 0.9
    repetition_penalty: float = 1.1
    max_new_tokens: int = 512


PAPER_DECODING = DecodingSettings()


def decoding_settings(spec: GenerateSpec) -> DecodingSettings:
    return DecodingSettings(
        temperature=spec.temperature,
        top_k=spec.top_k,
        top_p=spec.top_p,
        repetition_penalty=spec.repetition_penalty,
        max_new_tokens=spec.max_new_tokens,
    )


class _WriterStreamer(TextStreamer):
    """TextStreamer that writes the new text to any stream (the base class prints to stdout)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, out: TextIO) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.out = out

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        self.out.write(text + ("\n" if stream_end else ""))
        self.out.flush()


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    settings: DecodingSettings = PAPER_DECODING,
    out: TextIO | None = None,
) -> str:
    """The model's continuation of `prompt` (special tokens removed), streamed to `out` while it is generated."""
    input_ids = torch.tensor([encode(tokenizer, prompt)], device=model_device(model))
    sampling = (
        {"do_sample": True, "temperature": settings.temperature, "top_k": settings.top_k, "top_p": settings.top_p}
        if settings.temperature > 0
        else {"do_sample": False}
    )
    eos = tokenizer.eos_token_id
    output = model.generate(  # type: ignore[operator]
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=settings.max_new_tokens,
        repetition_penalty=settings.repetition_penalty,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos,
        streamer=_WriterStreamer(tokenizer, out) if out is not None else None,
        **sampling,
    )
    return str(tokenizer.decode(output[0, input_ids.shape[1] :], skip_special_tokens=True))
