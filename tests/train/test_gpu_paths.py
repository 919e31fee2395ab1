"""The parts of the GPU training paths a CPU can check: the precision auto picks, fp16 loss scaling and the steps
it skips, the LoRA schedule after embedding-only steps, and the FLOPs the MFU column divides by."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from deepspeed.runtime.precision_config import DeepSpeedFP16Config
from pydantic import ValidationError
from transformers import AutoTokenizer

from tests.train.tiny import spec_for
from zhllama.data import BlockData
from zhllama.errors import UserError
from zhllama.train import build_model, deepspeed_config, fit, local_setup, lr_lambda, process_env, resolve_precision
from zhllama.train.engine import PlainEngine, auto_precision
from zhllama.train.metrics import flops_per_token
from zhllama.train.recipe import TrainOutputs


def test_auto_precision_is_fp16_where_bf16_is_only_emulated() -> None:
    assert auto_precision("cuda", native_bf16=True) == "bf16"
    assert auto_precision("cuda", native_bf16=False) == "fp16"  # V100, T4: bf16 emulated at fp32 speed
    assert auto_precision("cpu", native_bf16=False) == "fp32"
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    with pytest.raises(UserError, match="precision=fp16 needs a GPU"):
        resolve_precision("fp16", torch.device("cpu"))


def test_fp16_loss_scaling_is_the_references_in_both_engines(tiny: dict[str, Path]) -> None:
    spec = spec_for(tiny)
    fp16 = deepspeed_config(spec, 8, "fp16", on_gpu=True)["fp16"]
    assert fp16 == {"enabled": True, "loss_scale": 0, "initial_scale_power": 16, "loss_scale_window": 100,
                    "hysteresis": 2, "min_loss_scale": 1}
    parsed = DeepSpeedFP16Config(**fp16)  # DeepSpeed's own validation (it refuses the reference's 1e-10)
    assert parsed.loss_scale_window == 100 and parsed.initial_dynamic_scale() == 2**16
    env = process_env()
    model, _ = build_model(spec, tiny["base"], AutoTokenizer.from_pretrained(tiny["zh_tokenizer"]), [], env, "fp32")
    scaler = PlainEngine(model, spec, env, "fp16").scaler
    assert scaler.is_enabled() and scaler.get_scale() == 2.0**16 and scaler.get_growth_interval() == 100


def _overflow_at(model: torch.nn.Module, steps: set[int], grad_accum_steps: int) -> list[int]:
    """Make one LoRA weight's gradient inf in the backward passes of optimizer steps `steps` (1-based), as an fp16
    overflow does; returns the list the hook counts backward passes in."""
    calls: list[int] = []
    weight = next(p for n, p in model.named_parameters() if "lora_B" in n)

    def hook(grad: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        step = (len(calls) - 1) // grad_accum_steps + 1
        return torch.full_like(grad, float("inf")) if step in steps else grad

    weight.register_hook(hook)
    return calls


def test_an_overflowed_fp16_step_is_skipped_and_the_scale_falls(tiny: dict[str, Path], blocks: BlockData) -> None:
    spec = spec_for(tiny)
    env = process_env()
    model, _ = build_model(spec, tiny["base"], AutoTokenizer.from_pretrained(tiny["zh_tokenizer"]), [], env, "fp32")
    engine = PlainEngine(model, spec, env, "fp16")  # CPU autocast runs fp16 too: the scaler's logic is the same
    _overflow_at(model, {1}, grad_accum_steps=1)
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    ids = torch.from_numpy(blocks.blocks[:4].astype("int64"))

    engine.forward_backward({"input_ids": ids, "labels": ids}, last_micro_step=True)
    norm, skipped = engine.step()
    assert bool(skipped) and not torch.isfinite(norm)
    assert all(torch.equal(p, trained[n]) for n, p in model.named_parameters() if p.requires_grad)
    assert engine.scaler.get_scale() == 2.0**15

    engine.forward_backward({"input_ids": ids, "labels": ids}, last_micro_step=True)
    norm, skipped = engine.step()
    assert not bool(skipped) and torch.isfinite(norm)
    assert any(not torch.equal(p, trained[n]) for n, p in model.named_parameters() if p.requires_grad)


def test_skipped_steps_are_in_the_metrics_and_announced(tiny: dict[str, Path], blocks: BlockData, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    spec = spec_for(tiny, max_steps=6, log_every=3, grad_accum_steps=2)
    outputs = TrainOutputs(adapter_dir=tmp_path / "adapter", metrics_dir=tmp_path / "metrics")
    setup = local_setup(spec, base_model_dir=tiny["base"], tokenizer_dir=tiny["zh_tokenizer"], dataset=blocks,
                        outputs=outputs)
    setup = dataclasses.replace(setup, engine=PlainEngine(setup.model, spec, setup.env, "fp16"))
    calls = _overflow_at(setup.model, {2, 3, 5}, grad_accum_steps=2)
    fit(setup)
    assert len(calls) == 12
    records = [json.loads(line) for line in (tmp_path / "metrics" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["skipped_steps"], r["skipped_total"]) for r in records] == [(3, [2, 3], 2), (6, [5], 3)]
    assert records[0]["grad_norm"] is None and records[1]["grad_norm"] > 0  # step 3 overflowed, step 6 did not
    assert "fp16 overflow at step 2, 3: update skipped" in capsys.readouterr().out


def test_lora_warms_up_again_after_the_embedding_only_steps(tiny: dict[str, Path]) -> None:
    # The 7b preset's shape: 500 embedding-only steps, then LoRA joins.
    spec = spec_for(tiny, max_steps=1000, embedding_only_steps=500, warmup_ratio=0.3)
    lora, embeddings = lr_lambda(spec, delay=500), lr_lambda(spec, delay=0)
    assert lora(499) == 0.0
    assert lora(500) < 0.01  # not from 0 to almost the peak in one step
    ramp = [lora(step) for step in range(500, 651)]
    assert ramp == sorted(ramp) and ramp[-1] == 1.0 and ramp[-2] < 1.0  # 150 warmup steps: 0.3 of the 500 it trains
    assert lora(999) < 0.001  # and it decays to the same end
    assert embeddings(0) < 0.01 and embeddings(300) == 1.0 and embeddings(500) < 1.0  # stage 1's own schedule


def test_flops_per_token_is_a_hand_count_of_the_tiny_model(tiny: dict[str, Path]) -> None:
    spec = spec_for(tiny)
    model, vocab = build_model(spec, tiny["base"], AutoTokenizer.from_pretrained(tiny["zh_tokenizer"]), [],
                               process_env(), "fp32")
    assert vocab["rows"] == 832 and spec.lora.r == 8
    # Per layer (hidden 64, 4 heads of 16, 2 KV heads, intermediate 128): q 64·64, k 64·32, v 64·32, o 64·64,
    # gate/up 64·128, down 128·64.
    frozen = 2 * (4096 + 2048 + 2048 + 4096 + 3 * 8192)
    # LoRA r=8 on all seven: r · (in + out) each.
    lora = 2 * 8 * ((64 + 64) + (64 + 32) * 2 + (64 + 64) + (64 + 128) * 2 + (128 + 64))
    head = 832 * 64  # trained in full; embed_tokens is a lookup
    attention = 12 * 2 * 64 * 32  # layers 2, attention width 64, block 32
    assert flops_per_token(model, 32) == 4 * frozen + 6 * lora + 6 * head + attention == 761_856


def test_kernels_zero3_cannot_run_are_refused_together_before_anything_runs(tiny: dict[str, Path]) -> None:
    with pytest.raises(ValidationError) as refused:
        spec_for(tiny, zero_stage=3, fused_cross_entropy="chunked", compile=True)
    message = str(refused.value)
    assert "fused_cross_entropy: chunked reads lm_head's weight whole" in message
    assert "compile: ZeRO-3 gathers each layer's weights" in message
    assert spec_for(tiny, zero_stage=3, bits=8, compile=True).compile  # a quantized base trains with DDP
