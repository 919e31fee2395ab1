from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from tests.eval.tiny_lm import scripted_llama
from zhllama.errors import UserError
from zhllama.eval.generation import PAPER_DECODING, DecodingSettings, chat, chat_loop, generate, read_prompts
from zhllama.eval.loading import load_causal_lm
from zhllama.spec.models import GenerateSpec


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


def test_chat_keeps_the_conversation(chars: PreTrainedTokenizerFast) -> None:
    model = scripted_llama(chars, {"案": 5.0, "</s>": 4.9})
    messages = iter(["你好", "", "再见", "/reset", "重来"])

    def read(prompt: str) -> str:
        try:
            return next(messages)
        except StopIteration:
            raise EOFError from None

    out = io.StringIO()
    settings = DecodingSettings(temperature=0, repetition_penalty=2.0, max_new_tokens=8)
    history = chat(model, chars, settings, read=read, out=out)
    assert history == [("重来", "案")]  # /reset dropped the first two turns
    # The repetition penalty also covers the prompt: once the first answer "案" is part of the conversation the
    # second turn's prompt contains it, its logit drops below </s> and the answer is empty; /reset forgets it.
    answers = out.getvalue().split("Assistant: ")[1:]
    assert answers == ["案\n", "\n", "案\n\n"]


def test_chat_loop_reads_the_terminal(tmp_path: Path, tiny_model_dir: Path, monkeypatch, capsys) -> None:
    spec = GenerateSpec(
        run_id="chat-test", store=f"file://{tmp_path}/store", model=f"file://{tiny_model_dir}", max_new_tokens=5
    )
    monkeypatch.setenv("ZHLLAMA_WORKDIR", str(tmp_path / "work"))
    monkeypatch.setattr("sys.stdin", io.StringIO("介绍唐朝\n/exit\n"))
    chat_loop(spec)
    shown = capsys.readouterr().out
    assert shown.startswith("Type a message;") and shown.count("Assistant: ") == 1


def test_read_prompts(tmp_path: Path) -> None:
    lines = tmp_path / "prompts.txt"
    lines.write_text("写一首诗\n\n介绍北京\n", encoding="utf-8")
    assert read_prompts(lines) == [("写一首诗", ""), ("介绍北京", "")]
    records = tmp_path / "prompts.jsonl"
    records.write_text(
        json.dumps({"instruction": "翻译", "input": "我爱你"}, ensure_ascii=False) + '\n{"text": 1}\n',
        encoding="utf-8",
    )
    with pytest.raises(UserError, match=r"prompts\.jsonl:2: each JSONL line needs a string field `instruction`"):
        read_prompts(records)
