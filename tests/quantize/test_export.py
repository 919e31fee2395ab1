"""The GGUF exporter: layout, metadata, vocabulary and weights that transformers and llama.cpp read back."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.quantize.quantize_fixtures import CHINESE_WORDS, CORPUS
from zhllama.errors import UserError
from zhllama.quantize import check_types, export_gguf
from zhllama.quantize.export import rotary_interleave

HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None


def rope_rotate_half(x: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """HF LLaMA's rope: dimension i pairs with i + d/2."""
    half = x.shape[-1] // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    cos, sin = np.cos(np.concatenate([angles, angles])), np.sin(np.concatenate([angles, angles]))
    return x * cos + rotated * sin


def rope_adjacent_pairs(x: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """ggml's rope for LLaMA: dimension 2i pairs with 2i + 1."""
    even, odd = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = even * np.cos(angles) - odd * np.sin(angles)
    out[..., 1::2] = even * np.sin(angles) + odd * np.cos(angles)
    return out


def test_rotary_interleave_turns_hf_rope_into_ggml_rope() -> None:
    heads, head_dim, hidden = 3, 8, 24
    rng = np.random.default_rng(0)
    weight, x = rng.normal(size=(heads * head_dim, hidden)), rng.normal(size=hidden)
    angles = 7 * 10000.0 ** (-np.arange(head_dim // 2) / (head_dim // 2))  # position 7
    hf = rope_rotate_half((weight @ x).reshape(heads, head_dim), angles)
    ggml = rope_adjacent_pairs((rotary_interleave(weight, heads) @ x).reshape(heads, head_dim), angles)
    # same attention scores need the same vectors up to one fixed permutation of dimensions within a head
    order = np.stack([np.arange(head_dim // 2), np.arange(head_dim // 2) + head_dim // 2], axis=1).reshape(-1)
    np.testing.assert_allclose(ggml, hf[:, order], atol=1e-12)


@pytest.mark.parametrize("kind", ["bpe", "spm"])
def test_f16_file_reproduces_the_hf_model(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    model_dir: Path = request.getfixturevalue(f"{kind}_model")
    path = export_gguf(model_dir, tmp_path / "model-F16.gguf", "F16")

    reader = gguf.GGUFReader(path)
    fields = {
        name: field.contents() for name, field in reader.fields.items() if not name.startswith("tokenizer.ggml.t")
    }
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    assert fields["general.architecture"] == "llama"
    assert fields["tokenizer.ggml.model"] == ("gpt2" if kind == "bpe" else "llama")
    assert fields["llama.block_count"] == 2 and fields["llama.embedding_length"] == 64
    assert fields["llama.attention.head_count_kv"] == 2 and fields["llama.feed_forward_length"] == 128
    assert fields["general.file_type"] == gguf.LlamaFileType.MOSTLY_F16
    assert fields["tokenizer.ggml.bos_token_id"] == tokenizer.bos_token_id

    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    rows = hf.config.vocab_size
    assert len(tokens) == rows
    assert tokens[: len(tokenizer)] == tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    assert all(token.startswith("[PAD") for token in tokens[len(tokenizer) :])
    for word in CHINESE_WORDS:  # the extension survives with the HF ids
        hf_ids = tokenizer(word, add_special_tokens=False).input_ids
        assert [tokens[i] for i in hf_ids] == tokenizer.convert_ids_to_tokens(hf_ids)
    names = {t.name for t in reader.tensors}
    assert ("output.weight" in names) is (not hf.config.tie_word_embeddings)

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32).eval()
    ids = torch.tensor([tokenizer(CORPUS[0] + CORPUS[1]).input_ids])
    with torch.no_grad():
        expected, got = hf(ids).logits, loaded(ids).logits[..., :rows]
    assert torch.allclose(got, expected, atol=2e-2), (got - expected).abs().max()


def test_quantized_types_and_output_tensor(bpe_model: Path, tmp_path: Path) -> None:
    ids = torch.tensor([AutoTokenizer.from_pretrained(bpe_model)(CORPUS[2]).input_ids])
    hf = AutoModelForCausalLM.from_pretrained(bpe_model, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = hf(ids).logits
    errors = {}
    for qtype in ("Q8_0", "Q5_1", "Q4_0"):
        path = export_gguf(bpe_model, tmp_path / f"model-{qtype}.gguf", qtype)
        types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
        assert types["blk.0.attn_q.weight"] == qtype and types["blk.1.ffn_down.weight"] == qtype
        assert types["blk.0.attn_norm.weight"] == "F32"
        # tied: token_embd is the output matrix, kept at Q8_0 below 8 bits
        assert types["token_embd.weight"] == "Q8_0"
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32).eval()
        with torch.no_grad():
            errors[qtype] = float((loaded(ids).logits - expected).abs().mean())
    assert 0 < errors["Q8_0"] < errors["Q5_1"] < errors["Q4_0"] < 0.5 * float(expected.abs().mean())


def test_unknown_type_is_a_one_line_error() -> None:
    with pytest.raises(UserError) as error:
        check_types(["F16", "Q3_X"])
    message = str(error.value)
    assert "\n" not in message and "'Q3_X'" in message and "Q4_K_M" in message and "Q8_0" in message


@pytest.mark.skipif(not HAS_LLAMA_CPP, reason="llama-cpp-python is not installed")
@pytest.mark.parametrize("kind", ["bpe", "spm"])
def test_llama_cpp_tokenizes_like_hf_and_predicts_like_it(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    from zhllama.quantize.llamacpp import check_file

    model_dir: Path = request.getfixturevalue(f"{kind}_model")
    path = export_gguf(model_dir, tmp_path / "model-F16.gguf", "F16")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts = [" ".join(CORPUS), "".join(CHINESE_WORDS) + "，模型"]
    ids = tokenizer(CORPUS[0]).input_ids
    result = check_file(path, texts, [ids], ids, window=32, stride=16, generate_tokens=8)
    assert result["token_ids"] == [tokenizer(text, add_special_tokens=False).input_ids for text in texts]
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = hf(torch.tensor([ids])).logits[0].numpy()
    np.testing.assert_allclose(result["logits"][:, : expected.shape[1]], expected, atol=2e-2)
    assert result["generated_tokens"] == 8 and result["tokens_per_second"] > 0
