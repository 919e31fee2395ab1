"""Sampling with the paper's decoding settings, streamed as it is produced; the interactive chat loop."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import torch
from transformers import PreTrainedTokenizerBase, TextStreamer

from zhllama.errors import UserError
from zhllama.eval.loading import context_length, load_spec_model, model_device
from zhllama.eval.scoring import encode
from zhllama.prompts import chat_prompt
from zhllama.runs import RunContext
from zhllama.spec.models import GenerateSpec

CHAT_HELP = "Type a message; /reset clears the conversation, /exit or Ctrl-D quits."


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


def read_prompts(path: Path) -> list[tuple[str, str]]:
    """(instruction, input) pairs: JSONL with `instruction` (and optional `input`), or one prompt per line."""
    prompts = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            if path.suffix != ".jsonl":
                prompts.append((line.rstrip("\n"), ""))
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise UserError(f"{path}:{number}: not valid JSON ({error.msg}); write one object per line") from error
            if not isinstance(record, dict) or not isinstance(record.get("instruction"), str):
                raise UserError(f"{path}:{number}: each JSONL line needs a string field `instruction`")
            prompts.append((record["instruction"], str(record.get("input") or "")))
    return prompts


def chat(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    settings: DecodingSettings = PAPER_DECODING,
    read: Callable[[str], str] = input,
    out: TextIO | None = None,
) -> list[tuple[str, str]]:
    """Multi-turn chat on a terminal; returns the conversation (the turns since the last /reset).

    Each answer is generated from the whole conversation in the Alpaca multi-turn layout; the oldest turns are
    dropped when the prompt and the answer would not fit the model's context.
    """
    out = out or sys.stdout  # looked up per call: the terminal may have been redirected since import
    history: list[tuple[str, str]] = []
    out.write(CHAT_HELP + "\n")
    budget = context_length(model) - settings.max_new_tokens
    while True:
        try:
            message = read("Human: ").strip()
        except EOFError:
            out.write("\n")
            return history
        if message in ("/exit", "/quit"):
            return history
        if message == "/reset":
            history.clear()
            continue
        if not message:
            continue
        prompt = chat_prompt(history, message)
        while history and len(encode(tokenizer, prompt)) > budget:
            history.pop(0)
            prompt = chat_prompt(history, message)
        out.write("Assistant: ")
        answer = generate(model, tokenizer, prompt, settings, out=out)
        history.append((message, answer.strip()))


def chat_loop(spec: GenerateSpec) -> None:
    """`ctl chat`: load the spec's model (inputs resolved through its store) and chat on the terminal."""
    model, tokenizer = load_spec_model(RunContext.create(spec), spec)
    torch.manual_seed(spec.seed)
    chat(model, tokenizer, decoding_settings(spec))
