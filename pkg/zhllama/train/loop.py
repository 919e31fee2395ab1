"""The pretrain/sft recipe, second half: `fit` trains a TrainSetup to spec.max_steps optimizer steps and writes the
adapter. Each step reads the micro-batches its rank owns at the global sample position, so a resumed run sees the
very batches the killed one would have; losses stay on the device until a log step reads the window's mean.
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from zhllama.data import collate
from zhllama.errors import UserError
from zhllama.models import copy_tokenizer_files
from zhllama.models.adapter_vocab import ADAPTER_RECORD
from zhllama.spec import TrainSpec
from zhllama.train.checkpoint import Checkpoints, TrainerState
from zhllama.train.datasets import Dataset
from zhllama.train.distributed import DistEnv, all_ranks_mean
from zhllama.train.engine import DeepSpeedEngine
from zhllama.train.metrics import MetricsLog, flops_per_token, peak_flops
from zhllama.train.recipe import TrainOutputs, TrainSetup, local_setup


@dataclass(frozen=True)
class TrainResult:
    steps: int
    resumed_from: int | None
    final_loss: float | None
    vocab: dict[str, Any]


@dataclass(frozen=True)
class StepOutcome:
    """One optimizer step on this rank."""

    loss: torch.Tensor
    """Mean over the micro-batches (on the device)."""
    grad_norm: torch.Tensor
    skipped: torch.Tensor
    """True when fp16 loss scaling skipped the update (on the device)."""
    tokens: int
    """Non-padding tokens this rank read."""
    batch_crc: int
    """CRC of the dataset indices this rank read: equal across a kill and resume when the data order is."""


@dataclass(frozen=True)
class WindowMetrics:
    loss: float
    tokens_per_s: float
    mfu: float | None
    skipped_steps: list[int]
    """Steps in the window whose update fp16 loss scaling skipped (an overflow)."""


@dataclass
class MetricWindow:
    """The steps since the last log line: summed on the device, read once per log step."""

    loss: torch.Tensor
    flops_per_token: float
    peak_flops: float | None
    """The device's peak FLOP/s, for the MFU column; None where it is not known (CPU, an unlisted GPU)."""
    steps: int = 0
    tokens: int = 0
    skipped: list[tuple[int, torch.Tensor]] = field(default_factory=list)
    """(step, skipped flag on the device) of each step in the window, read when it closes."""
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def open(cls, model: torch.nn.Module, block_size: int, device: torch.device) -> MetricWindow:
        return cls(torch.zeros((), device=device), flops_per_token(model, block_size), peak_flops(device))

    def add(self, step: int, outcome: StepOutcome) -> None:
        self.loss += outcome.loss
        self.steps += 1
        self.tokens += outcome.tokens
        self.skipped.append((step, outcome.skipped))

    def close(self, env: DistEnv) -> WindowMetrics:
        """The window's metrics over all ranks; then starts the next window."""
        # A skipped step's loss is still the loss of its batch (the update was dropped, not the forward pass).
        loss = all_ranks_mean(self.loss / self.steps, env).item()
        tokens_per_s = self.tokens * env.place.world_size / (time.perf_counter() - self.started)
        mfu = (self.flops_per_token * tokens_per_s / (self.peak_flops * env.place.world_size)
               if self.peak_flops is not None else None)
        # Every rank skips together (the overflow check is global), so rank 0's flags speak for the job.
        skipped = [step for step, flag in self.skipped if bool(flag)]
        self.loss.zero_()
        self.steps = self.tokens = 0
        self.skipped = []
        self.started = time.perf_counter()
        return WindowMetrics(loss, tokens_per_s, mfu, skipped)


def fit(s: TrainSetup) -> TrainResult:
    """Train from the setup's resume point to spec.max_steps, checkpointing on the way; then write the adapter."""
    spec = s.spec
    step, samples = s.resume.step, s.resume.samples
    metrics = MetricsLog(s.outputs.metrics_dir, enabled=s.env.place.is_main, start_step=step,
                         total_steps=spec.max_steps)
    window = MetricWindow.open(s.model, spec.block_size, s.env.device)
    final_loss: float | None = None
    s.model.train()
    while step < spec.max_steps:
        outcome = train_step(s, samples)
        step, samples = step + 1, samples + s.global_batch
        window.add(step, outcome)
        metrics.advance()
        if step % spec.log_every == 0 or step == spec.max_steps:
            final_loss = log_window(s, window, metrics, step, samples, outcome)
        if s.checkpoints is not None and step % spec.checkpoint_every == 0 and step < spec.max_steps:
            save_checkpoint(s, s.checkpoints, step, samples)
    metrics.close()
    if s.checkpoints is not None:
        s.checkpoints.wait()  # the last upload must be complete before the adapter says the run is done
    write_adapter(s, {"steps": step, "final_loss": final_loss, "resumed_from_step": s.resume.from_step})
    return TrainResult(steps=step, resumed_from=s.resume.from_step, final_loss=final_loss, vocab=s.vocab)


