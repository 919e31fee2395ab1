"""Sampling with the paper's settings: defaults, streaming, seeding, greedy decoding and the repetition penalty."""

from __future__ import annotations

import io
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerFast

from tests.fixtures.tiny_llama import scripted_llama
from zhllama.generate import PAPER_DECODING, DecodingSettings, generate
from zhllama.models.loading import load_causal_lm


def test_paper_decoding_defaults() -> None:
    assert (PAPER_DECODING.temperature, PAPER_DECODING.top_k, PAPER_DECODING.top_p) == (0.2, 40, 0.9)
    assert (PAPER_DECODING.repetition_penalty, PAPER_DECODING.max_new_tokens) == (1.1, 512)


def test_streams_what_it_returns_and_sampling_is_seeded(tiny_model_dir: Path) -> None:
    model, tokenizer = load_causal_lm(tiny_model_dir, [], device="cpu")
    settings = DecodingSettings(max_new_tokens=12)
    streamed = io.StringIO()
    torch.manual_seed(7)
    first = generate(model, tokenizer, "中国的首都是", settings, out=streamed)
    torch.manual_seed(7)
    again = generate(model, tokenizer, "中国的首都是", settings)
    assert first and streamed.getvalue() == first + "\n"
    assert again == first
    assert len(tokenizer(first, add_special_tokens=False)["input_ids"]) <= 12


def test_greedy_follows_the_scripted_model(chars: PreTrainedTokenizerFast) -> None:
    model = scripted_llama(chars, {"朝": 5.0, "</s>": 1.0})
    greedy = DecodingSettings(temperature=0, repetition_penalty=1.0, max_new_tokens=4)
    assert generate(model, chars, "你", greedy) == "朝朝朝朝"
    # the repetition penalty divides the logit of every token already seen, so </s> wins after one "朝"
    penalised = DecodingSettings(temperature=0, repetition_penalty=6.0, max_new_tokens=4)
    assert generate(model, chars, "你", penalised) == "朝"
