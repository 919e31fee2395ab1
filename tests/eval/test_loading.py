from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from tests.eval.eval_fixtures import EVAL_LLAMA, char_tokenizer
from tests.fixtures.tiny_llama import save_model, tiny_llama
from zhllama.errors import UserError
from zhllama.models.loading import load_causal_lm


def random_adapter(model: LlamaForCausalLM, seed: int) -> PeftModel:
    """A LoRA adapter with non-zero weights and full embed_tokens/lm_head copies, as the training stages save."""
    torch.manual_seed(seed)
    config = LoraConfig(
        r=4,
        target_modules=["q_proj", "v_proj", "down_proj"],
        modules_to_save=["embed_tokens", "lm_head"],
        init_lora_weights=False,
    )
    adapter = get_peft_model(model, config)
    with torch.no_grad():
        for name, parameter in adapter.named_parameters():
            if "modules_to_save" in name:
                parameter.add_(torch.randn_like(parameter) * 0.1)
    return adapter


def test_base_plus_adapters_for_a_resized_vocabulary(tmp_path: Path, chars: PreTrainedTokenizerFast) -> None:
    base_dir = save_model(tiny_llama(len(chars), **EVAL_LLAMA), chars, tmp_path / "base")
    extended = char_tokenizer(extra_text="龘靐齉爩鱻")  # the "extended vocabulary": 5 more pieces
    assert len(extended) == len(chars) + 5

    # What pretrain and SFT do: resize, train adapter 1, then adapter 2 on top of base + adapter 1.
    model = LlamaForCausalLM.from_pretrained(base_dir)
    model.resize_token_embeddings(len(extended))
    first = random_adapter(model, seed=1)
    first.save_pretrained(tmp_path / "pretrain")
    second = random_adapter(first.merge_and_unload(), seed=2)
    second.save_pretrained(tmp_path / "sft")
    extended.save_pretrained(tmp_path / "sft")

    loaded, tokenizer = load_causal_lm(base_dir, [tmp_path / "pretrain", tmp_path / "sft"], device="cpu")
    assert len(tokenizer) == len(extended)  # taken from the last adapter that ships one
    assert isinstance(loaded, PeftModel)  # the last adapter stays unmerged
    ids = torch.tensor([extended("新词龘靐齉爩鱻")["input_ids"]])
    with torch.no_grad():
        expected = second.eval()(ids).logits
        assert torch.allclose(loaded(ids).logits, expected, atol=1e-5)
        # and the adapters matter: the base alone predicts something else
        base = LlamaForCausalLM.from_pretrained(base_dir).eval()
        assert not torch.allclose(base(ids[:, :3]).logits, expected[:, :3, : len(chars)], atol=1e-3)


def test_bad_model_paths(tmp_path: Path, tiny_model_dir: Path) -> None:
    weights = tmp_path / "model.bin"
    weights.write_bytes(b"")
    with pytest.raises(UserError, match="a model file must be .gguf"):
        load_causal_lm(weights, [])
    with pytest.raises(UserError, match="not a PEFT adapter directory"):
        load_causal_lm(tiny_model_dir, [tmp_path], device="cpu")


def test_gguf_artifact_directory_needs_one_file_or_gguf_file(tmp_path: Path) -> None:
    for name in ("model-F16.gguf", "model-Q4_0.gguf"):
        (tmp_path / name).write_bytes(b"GGUF")
    with pytest.raises(UserError, match=r"several GGUF files \(model-F16.gguf, model-Q4_0.gguf\); set gguf_file"):
        load_causal_lm(tmp_path, [])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="neither an HF model directory"):
        load_causal_lm(empty, [])