def train_step(s: TrainSetup, samples: int) -> StepOutcome:
    """One optimizer step over grad_accum_steps micro-batches, from global sample position `samples`."""
    spec, env = s.spec, s.env
    step_loss = torch.zeros((), device=env.device)
    tokens = batch_crc = 0
    for micro in range(spec.grad_accum_steps):
        # Each micro-step's samples are split between the ranks in rank order: the ranks read disjoint slices, and
        # the global position alone fixes which (a resumed run reads exactly what the killed one would have).
        start = samples + (micro * env.place.world_size + env.place.rank) * spec.micro_batch_size
        indices = s.data.indices(spec.seed, start, spec.micro_batch_size)
        items = [s.data[i] for i in indices]
        batch = collate(items, s.pad_id)
        batch_crc = zlib.crc32(np.asarray(indices, dtype=np.int64).tobytes(), batch_crc)
        tokens += sum(len(item.input_ids) for item in items)  # a packed batch has no attention_mask to count
        batch = {k: v.to(env.device, non_blocking=True) for k, v in batch.items()}
        step_loss += s.engine.forward_backward(batch, last_micro_step=micro == spec.grad_accum_steps - 1)
    grad_norm, skipped = s.engine.step()
    return StepOutcome(step_loss / spec.grad_accum_steps, grad_norm, skipped, tokens, batch_crc)


def log_window(s: TrainSetup, window: MetricWindow, metrics: MetricsLog, step: int, samples: int,
               last: StepOutcome) -> float:
    """Write the window's metrics line (loss, speed, MFU; lr, grad norm and crc of the `last` step); its loss."""
    closed = window.close(s.env)
    if not np.isfinite(closed.loss):
        raise UserError(f"training diverged at step {step} (loss {closed.loss}); lower lr or use bf16/fp32")
    entry: dict[str, Any] = {
        "step": step, "loss": closed.loss, "lr": s.engine.current_lr(), "grad_norm": _finite_or_none(last.grad_norm),
        "tokens_per_s": closed.tokens_per_s, "samples": samples, "batch_crc": last.batch_crc,
        "skipped_steps": closed.skipped_steps,
    }
    if closed.mfu is not None:
        entry["mfu"] = closed.mfu
    metrics.log(entry)
    return closed.loss


def _finite_or_none(value: torch.Tensor) -> float | None:
    """An overflowed step's gradient norm is inf: metrics.jsonl stays strict JSON with null there."""
    number = float(value)
    return number if np.isfinite(number) else None


def save_checkpoint(s: TrainSetup, checkpoints: Checkpoints, step: int, samples: int) -> None:
    """Checkpoint step `step` (uploaded in the background); rank 0's share carries the metrics so far."""
    state = TrainerState(step=step, samples=samples, world_size=s.env.place.world_size, vocab_rows=s.vocab["rows"],
                         tokenizer_size=s.vocab["tokenizer_size"], zero_stage=s.spec.zero_stage)
    checkpoints.save(step, state, s.engine, extra_main=s.outputs.metrics_dir if s.env.place.is_main else None)


def write_adapter(s: TrainSetup, results: dict[str, Any]) -> None:
    """The PEFT adapter (LoRA + full embed_tokens/lm_head), the tokenizer beside it and the records of the run."""
    spec, out = s.spec, s.outputs.adapter_dir
    gathered: Any = nullcontext()
    if isinstance(s.engine, DeepSpeedEngine) and spec.zero_stage == 3:
        import deepspeed

        # ZeRO-3 holds a shard of every weight per rank: gather the trained ones for the save (a collective).
        gathered = deepspeed.zero.GatheredParameters([p for p in s.model.parameters() if p.requires_grad])
    with gathered:
        if s.env.place.is_main:
            out.mkdir(parents=True, exist_ok=True)
            s.model.peft_config["default"].base_model_name_or_path = spec.base_model
            s.model.save_pretrained(str(out), save_embedding_layers=False)
    if not s.env.place.is_main:
        return
    if s.inputs.tokenizer.gguf_file is None:
        copy_tokenizer_files(s.inputs.tokenizer.directory, out)
    else:  # a GGUF's embedded tokenizer: saved as the HF files every later stage reads
        s.tokenizer.save_pretrained(out)
    (out / "hyperparameters.yaml").write_text(
        yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False, allow_unicode=True), encoding="utf-8"
    )
    record = {"stage": spec.stage, "base_model": spec.base_model, "base_adapters": spec.base_adapters,
              "rows": s.vocab["rows"], **s.record, "vocab": s.vocab, **results}
    (out / ADAPTER_RECORD).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def train(
    spec: TrainSpec,
    *,
    base_model_dir: Path,
    tokenizer_dir: Path,
    dataset: Dataset,
    output_dir: Path,
    metrics_dir: Path,
    checkpoints: Checkpoints | None = None,
    base_adapter_dirs: Sequence[Path] = (),
    env: DistEnv | None = None,
    record: dict[str, Any] | None = None,
) -> TrainResult:
    """The recipe in one call from local paths (tests, benchmarks): `local_setup`, then `fit`."""
    outputs = TrainOutputs(adapter_dir=output_dir, metrics_dir=metrics_dir)
    return fit(local_setup(spec, base_model_dir=base_model_dir, tokenizer_dir=tokenizer_dir, dataset=dataset,
                           outputs=outputs, checkpoints=checkpoints, base_adapter_dirs=base_adapter_dirs, env=env,
                           record=record))
