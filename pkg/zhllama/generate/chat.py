"""`ctl chat`: multi-turn chat with a model on the terminal."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TextIO

import torch
from transformers import PreTrainedTokenizerBase

from zhllama.generate.decoding import PAPER_DECODING, DecodingSettings, decoding_settings, generate
from zhllama.models.loading import context_length, encode, load_spec_model
from zhllama.prompts import chat_prompt
from zhllama.run import RunContext
from zhllama.spec.models import GenerateSpec

CHAT_HELP = "Type a message; /reset clears the conversation, /exit or Ctrl-D quits."


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
