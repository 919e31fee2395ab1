"""The memory plan against real runs: the tensors autograd saves, the peak resident set of a real training process,
the components' behaviour over world size, bits and checkpointing, the cluster presets, and `ctl` enforcing it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from click.testing import CliRunner
from transformers import LlamaConfig, LlamaForCausalLM

from zhllama.cli.main import cli
from zhllama.embedded.models import TINY_LLAMA_SHAPE
from zhllama.spec import PRESETS, TrainSpec, resolve_spec
from zhllama.train.memory import GIB, KNOWN_ARCHITECTURES, Architecture, MemoryPlan, estimate_for_run
from zhllama.train.memory_check import plan_for_spec
from zhllama.train.model import add_lora, untie_embeddings
from zhllama.train.runtime_probe import write_synthetic_tokenizer

CLUSTER_SIZES = [size for size in PRESETS if size not in ("tiny", "smol")]
TRAIN_IN_A_FRESH_PROCESS = """
import json, sys
from pathlib import Path
import numpy as np, torch
from zhllama.data import BlockData
from zhllama.spec import TrainSpec
from zhllama.train.loop import train
from zhllama.train.memory import measured_peak_bytes
spec_path, base, tokenizer, out, rows = sys.argv[1:]
spec = TrainSpec.model_validate_json(Path(spec_path).read_text())
blocks = np.random.default_rng(0).integers(0, int(rows), (64, spec.block_size)).astype(np.int32)
train(spec, base_model_dir=Path(base), tokenizer_dir=Path(tokenizer), dataset=BlockData(blocks),
      output_dir=Path(out) / "adapter", metrics_dir=Path(out) / "metrics")
