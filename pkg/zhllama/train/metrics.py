"""Training metrics: metrics.jsonl and TensorBoard event files in one directory, and a progress bar."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

METRICS_FILE = "metrics.jsonl"
# Dense bf16 tensor-core peaks (FLOP/s) for the model FLOPs utilization column.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "A10": 125e12,
                   "L4": 121e12, "V100": 125e12, "T4": 65e12}


def flops_per_token(model: torch.nn.Module, block_size: int) -> float:
    """Forward + backward model FLOPs per token: 6 per weight plus attention's 12·layers·hidden·seq (PaLM)."""
    params = sum(p.numel() for p in model.parameters())
    config = getattr(model, "config", None)
    layers = getattr(config, "num_hidden_layers", 0)
    hidden = getattr(config, "hidden_size", 0)
    return 6.0 * params + 12.0 * layers * hidden * block_size


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_FLOPS.items() if key in name), None)


class MetricsLog:
    """Appends records to metrics.jsonl and TensorBoard (rank 0); earlier records past `start_step` are dropped."""

    def __init__(self, directory: Path, *, enabled: bool, start_step: int, total_steps: int) -> None:
        self.enabled = enabled
        self.directory = directory
        self.bar = tqdm(total=total_steps, initial=start_step, desc="training", unit="step", disable=not enabled,
                        dynamic_ncols=True)
        self.writer = None
        if not enabled:
            return
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / METRICS_FILE
        if path.exists():  # a resumed run: keep only what the checkpoint covers
            kept = [line for line in path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= start_step]
            path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
        self.handle = open(path, "a", encoding="utf-8")  # noqa: SIM115 - open for the whole run
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(directory / "tensorboard"), purge_step=start_step + 1)

    def advance(self) -> None:
        self.bar.update(1)

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.handle.write(json.dumps(record) + "\n")
        self.handle.flush()
        assert self.writer is not None
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                self.writer.add_scalar(f"train/{key}", value, record["step"])
        self.writer.flush()
        self.bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")

    def close(self) -> None:
        self.bar.close()
        if self.enabled:
            self.handle.close()
            assert self.writer is not None
            self.writer.close()
