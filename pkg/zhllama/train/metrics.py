"""Training metrics: metrics.jsonl and TensorBoard event files in one directory, and a progress bar."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from zhllama.train.architecture import Architecture

METRICS_FILE = "metrics.jsonl"
# Dense bf16 tensor-core peaks (FLOP/s) for the model FLOPs utilization column.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "A10": 125e12,
                   "L4": 121e12, "V100": 125e12, "T4": 65e12}


def flops_per_token(model: torch.nn.Module, block_size: int) -> float:
    """Model FLOPs of one training token (forward + backward) of a LoRA-wrapped LLaMA, from its shape.

    Counted from the architecture, not the parameter tensors, which mislead three ways: PEFT keeps frozen originals
    beside the trained embed_tokens/lm_head copies, a 4-bit base packs two weights per element, and ZeRO-3 leaves
    each rank's tensors empty. Per weight of a matmul: 2 FLOPs forward, 2 for the input gradient and, only when the
    weight is trained, 2 for its own gradient — frozen base weights 4, LoRA and a trained lm_head 6. embed_tokens is
    a lookup (its gradient a scatter-add): 0. Attention adds 12 · layers · attention width · block_size (PaLM's
    convention, which does not halve for the causal mask). Gradient checkpointing's recomputation is not model FLOPs.
    """
    config: dict[str, Any] = getattr(model, "config").to_dict()  # noqa: B009 - nn.Module does not declare it
    arch = Architecture.from_config(config, int(config["vocab_size"]))
    peft_config = getattr(model, "peft_config", {}).get("default")
    targets = set(peft_config.target_modules) if peft_config is not None else set()
    trained = set(peft_config.modules_to_save or ()) if peft_config is not None else set()
    rank = int(peft_config.r) if peft_config is not None else 0
    lora = sum(rank * (fan_in + fan_out) for name, (fan_in, fan_out) in arch.linears().items() if name in targets)
    head = arch.embedding_params * (6 if "lm_head" in trained else 4)
    attention = 12.0 * arch.layers * arch.heads * arch.head_dim * block_size
    return 4.0 * arch.body_params + 6.0 * arch.layers * lora + head + attention


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
        self.skipped_total = 0
        """fp16 updates skipped since step 0 (a resumed run carries the count of the steps it keeps)."""
        if not enabled:
            return
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / METRICS_FILE
        if path.exists():  # a resumed run: keep only what the checkpoint covers
            kept = [line for line in path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= start_step]
            path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
            self.skipped_total = json.loads(kept[-1]).get("skipped_total", 0) if kept else 0
        self.handle = open(path, "a", encoding="utf-8")  # noqa: SIM115 - open for the whole run
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(directory / "tensorboard"), purge_step=start_step + 1)

    def advance(self) -> None:
        self.bar.update(1)

    def log(self, record: dict[str, Any]) -> None:
        """Write one record; its `skipped_steps` (fp16 overflows) are added to `skipped_total` and announced."""
        if not self.enabled:
            return
        skipped = record.get("skipped_steps", [])
        self.skipped_total += len(skipped)
        record = {**record, "skipped_total": self.skipped_total}
        if skipped:
            self.bar.write(f"fp16 overflow at step {', '.join(map(str, skipped))}: update skipped, loss scale "
                           f"lowered ({self.skipped_total} skipped so far)")
        self.handle.write(json.dumps(record) + "\n")
        self.handle.flush()
        assert self.writer is not None
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                self.writer.add_scalar(f"train/{key}", value, record["step"])
        self.writer.flush()
        self.bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}", skipped=self.skipped_total)

    def close(self) -> None:
        self.bar.close()
        if self.enabled:
            self.handle.close()
            assert self.writer is not None
            self.writer.close()
