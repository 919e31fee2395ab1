"""The training loop in-process (zero_stage 0): what trains, what stays frozen, what the adapter holds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoTokenizer

from tests.train.tiny import spec_for
from zhllama.data import BlockData
from zhllama.errors import UserError
from zhllama.store import DirStore
from zhllama.train import (
    Checkpoints,
    build_model,
    load_base,
    process_env,
    train,
    untie_embeddings,
)
from zhllama.train.engine import build_engine


def test_lora_embeddings_and_head_change_and_the_base_does_not(tiny: dict[str, Path], blocks: BlockData) -> None:
    spec = spec_for(tiny)
    env = process_env()
    model, _ = build_model(spec, tiny["base"], AutoTokenizer.from_pretrained(tiny["zh_tokenizer"]), [], env, "fp32")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    engine = build_engine(model, spec, env, "fp32")
    for step in range(3):
        ids = torch.from_numpy(blocks.blocks[step * 4 : step * 4 + 4].astype("int64"))
        engine.forward_backward({"input_ids": ids, "labels": ids}, last_micro_step=True)
        engine.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert changed == trained, sorted(changed ^ trained)[:5]
    assert any("embed_tokens.modules_to_save" in n for n in changed)
    assert any("lm_head.modules_to_save" in n for n in changed)
    assert any("lora_B" in n for n in changed) and any("lora_A" in n for n in changed)
    assert all(not p.requires_grad for n, p in model.named_parameters() if "base_layer" in n or "original" in n)


def test_embedding_only_steps_hold_lora_still(tiny: dict[str, Path], blocks: BlockData) -> None:
    spec = spec_for(tiny, embedding_only_steps=2, max_steps=4)
    env = process_env()
    model, _ = build_model(spec, tiny["base"], AutoTokenizer.from_pretrained(tiny["zh_tokenizer"]), [], env, "fp32")
    engine = build_engine(model, spec, env, "fp32")

    def snapshot(part: str) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in model.named_parameters() if part in n}

    lora, embed = snapshot("lora_"), snapshot("modules_to_save")
    for step in range(4):
        ids = torch.from_numpy(blocks.blocks[step * 4 : step * 4 + 4].astype("int64"))
        engine.forward_backward({"input_ids": ids, "labels": ids}, last_micro_step=True)
        engine.step()
        lora_moved = any(not torch.equal(p, lora[n]) for n, p in snapshot("lora_").items())
        assert lora_moved == (step >= 2), step
        assert any(not torch.equal(p, embed[n]) for n, p in snapshot("modules_to_save").items())


def test_train_writes_an_adapter_peft_loads_on_the_resized_base(
    tiny: dict[str, Path], blocks: BlockData, tmp_path: Path
) -> None:
    spec = spec_for(tiny, max_steps=8)
    result = train(spec, base_model_dir=tiny["base"], tokenizer_dir=tiny["zh_tokenizer"], dataset=blocks,
                   output_dir=tmp_path / "adapter", metrics_dir=tmp_path / "metrics")
    out = tmp_path / "adapter"
    records = [json.loads(line) for line in (tmp_path / "metrics" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 9))
    assert records[-1]["loss"] < records[0]["loss"], [r["loss"] for r in records]
    assert all(r["tokens_per_s"] > 0 and r["grad_norm"] > 0 for r in records)
    assert list((tmp_path / "metrics" / "tensorboard").iterdir())
    assert result.steps == 8 and result.resumed_from is None

    tensors = load_file(out / "adapter_model.safetensors")
    embed = next(v for k, v in tensors.items() if "embed_tokens" in k)
    head = next(v for k, v in tensors.items() if "lm_head" in k)
    zh = AutoTokenizer.from_pretrained(out)  # the tokenizer files travel with the adapter
    assert embed.shape[0] == head.shape[0] == result.vocab["rows"] == 832 and len(zh) == 824
    assert not torch.equal(embed, head)
    hyper = yaml.safe_load((out / "hyperparameters.yaml").read_text())
    assert hyper["stage"] == "pretrain" and hyper["lora"]["r"] == 8
    record = json.loads((out / "zhllama_adapter.json").read_text())
    assert record["vocab"]["init_new_rows"] == "subtoken_mean" and record["rows"] == 832

    base = load_base(tiny["base"], torch.float32, 16, torch.device("cpu"))
    untie_embeddings(base)
    base.resize_token_embeddings(record["rows"], mean_resizing=False)
    model = PeftModel.from_pretrained(base, out)
    loaded = model.base_model.model.model.embed_tokens.modules_to_save["default"].weight
    torch.testing.assert_close(loaded, embed)
    ids = torch.from_numpy(blocks.blocks[:4].astype("int64"))
    with torch.no_grad():
        assert model(input_ids=ids, labels=ids).loss.item() < records[0]["loss"]


def test_resuming_with_another_tokenizer_is_refused(tiny: dict[str, Path], blocks: BlockData, tmp_path: Path) -> None:
    store = DirStore(tmp_path / "store")
    env = process_env()
    checkpoints = Checkpoints(store, "runs/t/checkpoints", env.place, tmp_path / "scratch", keep=2, timeout_s=60)
    spec = spec_for(tiny, max_steps=3, checkpoint_every=2)
    train(spec, base_model_dir=tiny["base"], tokenizer_dir=tiny["zh_tokenizer"], dataset=blocks,
          output_dir=tmp_path / "out", metrics_dir=tmp_path / "m", checkpoints=checkpoints)
    assert checkpoints.latest() == 2
    with pytest.raises(UserError, match=r"checkpoint step-2 was trained with a tokenizer of 824 tokens") as err:
        train(spec, base_model_dir=tiny["base"], tokenizer_dir=tiny["base_tokenizer"], dataset=blocks,
              output_dir=tmp_path / "out2", metrics_dir=tmp_path / "m2", checkpoints=checkpoints)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out2").exists()