print(measured_peak_bytes(torch.device("cpu")))
"""


def cluster_plan(size: str, stage: str = "pretrain", **sets: Any) -> MemoryPlan:
    spec = resolve_spec(stage, size=size, run_id="plan", sets=[f"{k}={v}" for k, v in sets.items()])
    assert isinstance(spec, TrainSpec)
    plan = plan_for_spec(spec)
    assert plan is not None
    return plan


def test_estimate_matches_the_peak_resident_set_of_a_real_training_run(tmp_path: Path) -> None:
    rows = 32000  # a real vocabulary's size: embeddings, head and logits are most of the peak beyond the runtime
    tokenizer = write_synthetic_tokenizer(tmp_path / "tokenizer", rows)
    config = LlamaConfig(vocab_size=rows, tie_word_embeddings=True, **TINY_LLAMA_SHAPE)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "base")
    spec = TrainSpec(run_id="mem", base_model=f"file://{tmp_path / 'base'}", tokenizer=f"file://{tokenizer}",
                     block_size=64, micro_batch_size=8, max_steps=3, zero_stage=0, precision="fp32", log_every=1,
                     init_new_rows="mean")
    (tmp_path / "spec.json").write_text(spec.model_dump_json())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "-c", TRAIN_IN_A_FRESH_PROCESS, str(tmp_path / "spec.json"),
                           str(tmp_path / "base"), str(tokenizer), str(tmp_path / "out"), str(rows)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    measured = int(done.stdout.split()[-1])
    arch = Architecture.from_config(json.loads((tmp_path / "base" / "config.json").read_text()), rows)
    plan = estimate_for_run(spec, arch, 1, "cpu")
    modelled = plan.total_bytes - plan.runtime
    assert modelled > 0.3 * plan.total_bytes  # the model tensors, not the runtime baseline, carry the comparison
    print(f"estimate {plan.total_bytes / GIB:.3f} GiB, measured {measured / GIB:.3f} GiB")
    assert abs(plan.total_bytes - measured) / measured < 0.15, (plan.as_dict(), measured / GIB)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_activations_are_the_tensors_autograd_saves(precision: str) -> None:
    config = LlamaConfig(vocab_size=1000, hidden_size=96, num_hidden_layers=3, intermediate_size=256,
                         num_attention_heads=6, num_key_value_heads=2, tie_word_embeddings=True)
    model = LlamaForCausalLM(config).to(torch.float32 if precision == "fp32" else torch.bfloat16)
    model.requires_grad_(False)
    untie_embeddings(model)
    spec = TrainSpec(run_id="t", block_size=48, micro_batch_size=3, zero_stage=0, precision=precision)
    peft_model = add_lora(model, spec.lora, False)
    for param in peft_model.parameters():
        if param.requires_grad:
            param.data = param.data.float()  # as PlainEngine does
    params = {p.untyped_storage().data_ptr() for p in peft_model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    ids = torch.randint(0, 1000, (3, 48))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
        peft_model(input_ids=ids, labels=ids)
    plan = estimate_for_run(spec, Architecture.from_config(config.to_dict(), 1000), 1, "cpu", runtime_bytes=0)
    # Saved: the layers' activations, log_softmax's fp32 output (a third of the logits term), autocast's lm_head copy.
    expected = plan.activations_full + plan.logits // 3 + plan.autocast_copies
    assert sum(saved.values()) == pytest.approx(expected, rel=0.01)


def test_zero3_partitions_the_frozen_weights_over_the_ranks() -> None:
    spec = resolve_spec("pretrain", size="7b", run_id="z", sets=["zero_stage=3"])
    assert isinstance(spec, TrainSpec)
    arch = KNOWN_ARCHITECTURES["7b"]
    frozen = [estimate_for_run(spec, arch, n, "cuda").frozen_weights for n in (1, 8, 64)]
    assert frozen[0] > 7 * frozen[1] > 7 * 7 * frozen[2]
    zero2 = spec.model_copy(update={"zero_stage": 2})
    assert len({estimate_for_run(zero2, arch, n, "cuda").frozen_weights for n in (1, 8, 64)}) == 1
    optimizer = [estimate_for_run(zero2, arch, n, "cuda").optimizer_states for n in (8, 64)]
    assert optimizer[1] < optimizer[0]  # ZeRO-2 partitions the optimizer states


def test_gradient_checkpointing_lowers_activations_and_the_total() -> None:
    on, off = cluster_plan("65b", gradient_checkpointing="true"), cluster_plan("65b", gradient_checkpointing="false")
    assert on.activations < off.activations / 10
    assert on.activations_full == off.activations_full and on.total_bytes < off.total_bytes


def test_frozen_weights_shrink_with_bits() -> None:
    by_bits = {bits: cluster_plan("65b", bits=bits).frozen_weights for bits in (4, 8, 16)}
    assert by_bits[4] < by_bits[8] < by_bits[16]
    params = KNOWN_ARCHITECTURES["65b"].body_params
    assert by_bits[4] / params == pytest.approx(0.516, abs=0.01) and by_bits[16] / params == pytest.approx(2, abs=0.01)


@pytest.mark.parametrize("stage", ["pretrain", "sft"])
@pytest.mark.parametrize("size", CLUSTER_SIZES)
def test_every_cluster_preset_fits_80_gib(size: str, stage: str) -> None:
    plan = cluster_plan(size, stage)
    assert plan.device_type == "cuda" and plan.limit_bytes == 80 * GIB
    assert plan.fits, "\n".join(plan.lines())


def test_65b_without_checkpointing_does_not_fit_and_the_advice_says_so() -> None:
    plan = cluster_plan("65b", gradient_checkpointing="false")
    assert not plan.fits and plan.total_bytes > 80 * GIB
    advice = plan.advice()
    assert advice.startswith("set gradient_checkpointing=true (estimate ") and "\n" not in advice


def test_known_architectures_match_their_configs() -> None:
    tiny = Architecture.from_config({**TINY_LLAMA_SHAPE, "vocab_size": 49152, "tie_word_embeddings": True,
                                     "dtype": "float32"}, 53211, name="tiny-llama")
    assert tiny == KNOWN_ARCHITECTURES["tiny"]
    seven = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                        vocab_size=32000).to_dict()
    assert Architecture.from_config(seven, 49954, name="llama-7b") == KNOWN_ARCHITECTURES["7b"]
    assert KNOWN_ARCHITECTURES["7b"].body_params + 2 * 32000 * 4096 == pytest.approx(6.74e9, rel=0.01)


def ctl(*args: str, env: dict[str, str | None] | None = None) -> Any:
    return CliRunner(env={"ZHLLAMA_STORE": None, **(env or {})}).invoke(cli, list(args))


def test_submit_without_a_store_is_refused_in_one_line() -> None:
    result = ctl("submit", "pretrain", "--size", "33b", "--bits", "8", "--dry-run")
    assert result.exit_code == 2
    assert result.stderr == ("error: store: file://./artifacts is the pod's own disk and is lost with it; pass "
                             "--store s3://bucket/prefix or set ZHLLAMA_STORE (ctl submit: or s3.bucket in a --values "
                             "file)\n")


def test_submit_takes_the_store_from_the_values_files(tmp_path: Path) -> None:
    (tmp_path / "cluster.yaml").write_text("s3: {bucket: llm-runs, endpoint: 'http://minio:9000'}\n")
    result = ctl("submit", "pretrain", "--size", "33b", "--run-id", "pt33", "--values", str(tmp_path / "cluster.yaml"),
                 "--dry-run")
    assert result.exit_code == 0, result.output
    configmap = next(d for d in yaml.safe_load_all(result.stdout) if d["kind"] == "ConfigMap")
    assert json.loads(configmap["data"]["spec.json"])["store"] == "s3://llm-runs/zhllama"


@pytest.mark.parametrize("sets", [["micro_batch_size=64"], ["resources.gpu_memory_gib=24"]])
def test_submit_refuses_a_plan_that_does_not_fit(sets: list[str]) -> None:
    flags = [arg for s in sets for arg in ("--set", s)]
    result = ctl("submit", "pretrain", "--size", "33b", "--store", "s3://llm-runs/zh", *flags, "--dry-run")
    assert result.exit_code == 2
    line = result.stderr.strip()
    assert "\n" not in line and line.startswith("error: memory plan: pretrain 33b needs an estimated ")
    assert " GiB per GPU but resources.gpu_memory_gib gives " in line
    assert "micro_batch_size=" in line or "gradient_checkpointing" in line


def test_dry_runs_print_the_plan() -> None:
    submitted = ctl("submit", "sft", "--size", "65b", "--store", "s3://llm-runs/zh", "--run-id", "s65", "--dry-run")
    assert submitted.exit_code == 0, submitted.output
    assert "# memory plan per GPU: llama-65b, 49954 vocabulary rows, bits 4" in submitted.stdout
    assert "of 80.00: fits" in submitted.stdout
    local = ctl("run", "pretrain", "--size", "13b", "--run-id", "p13", "--dry-run")
    assert local.exit_code == 0 and yaml.safe_load(local.stdout)["run_id"] == "p13"  # still the spec's YAML
    assert "# memory plan per GPU: llama-13b" in local.stdout
    unknown = ctl("run", "pretrain", "--size", "13b", "--set", "base_model=s3://b/other", "--dry-run")
    plan = [line for line in unknown.stdout.splitlines() if line.startswith("# ")]
    assert len(plan) == 1 and "architecture is unknown" in plan[0]
