"""The training forward (train/forward.py) against the model's own: the chunked loss and its gradients, whole
trainings with it and with compiled decoder layers, what the resolver answers on this machine, the memory plan.
Liger's kernel runs on CUDA only: bench/gpu_check.py compares it there."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer

from tests.train.jobs import metrics, run_job, write_spec
from tests.train.tiny import spec_for
from zhllama.data import BlockData
from zhllama.data.sft import IGNORE_INDEX
from zhllama.errors import UserError
from zhllama.spec import TrainSpec
from zhllama.train import build_model, process_env, train
from zhllama.train.forward import LossForward, resolve_fused_cross_entropy, slice_tokens
from zhllama.train.memory import KNOWN_ARCHITECTURES, estimate_for_run


def _sft_like_batch(blocks: BlockData) -> dict[str, torch.Tensor]:
    """Four real blocks with a masked prompt in every row and the second row padded after 20 tokens."""
    ids = torch.from_numpy(blocks.blocks[:4].astype("int64"))
    labels, mask = ids.clone(), torch.ones_like(ids)
    labels[:, :5] = IGNORE_INDEX
    labels[1, 20:], mask[1, 20:] = IGNORE_INDEX, 0
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _loss_and_gradients(module: torch.nn.Module, trained: dict[str, torch.nn.Parameter],
                        batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    torch.manual_seed(0)  # the same LoRA dropout masks in both forwards
    loss = module(**batch).loss
    loss.backward()
    grads = {name: param.grad.clone() for name, param in trained.items() if param.grad is not None}
    for param in trained.values():
        param.grad = None
    return loss.detach(), grads


def test_the_chunked_loss_and_its_gradients_are_the_models_own(tiny: dict[str, Path], blocks: BlockData) -> None:
    spec = spec_for(tiny)
    model, vocab = build_model(spec, tiny["base"], AutoTokenizer.from_pretrained(tiny["zh_tokenizer"]), [],
                               process_env(), "fp32")
    model.train()
    fused = LossForward(model, "chunked")
    batch = _sft_like_batch(blocks)
    assert slice_tokens(batch["input_ids"].numel(), vocab["rows"], 64) < batch["input_ids"].numel()  # many slices
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}

    own_loss, own_grads = _loss_and_gradients(model, trained, batch)
    loss, grads = _loss_and_gradients(fused, trained, batch)
    torch.testing.assert_close(loss, own_loss, atol=1e-5, rtol=0)
    assert grads.keys() == own_grads.keys() == trained.keys()  # the trained head copy gets one, as everything trained
    for name, grad in grads.items():
        torch.testing.assert_close(grad, own_grads[name], atol=1e-5, rtol=1e-4, msg=name)
    assert any("lm_head.modules_to_save" in n for n in grads) and any("lora_A" in n for n in grads)
    # What engines save and load is named as the PeftModel names it.
    assert list(fused.state_dict()) == list(model.state_dict())
    assert [n for n, _ in fused.named_parameters()] == list(dict(model.named_parameters()))


def test_the_chunked_loss_keeps_no_logits_for_the_backward(tiny: dict[str, Path], blocks: BlockData) -> None:
    spec = spec_for(tiny)
    model, vocab = build_model(spec, tiny["base"], AutoTokenizer.from_pretrained(tiny["zh_tokenizer"]), [],
                               process_env(), "fp32")
    batch = _sft_like_batch(blocks)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def saved_logits(module: torch.nn.Module) -> list[tuple[int, ...]]:
        """Shapes of the vocabulary-wide tensors (not the head's weight) the forward pass saves for the backward."""
        shapes: dict[int, tuple[int, ...]] = {}

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            storage = tensor.untyped_storage().data_ptr()
            if storage not in params and tensor.shape[-1:] == (vocab["rows"],):
                shapes[storage] = tuple(tensor.shape)
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            module(**batch)
        return list(shapes.values())

    # log_softmax's fp32 output (which nll_loss saves too)
    assert saved_logits(model) == [(batch["input_ids"].numel(), vocab["rows"])]
    assert saved_logits(LossForward(model, "chunked")) == []


def _losses(metrics_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (metrics_dir / "metrics.jsonl").read_text().splitlines()]


def _train(tiny: dict[str, Path], blocks: BlockData, out: Path, **values: Any) -> tuple[list[float], dict[str, Any]]:
    spec = spec_for(tiny, max_steps=4, grad_accum_steps=2, **values)
    train(spec, base_model_dir=tiny["base"], tokenizer_dir=tiny["zh_tokenizer"], dataset=blocks,
          output_dir=out / "adapter", metrics_dir=out / "metrics")
    return _losses(out / "metrics"), json.loads((out / "adapter" / "zhllama_adapter.json").read_text())


def test_training_with_the_chunked_loss_takes_the_steps_of_the_models_own(
    tiny: dict[str, Path], blocks: BlockData, tmp_path: Path
) -> None:
    own, own_record = _train(tiny, blocks, tmp_path / "off", fused_cross_entropy="off")
    chunked, record = _train(tiny, blocks, tmp_path / "chunked", fused_cross_entropy="chunked")
    assert len(chunked) == len(own) == 4 and own[-1] < own[0]
    assert chunked == pytest.approx(own, abs=1e-4)
    assert (record["fused_cross_entropy"], own_record["fused_cross_entropy"]) == ("chunked", "off")


@pytest.mark.slow
def test_ddp_and_deepspeed_sync_the_gradients_of_the_chunked_loss(tiny: dict[str, Path], tmp_path: Path) -> None:
    """Two ranks each: DDP and ZeRO-2 run their forward through the fused module; a gradient that missed the
    all-reduce would let the ranks drift apart from the model's own loss under DDP."""
    losses = {}
    for zero_stage, fused in ((0, "off"), (0, "chunked"), (2, "chunked")):
        run_id = f"zero{zero_stage}-{fused}"
        spec = write_spec(tiny, tmp_path, run_id, zero_stage=zero_stage, fused_cross_entropy=fused, max_steps=4,
                          checkpoint_every=100)
        result = run_job(spec, tmp_path, nproc=2)
        assert result.returncode == 0, result.stderr[-3000:]
        losses[run_id] = [r["loss"] for r in metrics(tmp_path, run_id)]
    own = losses.pop("zero0-off")
    assert len(own) == 4 and own[-1] < own[0]
    for run_id, fused_losses in losses.items():
        assert fused_losses == pytest.approx(own, abs=1e-4), run_id


def test_compiled_decoder_layers_train_as_the_eager_ones(
    tiny: dict[str, Path], blocks: BlockData, tmp_path: Path
) -> None:
    # No LoRA dropout: compiled code draws its random masks from another generator than eager code.
    lora = {"dropout": 0.0}
    eager, _ = _train(tiny, blocks, tmp_path / "eager", lora=lora)
    compiled, record = _train(tiny, blocks, tmp_path / "compiled", lora=lora, compile=True)
    assert compiled == pytest.approx(eager, abs=1e-4)
    assert record["compiled_layers"] == 2


def test_the_resolver_on_this_machine() -> None:
    def resolve(value: str, device: str = "cpu", **values: Any) -> str:
        return resolve_fused_cross_entropy(TrainSpec(run_id="t", fused_cross_entropy=value, **values),
                                           torch.device(device))

    assert [resolve(v) for v in ("auto", "chunked", "off")] == ["off", "chunked", "off"]
    with pytest.raises(UserError, match=r"fused_cross_entropy=liger needs a CUDA GPU.*use fused_cross_entropy=chunked"
                       ) as err:
        resolve("liger")
    assert "\n" not in str(err.value)
    assert resolve("auto", "cuda", zero_stage=3) == "off"  # ZeRO-3 partitions the head Liger reads whole
    if importlib.util.find_spec("liger_kernel") is None:
        assert resolve("auto", "cuda") == "off"
        with pytest.raises(UserError, match=r"needs the liger-kernel package: pip install liger-kernel"):
            resolve("liger", "cuda")


def test_the_memory_plan_holds_one_slice_of_logits_with_a_fused_loss() -> None:
    arch = KNOWN_ARCHITECTURES["7b"]
    spec = TrainSpec(run_id="t", block_size=512, micro_batch_size=4, zero_stage=0, precision="bf16")
    plans = {value: estimate_for_run(spec.model_copy(update={"fused_cross_entropy": value}), arch, 1, "cuda",
                                     runtime_bytes=0)
             for value in ("auto", "off", "chunked", "liger")}
    tokens = spec.block_size * spec.micro_batch_size
    assert plans["auto"] == plans["off"] and plans["off"].logits == 12 * arch.vocab_rows * tokens
    sliced = 12 * arch.vocab_rows * slice_tokens(tokens, arch.vocab_rows, arch.hidden)
    assert plans["chunked"].logits == sliced < plans["off"].logits / 10
    # Liger holds the gradients it computed in the forward pass: the hidden states' and the fp32 head's.
    assert plans["liger"].logits == sliced + 4 * (tokens + arch.vocab_rows) * arch.hidden
    for fused in ("chunked", "liger"):
        assert plans[fused].train_peak < plans["off"].train_peak
