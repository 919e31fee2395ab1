"""The stage as a job: torchrun with DeepSpeed ZeRO-2/3 on CPU, kill -9 and resume, one-line input errors."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import torch
from peft import PeftModel

from tests.train.jobs import job_command, job_env, kill_job, metrics, run_job, write_spec
from zhllama.store import DirStore
from zhllama.train import load_base, untie_embeddings


def _ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_two_rank_zero2_pretrain_loss_falls_and_checkpoints_every_rank(tiny: dict[str, Path], tmp_path: Path) -> None:
    spec = write_spec(tiny, tmp_path, "zero2", zero_stage=2, max_steps=10, micro_batch_size=8, grad_accum_steps=2,
                      checkpoint_every=5, lr=5e-3, data=[f"file://{tiny['small_corpus']}"])
    _ok(run_job(spec, tmp_path, nproc=2))
    losses = [r["loss"] for r in metrics(tmp_path, "zero2")]
    print(f"ZeRO-2, 2 ranks, losses: {[round(x, 4) for x in losses]}")
    assert len(losses) == 10
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.3
    store = DirStore(tmp_path / "store")
    assert store.is_complete("runs/zero2/checkpoints/step-5/rank-0")
    assert store.is_complete("runs/zero2/checkpoints/step-5/rank-1")
    assert store.is_complete("runs/zero2/outputs/adapter")
    record = store.read_json("runs/zero2/outputs/adapter/zhllama_adapter.json")
    assert record["deepspeed"]["zero_optimization"]["stage"] == 2 and record["deepspeed"]["train_batch_size"] == 32


@pytest.mark.slow
def test_two_rank_zero3_pretrain_saves_a_gathered_adapter(tiny: dict[str, Path], tmp_path: Path) -> None:
    spec = write_spec(tiny, tmp_path, "zero3", zero_stage=3, max_steps=8, micro_batch_size=16, checkpoint_every=4,
                      lr=5e-3, data=[f"file://{tiny['small_corpus']}"])
    _ok(run_job(spec, tmp_path, nproc=2))
    losses = [r["loss"] for r in metrics(tmp_path, "zero3")]
    print(f"ZeRO-3, 2 ranks, losses: {[round(x, 4) for x in losses]}")
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2 - 0.3
    adapter = DirStore(tmp_path / "store").fetch_dir("runs/zero3/outputs/adapter")
    base = load_base(tiny["base"], torch.float32, 16, torch.device("cpu"))
    untie_embeddings(base)
    base.resize_token_embeddings(832, mean_resizing=False)
    model = PeftModel.from_pretrained(base, adapter)
    head = model.base_model.model.lm_head.modules_to_save["default"].weight
    assert head.shape == (832, 64) and head.abs().sum() > 0


@pytest.mark.slow
@pytest.mark.parametrize(("zero_stage", "nproc"), [(0, 1), (2, 2)], ids=["single-process", "zero2-2-ranks"])
def test_killed_run_resumes_with_the_same_losses_and_data_order(
    tiny: dict[str, Path], tmp_path: Path, zero_stage: int, nproc: int
) -> None:
    # Two weighted sources: the mixed order must resume exactly too.
    values = {"max_steps": 30, "checkpoint_every": 4, "zero_stage": zero_stage,
              "data": [{"uri": f"file://{tiny['corpus']}", "weight": 0.7},
                       {"uri": f"file://{tiny['small_corpus']}", "weight": 0.3}]}
    _ok(run_job(write_spec(tiny, tmp_path, "whole", **values), tmp_path, nproc))
    spec = write_spec(tiny, tmp_path, "killed", **values)
    store = DirStore(tmp_path / "store")
    process = subprocess.Popen(job_command(spec, tmp_path, nproc), env=job_env(), start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while not store.is_complete("runs/killed/checkpoints/step-8/rank-0"):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    kill_job(process)
    assert not store.is_complete("runs/killed/outputs/adapter")
    _ok(run_job(spec, tmp_path, nproc))

    whole, resumed = metrics(tmp_path, "whole"), metrics(tmp_path, "killed")
    record = store.read_json("runs/killed/outputs/adapter/zhllama_adapter.json")
    print(f"resumed from step {record['resumed_from_step']}")
    assert record["resumed_from_step"] is not None and 8 <= record["resumed_from_step"] < 30
    assert [r["step"] for r in resumed] == list(range(1, 31))
    assert [r["batch_crc"] for r in resumed] == [r["batch_crc"] for r in whole]
    deltas = [abs(a["loss"] - b["loss"]) for a, b in zip(whole, resumed, strict=True)]
    print(f"max |loss delta| after resume: {max(deltas):.2e}")
    assert max(deltas) <= 1e-4
    steps = sorted(int(name.split("-")[1]) for name in store.list_dirs("runs/killed/checkpoints"))
    assert len(steps) == 2  # keep_checkpoints


def test_bits4_on_cpu_stops_before_loading_anything(tiny: dict[str, Path], tmp_path: Path) -> None:
    result = run_job(write_spec(tiny, tmp_path, "qlora", bits=4), tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: bits=4 needs a CUDA GPU (bitsandbytes); this machine has none: use bits=16")
    store = DirStore(tmp_path / "store")
    assert store.list_dirs("runs/qlora") == [] or not store.exists("runs/qlora/outputs")
    assert not store.exists("cache")


def test_an_empty_corpus_fails_in_one_line_and_caches_nothing(tiny: dict[str, Path], tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n", encoding="utf-8")
    result = run_job(write_spec(tiny, tmp_path, "empty", data=[f"file://{empty}"]), tmp_path)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: data[0]: file://{empty} gives 0 tokens") and "less than one block of 32" in last
    store = DirStore(tmp_path / "store")
    assert store.list_keys("cache/datasets") == [] and not store.exists("runs/empty/outputs")
    status = store.read_json("runs/empty/status.json")
    assert status["state"] == "Failed" and status["reason"] == "InvalidInput"


def test_a_broken_sft_line_fails_with_file_and_line(tiny: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(tiny["sft"].read_text(encoding="utf-8") + '{"instruction": "x", "output": \n', encoding="utf-8")
    result = run_job(write_spec(tiny, tmp_path, "badsft", stage="sft", data=[f"file://{bad}"], block_size=200),
                     tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {bad}:65: not valid JSON")
    assert not DirStore(tmp_path / "store").exists("runs/badsft/outputs")
    assert json.loads(bad.read_text().splitlines()[0])["instruction"]


@pytest.mark.slow
def test_resuming_zero_partitions_at_another_world_size_is_refused_in_one_line(
    tiny: dict[str, Path], tmp_path: Path
) -> None:
    spec = write_spec(tiny, tmp_path, "resize", zero_stage=2, max_steps=4, checkpoint_every=2,
                      data=[f"file://{tiny['small_corpus']}"])
    _ok(run_job(spec, tmp_path, nproc=2))
    store = DirStore(tmp_path / "store")
    store.delete_prefix("runs/resize/outputs")  # as if the run had been killed after its step-2 checkpoint
    result = run_job(spec, tmp_path, nproc=1)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "error: checkpoint step-2 holds ZeRO-2 partitions of 2 ranks but this run has 1: resume with 2 ranks "
        "(resources.nodes x nproc_per_node), or use a new run id to start over")
    assert not store.exists("runs/resize/outputs")
