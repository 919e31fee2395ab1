"""Tiny real models and tokenizers for the eval tests (2 layers, hidden 64), built in code."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from zhllama.prompts import ALPACA_PROLOGUE

DATA = Path(__file__).parent / "data"
EXAM_DIR = DATA / "cmmlu_tiny"
SPECIALS = ["<unk>", "<s>", "</s>"]


def chunk_tokenizer(pieces: list[str], chunk: int = 1) -> PreTrainedTokenizerFast:
    """A tokenizer that cuts text into `chunk`-character pieces and adds <s> in front, like LLaMA's."""
    vocab = {piece: index for index, piece in enumerate(SPECIALS + pieces)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(rf"[\s\S]{{1,{chunk}}}"), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def char_tokenizer(extra_text: str = "") -> PreTrainedTokenizerFast:
    """One token per character: ASCII, the exam fixtures, the prompt templates and `extra_text`."""
    text = "".join(chr(code) for code in range(32, 127)) + "\n" + ALPACA_PROLOGUE + extra_text
    text += "以下是中国关于考试的单项选择题，请选出其中的正确答案。答案是什么？"
    text += "".join(path.read_text(encoding="utf-8") for path in sorted(EXAM_DIR.rglob("*.csv")))
    text += "".join(path.read_text(encoding="utf-8") for path in sorted(EXAM_DIR.rglob("*.json")))
    return chunk_tokenizer(sorted(set(text)))


def tiny_llama(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
    )
    return LlamaForCausalLM(config).eval()


def uniform_llama(vocab_size: int) -> LlamaForCausalLM:
    """A model whose next-token distribution is uniform over its vocabulary (all logits 0)."""
    model = tiny_llama(vocab_size)
    with torch.no_grad():
        model.lm_head.weight.zero_()
    return model


def scripted_llama(tokenizer: PreTrainedTokenizerFast, logits: dict[str, float]) -> LlamaForCausalLM:
    """A model that ignores its input and gives `logits[piece]` to each listed piece (0 to the rest).

    Attention and MLP outputs are zeroed and every embedding is the all-ones vector, so the final hidden state
    is the same for every position; each lm_head row is scaled so its logit is exactly the scripted number.
    """
    model = tiny_llama(len(tokenizer))
    with torch.no_grad():
        model.model.embed_tokens.weight.fill_(1.0)
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.lm_head.weight.zero_()
        hidden = model.model.norm(torch.ones(1, 64))[0]
        for piece, logit in logits.items():
            assert piece in tokenizer.get_vocab(), f"{piece!r} is not a piece of the fixture tokenizer"
            model.lm_head.weight[tokenizer.convert_tokens_to_ids(piece)] = hidden * logit / hidden.dot(hidden)
    return model


def save_model(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, directory: Path) -> Path:
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
