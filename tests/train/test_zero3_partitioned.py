"""ZeRO-3 loads the base partitioned: no rank ever holds the whole frozen model, and it trains exactly as ZeRO-0."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel

from tests.train.jobs import metrics, run_job, write_spec
from zhllama.store import DirStore
from zhllama.train import load_base, untie_embeddings


def _ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stderr[-3000:]


def _adapter_logits(tiny: dict[str, Path], adapter: Path, batch: torch.Tensor, merged: Path | None = None) -> Any:
    base = load_base(tiny["base"], torch.float32, 16, torch.device("cpu"))
    untie_embeddings(base)
    base.resize_token_embeddings(832, mean_resizing=False)
    if merged is not None:
        base = PeftModel.from_pretrained(base, merged).merge_and_unload()
    model = PeftModel.from_pretrained(base, adapter).eval()
    with torch.no_grad():
        return model(input_ids=batch).logits


def _compare(tiny: dict[str, Path], tmp_path: Path, name: str, nproc: int = 2, **values: Any) -> dict[str, Any]:
    """The same spec with ZeRO-3 and with ZeRO-0 (DDP), both on `nproc` ranks: the records and loss curves."""
    runs: dict[str, Any] = {}
    for stage in (3, 0):
        run_id = f"{name}-zero{stage}"
        result = run_job(write_spec(tiny, tmp_path, run_id, zero_stage=stage, **values), tmp_path, nproc=nproc)
        _ok(result)
        for line in result.stdout.splitlines():
            if "frozen elements" in line:
                print(f"{run_id}: {line}")
        store = DirStore(tmp_path / "store")
        runs[f"record{stage}"] = store.read_json(f"runs/{run_id}/outputs/adapter/zhllama_adapter.json")
        runs[f"losses{stage}"] = [r["loss"] for r in metrics(tmp_path, run_id)]
        runs[f"adapter{stage}"] = store.fetch_dir(f"runs/{run_id}/outputs/adapter")
        print(f"{run_id} losses: {[round(x, 5) for x in runs[f'losses{stage}']]}")
    return runs


def _assert_partitioned(record: dict[str, Any], world: int) -> None:
    local, total = record["zero3_local_frozen_elements"], record["frozen_elements"]
    print(f"frozen elements held per rank after build_model: {local} of {total}")
    assert len(local) == world and total > 0
    assert all(n <= (1 / world + 0.1) * total for n in local)  # each rank a shard, never the whole base
    assert sum(local) >= total  # the shards cover it (with at most a few padding elements per tensor)


@pytest.mark.slow
def test_zero3_loads_the_base_partitioned_and_trains_like_zero0(tiny: dict[str, Path], tmp_path: Path) -> None:
    values: dict[str, Any] = {"max_steps": 8, "micro_batch_size": 16, "checkpoint_every": 100, "lr": 5e-3,
              "data": [f"file://{tiny['small_corpus']}"]}
    runs = _compare(tiny, tmp_path, "pt", **values)
    _assert_partitioned(runs["record3"], 2)
    assert "zero3_local_frozen_elements" not in runs["record0"]
    losses3, losses0 = runs["losses3"], runs["losses0"]
    assert sum(losses3[-2:]) / 2 < sum(losses3[:2]) / 2 - 0.3
    assert max(abs(a - b) for a, b in zip(losses3, losses0, strict=True)) <= 1e-4
    assert runs["record3"]["vocab"] == runs["record0"]["vocab"] and runs["record3"]["vocab"]["untied"] is True

    batch = torch.randint(0, 824, (2, 32), generator=torch.Generator().manual_seed(0))
    logits3 = _adapter_logits(tiny, runs["adapter3"], batch)
    logits0 = _adapter_logits(tiny, runs["adapter0"], batch)
    print(f"pretrain adapter logits, max |ZeRO-3 - ZeRO-0|: {float((logits3 - logits0).abs().max()):.2e}")
    assert logits3.shape == (2, 32, 832)
    torch.testing.assert_close(logits3, logits0, rtol=1e-4, atol=1e-4)

    # SFT on base + that pretraining adapter: ZeRO-3 merges it layer by layer into the partitioned base.
    pretrained = runs["adapter0"]
    sft = _compare(tiny, tmp_path, "sft", stage="sft", data=[f"file://{tiny['sft']}"], block_size=200, max_steps=4,
                   micro_batch_size=4, checkpoint_every=100, lr=3e-3, base_adapters=[f"file://{pretrained}"])
    _assert_partitioned(sft["record3"], 2)
    assert max(abs(a - b) for a, b in zip(sft["losses3"], sft["losses0"], strict=True)) <= 1e-4
    logits3 = _adapter_logits(tiny, sft["adapter3"], batch, merged=pretrained)
    logits0 = _adapter_logits(tiny, sft["adapter0"], batch, merged=pretrained)
    print(f"sft adapter logits, max |ZeRO-3 - ZeRO-0|: {float((logits3 - logits0).abs().max()):.2e}")
    torch.testing.assert_close(logits3, logits0, rtol=1e-4, atol=1e-4)
