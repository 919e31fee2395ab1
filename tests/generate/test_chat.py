"""`ctl chat`: the conversation kept across turns, /reset, and the terminal loop around a spec's model."""

from __future__ import annotations

import io
from pathlib import Path

from transformers import PreTrainedTokenizerFast

from tests.fixtures.tiny_llama import scripted_llama
from zhllama.generate import DecodingSettings, chat, chat_loop
from zhllama.spec.models import GenerateSpec


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
