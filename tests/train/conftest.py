"""Session fixtures: Chinese text, base and extended tokenizers, a briefly pre-trained tiny base model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.train.tiny import build_base_model, build_tokenizers, peoples_daily, peoples_daily_words, write_alpaca


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("tiny-train")
    text = peoples_daily(0, 600)
    build_tokenizers(text, peoples_daily_words(0, 600), root / "base-tokenizer", root / "zh-tokenizer", n_words=120)
    base = build_base_model(root / "base-tokenizer", text, root / "base")
    corpus = root / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("\n".join(text[:300]) + "\n", encoding="utf-8")
    (corpus / "b.txt").write_text("\n".join(text[300:]) + "\n", encoding="utf-8")
    # A few dozen blocks: every step revisits them, so the loss falls clearly.
    small = root / "small-corpus"
    small.mkdir()
    (small / "a.txt").write_text("\n".join(text[:40]) + "\n", encoding="utf-8")
    heldout = root / "heldout.txt"
    heldout.write_text("\n".join(peoples_daily(3000, 60)) + "\n", encoding="utf-8")
    sft = write_alpaca(root / "sft.jsonl", text, 64)
    return {"root": root, "base": base, "base_tokenizer": root / "base-tokenizer",
            "zh_tokenizer": root / "zh-tokenizer", "corpus": corpus, "small_corpus": small, "heldout": heldout,
            "sft": sft}


@pytest.fixture(autouse=True)
def one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two shared cores: one thread per process is several times faster than two fighting over them."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
