"""Tiny LLaMA models with a Chinese-extended tokenizer of each kind: byte-level BPE and SentencePiece."""

from __future__ import annotations

import io
import json
from pathlib import Path

import sentencepiece as spm
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from tests.fixtures.tiny_llama import tiny_llama as random_llama

CORPUS = [
    "人工智能正在改变世界，北京大学的研究者发布了新的中文语言模型。",
    "The quick brown fox jumps over the lazy dog, 12345 times.",
    "中文词表扩充可以显著提高编码效率，并减少序列长度。",
    "我们在中国北京开会，讨论大语言模型的预训练和指令精调方法。",
    "Large language models learn from text; quantization makes them small.",
]
CHINESE_WORDS = ["人工智能", "语言模型", "北京大学", "指令精调"]
"""Extension tokens: the vocabulary is extended the way the tokenizer stage does, ids after the base ones."""


def bpe_tokenizer(path: Path) -> Path:
    """A byte-level BPE (SmolLM2's kind) trained on the corpus, extended with whole Chinese words."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(CORPUS * 20, trainer)
    backend.add_tokens(CHINESE_WORDS)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>", unk_token="<|endoftext|>"
    )
    tokenizer.save_pretrained(path)
    return path


def sentencepiece_tokenizer(path: Path) -> Path:
    """A SentencePiece BPE model like LLaMA-2's (byte fallback, identity normalization), as tokenizer.model."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 20),
        model_writer=model,
        vocab_size=420,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    path.mkdir(parents=True)
    (path / "tokenizer.model").write_bytes(model.getvalue())
    (path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer"}))
    return path


def tiny_llama(path: Path, tokenizer_dir: Path, extra_rows: int = 0, tied: bool = True, seed: int = 0) -> Path:
    """A random 2-layer LLaMA (hidden 64) whose embedding has one row per token (+ `extra_rows`)."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = random_llama(len(tokenizer) + extra_rows, seed, tied=tied, max_position_embeddings=256,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    with torch.no_grad():
        # larger weights than the init's 0.02 so that logits vary and quantization error shows
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0, 0.15)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    for name in ("tokenizer.model",):
        if (tokenizer_dir / name).is_file():
            (path / name).write_bytes((tokenizer_dir / name).read_bytes())
    return path
