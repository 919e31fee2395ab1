"""Base loading, untying, vocabulary resize with new-row initialisation, LoRA wrapping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from zhllama.data import BlockData, DocumentEncoder, blocks_of_files, list_data_files
from zhllama.errors import UserError
from zhllama.spec import TrainSpec
from zhllama.train import (
    build_model,
    check_quantization_supported,
    load_base,
    process_env,
    resize_vocabulary,
    train,
    untie_embeddings,
)


def _spec(tiny: dict[str, Path], **values: object) -> TrainSpec:
    return TrainSpec.model_validate({"run_id": "t", "base_model": f"file://{tiny['base']}",
                                     "tokenizer": f"file://{tiny['zh_tokenizer']}", "data": [], **values})


def _resized(tiny: dict[str, Path], method: str) -> tuple[torch.nn.Module, dict]:
    model = load_base(tiny["base"], torch.float32, 16, torch.device("cpu"))
    untie_embeddings(model)
    base_tok = AutoTokenizer.from_pretrained(tiny["base_tokenizer"])
    zh_tok = AutoTokenizer.from_pretrained(tiny["zh_tokenizer"])
    record = resize_vocabulary(model, base_tok, zh_tok, method, pad_multiple=64, seed=0)  # type: ignore[arg-type]
    return model, record


def test_untie_gives_lm_head_its_own_copy(tiny: dict[str, Path]) -> None:
    model = load_base(tiny["base"], torch.float32, 16, torch.device("cpu"))
    embed, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert embed.data_ptr() == head.data_ptr()
    assert untie_embeddings(model) is True
    head = model.get_output_embeddings().weight
    assert head.data_ptr() != embed.data_ptr()
    assert torch.equal(head, embed)
    with torch.no_grad():
        head.add_(1.0)
    assert not torch.equal(model.get_output_embeddings().weight, model.get_input_embeddings().weight)
    assert model.config.tie_word_embeddings is False


def test_new_rows_are_the_mean_of_their_base_subtokens(tiny: dict[str, Path]) -> None:
    base = load_base(tiny["base"], torch.float32, 16, torch.device("cpu"))
    base_embed = base.get_input_embeddings().weight.detach().clone()
    model, record = _resized(tiny, "subtoken_mean")
    base_tok = AutoTokenizer.from_pretrained(tiny["base_tokenizer"])
    zh_tok = AutoTokenizer.from_pretrained(tiny["zh_tokenizer"])
    assert record["base_rows"] == len(base_tok) == 703
    assert record["tokenizer_size"] == len(zh_tok)
    assert record["rows"] % 64 == 0 and record["rows"] >= len(zh_tok)
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    assert embed.shape[0] == head.shape[0] == record["rows"]
    word_id = len(base_tok) + 5
    word = zh_tok.convert_ids_to_tokens(word_id)
    assert len(word) == 2
    parts = [base_tok.convert_tokens_to_ids(c) for c in word]
    torch.testing.assert_close(embed[word_id], base_embed[parts].mean(0))
    torch.testing.assert_close(head[word_id], base_embed[parts].mean(0))  # the base was tied
    torch.testing.assert_close(embed[:703], base_embed)
    # the pad token and the padding rows have no sub-tokens: they start at the mean row
    torch.testing.assert_close(embed[zh_tok.pad_token_id], base_embed.mean(0))
    torch.testing.assert_close(embed[-1], base_embed.mean(0))
    assert record["rows_from_subtokens"] == len(zh_tok) - len(base_tok) - 1


def test_subtoken_mean_starts_lower_than_random(tiny: dict[str, Path], tmp_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny["zh_tokenizer"])
    encoder = DocumentEncoder(tokenizer.backend_tokenizer, tokenizer.eos_token_id)
    blocks = BlockData(blocks_of_files(list_data_files([tiny["corpus"]]), encoder, 64, tmp_path / "blocks"))
    first_loss = {}
    for method in ("subtoken_mean", "mean", "random"):
        spec = _spec(tiny, init_new_rows=method, max_steps=1, micro_batch_size=16, block_size=64, zero_stage=0,
                     log_every=1)
        train(spec, base_model_dir=tiny["base"], tokenizer_dir=tiny["zh_tokenizer"], dataset=blocks,
              output_dir=tmp_path / method, metrics_dir=tmp_path / f"metrics-{method}")
        first_loss[method] = json.loads((tmp_path / f"metrics-{method}" / "metrics.jsonl").read_text())["loss"]
    print(f"first-step loss on Chinese text, tiny model: {first_loss}")
    assert first_loss["subtoken_mean"] < first_loss["random"]
    assert first_loss["subtoken_mean"] < first_loss["mean"]


def test_a_tokenizer_that_does_not_extend_the_base_is_refused(tiny: dict[str, Path], tmp_path: Path) -> None:
    model = load_base(tiny["base"], torch.float32, 16, torch.device("cpu"))
    untie_embeddings(model)
    base_tok = AutoTokenizer.from_pretrained(tiny["base_tokenizer"])
    shuffled = AutoTokenizer.from_pretrained(tiny["zh_tokenizer"])
    shuffled.add_tokens(["多余的词"])
    vocab = base_tok.get_vocab()
    unrelated = AutoTokenizer.from_pretrained(tiny["zh_tokenizer"])
    first = next(p for p, i in vocab.items() if i == 5)
    unrelated.backend_tokenizer.model = type(unrelated.backend_tokenizer.model)(
        vocab={**{p: (i + 1) % 703 if i < 703 else i for p, i in unrelated.get_vocab().items()}}, merges=[])
    with pytest.raises(UserError, match=f"does not extend the base.*{first}|does not extend the base"):
        resize_vocabulary(model, base_tok, unrelated, "subtoken_mean", 1, 0)


def test_quantized_loading_needs_cuda(tiny: dict[str, Path]) -> None:
    check_quantization_supported(16)
    for bits in (8, 4):
        with pytest.raises(UserError, match=f"bits={bits} needs a CUDA GPU"):
            check_quantization_supported(bits)


def test_lora_wraps_targets_and_trains_embeddings_in_full(tiny: dict[str, Path]) -> None:
    spec = _spec(tiny)
    model, vocab = build_model(spec, tiny["base"], AutoTokenizer.from_pretrained(tiny["zh_tokenizer"]), [],
                               process_env(), "fp32")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("embed_tokens.modules_to_save" in n for n in trainable)
    assert any("lm_head.modules_to_save" in n for n in trainable)
    for target in spec.lora.target_modules:
        assert any(f"{target}.lora_A" in n for n in trainable), target
    assert not any("original_module" in n or n.endswith("q_proj.base_layer.weight") for n in trainable)
    assert vocab["untied"] is True
