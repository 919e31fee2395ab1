"""The streaming merge reproduces the PEFT model exactly and refuses mismatched inputs before writing."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from tests.merge.merge_fixtures import BASE_VOCAB, EXTENDED_VOCAB, merge_llama, save_base, save_tokenizer, train_adapter
from zhllama.errors import UserError
from zhllama.merge import merge_lora, parse_size

Recipe = Callable[[bool], dict]


@pytest.mark.parametrize("tied", [True, False], ids=["tied-base", "untied-base"])
def test_merged_logits_equal_peft_with_both_adapters(recipe: Recipe, tmp_path: Path, tied: bool) -> None:
    made = recipe(tied)
    out = tmp_path / "merged"
    summary = merge_lora(
        made["base"], made["adapters"], made["tokenizer"], out, max_shard_bytes=60_000, dtype="float32"
    )

    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = merged(input_ids=made["inputs"]).logits
    assert logits.shape == made["logits"].shape
    assert torch.allclose(logits, made["logits"], atol=1e-4, rtol=0), (logits - made["logits"]).abs().max()

    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == EXTENDED_VOCAB
    # both trained copies differ, so a tied base must come out untied with both tensors written
    assert config["tie_word_embeddings"] is False
    assert not torch.equal(merged.lm_head.weight, merged.model.embed_tokens.weight)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert {"model.embed_tokens.weight", "lm_head.weight"} <= index["weight_map"].keys()
    assert summary["shards"] == len(set(index["weight_map"].values())) > 1
    assert len(AutoTokenizer.from_pretrained(out)) == EXTENDED_VOCAB
    assert (out / "tokenizer.json").read_bytes() == (made["tokenizer"] / "tokenizer.json").read_bytes()


def test_shards_respect_max_size_and_dtype(recipe: Recipe, tmp_path: Path) -> None:
    made = recipe(False)
    out = tmp_path / "merged"
    merge_lora(made["base"], made["adapters"], made["tokenizer"], out, max_shard_bytes=50_000, dtype="float16")
    shards = sorted(out.glob("model-*.safetensors"))
    largest_tensor = EXTENDED_VOCAB * 64 * 2
    assert all(path.stat().st_size <= max(50_000, largest_tensor) + 4096 for path in shards)
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert merged.model.embed_tokens.weight.dtype == torch.float16
    reference = AutoModelForCausalLM.from_pretrained(
        out, dtype=torch.float32
    )  # the fp16 merge rounds once, after the float32 sum
    with torch.no_grad():
        difference = (reference(input_ids=made["inputs"]).logits - made["logits"]).abs().max()
    assert difference < 0.05


@pytest.mark.parametrize("extend_vocab", [False, True], ids=["same-vocab", "extended-vocab"])
def test_adapter_training_only_embed_tokens_on_tied_base(tmp_path: Path, extend_vocab: bool) -> None:
    """PEFT trains a separate copy of a tied embedding, so the head it trained with is the base's embedding."""
    vocab = EXTENDED_VOCAB if extend_vocab else BASE_VOCAB
    base = save_base(tmp_path / "base", tied=True)
    tokenizer = save_tokenizer(tmp_path / "tokenizer", vocab)
    model = LlamaForCausalLM.from_pretrained(base, dtype=torch.float32)
    if extend_vocab:
        model.resize_token_embeddings(vocab, mean_resizing=False)
    config = LoraConfig(r=4, target_modules=["q_proj", "down_proj"], modules_to_save=["embed_tokens"])
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                parameter.add_(torch.randn_like(parameter) * 0.05)
    peft_model.save_pretrained(tmp_path / "lora")
    inputs = torch.randint(0, vocab, (1, 16))
    with torch.no_grad():
        expected = peft_model.eval()(input_ids=inputs).logits

    out = tmp_path / "merged"
    summary = merge_lora(base, [tmp_path / "lora"], tokenizer, out, max_shard_bytes=10**9, dtype="float32")
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=inputs).logits, expected, atol=1e-4, rtol=0)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert summary["tie_word_embeddings"] is False
    assert "lm_head.weight" in index["weight_map"]


