"""The training loop shared by pretraining and SFT: from a base directory, a tokenizer and a dataset to an adapter.

`train` is the whole stage in plain arguments; `stage.py` only resolves URIs, builds the dataset and publishes.
"""

from __future__ import annotations

import json
import shutil
import time
import zlib
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import yaml
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from zhllama.data import collate, sample_indices
from zhllama.errors import UserError
from zhllama.spec import TrainSpec
from zhllama.train.checkpoint import Checkpoints, TrainerState
from zhllama.train.distributed import DistEnv, all_ranks_mean, init_distributed
from zhllama.train.engine import DTYPES, DeepSpeedEngine, Engine, build_engine, deepspeed_config, resolve_precision
from zhllama.train.metrics import MetricsLog, flops_per_token, peak_flops
from zhllama.train.model import (
    ADAPTER_RECORD,
    add_lora,
    check_quantization_supported,
    frozen_elements,
    load_base,
    load_tokenizer,
    merge_adapters,
    move_unpartitioned,
    padded_size,
    resize_vocabulary,
    untie_embeddings,
    zero3_loading,
)

METRICS_DIR = "metrics"


class Dataset(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class TrainResult:
    steps: int
    resumed_from: int | None
    final_loss: float | None
    vocab: dict[str, Any]


def build_model(
    spec: TrainSpec,
    base_model_dir: Path,
    tokenizer: PreTrainedTokenizerBase,
    base_adapter_dirs: Sequence[Path],
    env: DistEnv,
    precision: str,
    zero3: Any = None,
) -> tuple[PeftModel, dict[str, Any]]:
    """Base (+ merged adapters), untied and resized to the tokenizer, wrapped with LoRA; and the vocabulary record.

    `zero3` is the caller's live `zero3_loading(...)` object for a ZeRO-3 run: the base is then loaded partitioned
    (each rank holds 1/world of every frozen weight) and stays so through every step here. Without it the base is
    loaded whole on every rank.
    """
    check_quantization_supported(spec.bits)
    model = load_base(base_model_dir, DTYPES[precision], spec.bits, env.device)
    tied = untie_embeddings(model)
    tokenizer_rows = padded_size(len(tokenizer), spec.pad_vocab_multiple)
    model = merge_adapters(model, list(base_adapter_dirs), max(tokenizer_rows, model.config.vocab_size))
    base_tokenizer = None
    if (base_model_dir / "tokenizer.json").exists() or (base_model_dir / "tokenizer.model").exists():
        base_tokenizer = load_tokenizer(base_model_dir)
    vocab = resize_vocabulary(model, base_tokenizer, tokenizer, spec.init_new_rows, spec.pad_vocab_multiple,
                              spec.seed)
    vocab["untied"] = tied
    torch.manual_seed(spec.seed)  # LoRA's initial weights
    peft_model = add_lora(model, spec.lora, spec.gradient_checkpointing)
    if zero3 is not None:
        move_unpartitioned(peft_model, env.device)
    elif spec.bits == 16:
        peft_model.to(env.device)
    return peft_model, vocab


def _partition_record(model: torch.nn.Module, env: DistEnv) -> dict[str, Any]:
    """What each rank holds of the frozen base after a ZeRO-3 build (before deepspeed.initialize), logged per rank."""
    local, total = frozen_elements(model)
    print(f"rank {env.rank}: holds {local} of {total} frozen elements ({local / max(total, 1):.3f})", flush=True)
    per_rank: list[Any] = [None] * env.world_size
    torch.distributed.all_gather_object(per_rank, local)
    return {"zero3_local_frozen_elements": per_rank, "frozen_elements": total}


def _batch(dataset: Dataset, spec: TrainSpec, position: int, pad_id: int) -> tuple[dict[str, torch.Tensor], list[int]]:
    """The micro-batch starting at global sample `position`, and the dataset indices it holds."""
    indices = sample_indices(len(dataset), spec.seed, position, spec.micro_batch_size)
    return collate([dataset[i] for i in indices], pad_id), indices


def _check_resumable(state: TrainerState, vocab: dict[str, Any], step: int) -> None:
    if state.vocab_rows != vocab["rows"] or state.tokenizer_size != vocab["tokenizer_size"]:
        raise UserError(
            f"checkpoint step-{step} was trained with a tokenizer of {state.tokenizer_size} tokens "
            f"({state.vocab_rows} rows); this run's tokenizer has {vocab['tokenizer_size']} ({vocab['rows']} rows): "
            "use the original tokenizer, or a new run id to start over"
        )


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
    """Train spec.max_steps optimizer steps (resuming from the newest complete checkpoint) and write the adapter.

    `output_dir` receives (on rank 0) the PEFT adapter, the tokenizer files, hyperparameters.yaml and
    zhllama_adapter.json; `metrics_dir` receives metrics.jsonl and TensorBoard events.
    """
    env = env or init_distributed(spec.zero_stage > 0, spec.process_group_timeout_s)
    precision = resolve_precision(spec.precision, env.device)
    tokenizer = load_tokenizer(tokenizer_dir)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    # ZeRO-3 loads the base partitioned; the config object must live until deepspeed.initialize (and the save).
    zero3 = zero3_loading(deepspeed_config(spec, env.world_size, precision, env.device.type == "cuda")) \
        if spec.zero_stage == 3 and spec.bits == 16 else None
    model, vocab = build_model(spec, base_model_dir, tokenizer, base_adapter_dirs, env, precision, zero3)
    partition = _partition_record(model, env) if zero3 is not None else {}
    engine: Engine = build_engine(model, spec, env, precision)

    step, position, resumed_from = 0, 0, None
    if checkpoints is not None and (latest := checkpoints.latest()) is not None:
        _check_resumable(checkpoints.read_state(latest), vocab, latest)
        state, share = checkpoints.load(latest, engine)
        step, position, resumed_from = state.step, state.samples, latest
        if env.is_main and (share / METRICS_DIR).exists():
            shutil.rmtree(metrics_dir, ignore_errors=True)
            shutil.copytree(share / METRICS_DIR, metrics_dir)
    else:
        torch.manual_seed(spec.seed + env.rank)  # dropout masks differ per rank, repeat per run

    metrics = MetricsLog(metrics_dir, enabled=env.is_main, start_step=step, total_steps=spec.max_steps)
    global_batch = spec.micro_batch_size * spec.grad_accum_steps * env.world_size
    flops = flops_per_token(model, spec.block_size)
    peak = peak_flops(env.device)
    window_loss = torch.zeros((), device=env.device)
    window_steps = window_tokens = 0
    window_start = time.perf_counter()
    final_loss: float | None = None
    model.train()
    while step < spec.max_steps:
        step_loss = torch.zeros((), device=env.device)
        batch_crc = 0
        for micro in range(spec.grad_accum_steps):
            start = position + (micro * env.world_size + env.rank) * spec.micro_batch_size
            batch, indices = _batch(dataset, spec, start, pad_id)
            batch_crc = zlib.crc32(np.asarray(indices, dtype=np.int64).tobytes(), batch_crc)
            window_tokens += int(batch["attention_mask"].sum())
            batch = {k: v.to(env.device, non_blocking=True) for k, v in batch.items()}
            step_loss += engine.forward_backward(batch, last_micro_step=micro == spec.grad_accum_steps - 1)
        grad_norm = engine.step()
        step += 1
        position += global_batch
        window_loss += step_loss / spec.grad_accum_steps
        window_steps += 1
        metrics.advance()

        if step % spec.log_every == 0 or step == spec.max_steps:
            loss = all_ranks_mean(window_loss / window_steps, env).item()
            elapsed = time.perf_counter() - window_start
            tokens_per_s = window_tokens * env.world_size / elapsed
            entry: dict[str, Any] = {
                "step": step, "loss": loss, "lr": engine.current_lr(), "grad_norm": float(grad_norm),
                "tokens_per_s": tokens_per_s, "samples": position, "batch_crc": batch_crc,
            }
            if peak is not None:
                entry["mfu"] = flops * tokens_per_s / (peak * env.world_size)
            if not np.isfinite(loss):
                raise UserError(f"training diverged at step {step} (loss {loss}); lower lr or use bf16/fp32")
            metrics.log(entry)
            final_loss = loss
            window_loss.zero_()
            window_steps = window_tokens = 0
            window_start = time.perf_counter()

        if checkpoints is not None and step % spec.checkpoint_every == 0 and step < spec.max_steps:
            state = TrainerState(step=step, samples=position, world_size=env.world_size, vocab_rows=vocab["rows"],
                                 tokenizer_size=vocab["tokenizer_size"], zero_stage=spec.zero_stage)
            checkpoints.save(step, state, engine, extra_main=metrics_dir if env.is_main else None)
    metrics.close()
    if checkpoints is not None:
        checkpoints.wait()

    write_adapter(model, engine, spec, tokenizer, tokenizer_dir, output_dir, env,
                  {**(record or {}), **partition, "vocab": vocab, "steps": step, "final_loss": final_loss,
                   "resumed_from_step": resumed_from, "precision": precision,
                   "engine": "deepspeed" if isinstance(engine, DeepSpeedEngine) else "pytorch",
                   **({"deepspeed": engine.config} if isinstance(engine, DeepSpeedEngine) else {})})
    return TrainResult(steps=step, resumed_from=resumed_from, final_loss=final_loss, vocab=vocab)


def write_adapter(
    model: PeftModel,
    engine: Engine,
    spec: TrainSpec,
    tokenizer: PreTrainedTokenizerBase,
    tokenizer_dir: Path,
    output_dir: Path,
    env: DistEnv,
    record: dict[str, Any],
) -> None:
    """The PEFT adapter (LoRA + full embed_tokens/lm_head), the tokenizer beside it and the records of the run."""
    gathered: Any = nullcontext()
    if isinstance(engine, DeepSpeedEngine) and spec.zero_stage == 3:
        import deepspeed

        # ZeRO-3 holds a shard of every weight per rank: gather the trained ones for the save.
        gathered = deepspeed.zero.GatheredParameters([p for p in model.parameters() if p.requires_grad])
    with gathered:
        if env.is_main:
            output_dir.mkdir(parents=True, exist_ok=True)
            model.peft_config["default"].base_model_name_or_path = spec.base_model
            model.save_pretrained(str(output_dir), save_embedding_layers=False)
    if not env.is_main:
        return
    if (tokenizer_dir / "tokenizer.json").exists() or (tokenizer_dir / "tokenizer.model").exists():
        for file in tokenizer_dir.iterdir():
            if file.is_file() and file.name != "manifest.json" and not (output_dir / file.name).exists():
                shutil.copyfile(file, output_dir / file.name)
    else:
        tokenizer.save_pretrained(output_dir)
    (output_dir / "hyperparameters.yaml").write_text(
        yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False, allow_unicode=True), encoding="utf-8"
    )
    (output_dir / ADAPTER_RECORD).write_text(
        json.dumps({"stage": spec.stage, "base_model": spec.base_model, "base_adapters": spec.base_adapters,
                    "rows": record["vocab"]["rows"], **record}, indent=2, ensure_ascii=False) + "\n",
        encoding="utf-8",
    )