def test_tied_base_stays_tied_when_no_adapter_trains_embeddings(tmp_path: Path) -> None:
    base = save_base(tmp_path / "base", tied=True)
    tokenizer = save_tokenizer(tmp_path / "tokenizer", BASE_VOCAB)
    peft_model = get_peft_model(LlamaForCausalLM.from_pretrained(base), LoraConfig(r=4, target_modules=["v_proj"]))
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)
    peft_model.save_pretrained(tmp_path / "lora")
    inputs = torch.randint(0, BASE_VOCAB, (1, 16))
    with torch.no_grad():
        expected = peft_model.eval()(input_ids=inputs).logits

    out = tmp_path / "merged"
    merge_lora(base, [tmp_path / "lora"], tokenizer, out, max_shard_bytes=10**9, dtype="float32")
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is True
    assert "lm_head.weight" not in json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=inputs).logits, expected, atol=1e-4, rtol=0)


def test_refuses_adapter_for_another_vocabulary_before_writing(recipe: Recipe, tmp_path: Path) -> None:
    made = recipe(True)
    other_tokenizer = save_tokenizer(tmp_path / "tokenizer-320", 320)
    out = tmp_path / "merged"
    with pytest.raises(UserError) as error:
        merge_lora(made["base"], made["adapters"], other_tokenizer, out, max_shard_bytes=10**9, dtype="float16")
    message = str(error.value)
    assert "\n" not in message
    assert "pt-lora" in message and f"{EXTENDED_VOCAB} rows" in message and "320 tokens" in message
    assert not out.exists()


def test_refuses_adapter_for_another_architecture(recipe: Recipe, tmp_path: Path) -> None:
    made = recipe(False)
    wider = save_base(tmp_path / "wider", tied=False, hidden=96)
    expected = r"is \[64, 128\] in the adapter but \[96, 192\] in the base \(hidden_size 96\)"
    with pytest.raises(UserError, match=expected):
        merge_lora(wider, made["adapters"], made["tokenizer"], tmp_path / "o", max_shard_bytes=10**9, dtype="float16")

    deeper = merge_llama(tied=False, layers=3)
    deeper.resize_token_embeddings(EXTENDED_VOCAB, mean_resizing=False)
    train_adapter(deeper, tmp_path / "deep-lora", rank=4, seed=5)
    with pytest.raises(UserError, match="layer 2 but the base has 2 layers"):
        merge_lora(
            made["base"],
            [tmp_path / "deep-lora"],
            made["tokenizer"],
            tmp_path / "o",
            max_shard_bytes=10**9,
            dtype="float16",
        )
    assert not (tmp_path / "o").exists()


def test_refuses_missing_adapter_files_and_unchanged_vocab(recipe: Recipe, tmp_path: Path) -> None:
    made = recipe(False)
    broken = tmp_path / "broken"
    shutil.copytree(made["adapters"][1], broken)
    (broken / "adapter_model.safetensors").unlink()
    with pytest.raises(UserError, match="missing adapter_model.safetensors"):
        merge_lora(made["base"], [broken], made["tokenizer"], tmp_path / "o", max_shard_bytes=10**9, dtype="float16")
    with pytest.raises(UserError, match="has 300 tokens but the base model.embed_tokens.weight has 256 rows"):
        merge_lora(made["base"], [], made["tokenizer"], tmp_path / "o", max_shard_bytes=10**9, dtype="float16")


def test_parse_size() -> None:
    assert parse_size("2GB") == 2 * 10**9
    assert parse_size("500MB") == 500 * 10**6
    assert parse_size("1GiB") == 2**30
    with pytest.raises(UserError, match="max_shard_size 'lots'"):
        parse_size("lots")
