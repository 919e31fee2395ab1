"""The pretrain/sft recipe, first half: `setup` gathers everything a run trains with into one TrainSetup (inputs,
tokenizer, data, model, engine, resume point); `loop.fit` then trains it and `stage` publishes what came out.

Ordering rules, for a job of many pods (`setup` follows them top to bottom):
1. Everything that reads the store or burns CPU for an unknown time happens before the process group starts:
   inputs are fetched once per pod into the node cache, the GGUF import and the corpus tokenization run once
   (on node 0) and are published to the store, where the other nodes wait for them by polling, not in a
   collective. A 65 GB download can then never trip NCCL's timeout.
2. Cache keys come from the inputs' fingerprints (manifest digests, object versions), never from re-hashing
   raw files on every rank.
3. Only then do the ranks rendezvous (`process_group_timeout_s` covers the spread of the pods' downloads).
4. After the rendezvous `prepare` builds the model (ZeRO-3 partitions it across the ranks, collectively), wraps it
   in the engine and loads the newest usable checkpoint, whose shares every rank fetches for itself.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from zhllama.data import list_data_files
from zhllama.errors import UserError
from zhllama.models import ModelFiles, has_tokenizer, locate_tokenizer
from zhllama.models.dtypes import torch_dtype
from zhllama.models.gguf import hf_model_dir
from zhllama.models.loading import load_tokenizer
from zhllama.spec import TrainSpec
from zhllama.train.checkpoint import Checkpoints, TrainerState
from zhllama.train.datasets import Dataset, pretrain_dataset, sft_dataset
from zhllama.train.distributed import DistEnv, process_env, start_process_group
from zhllama.train.engine import DeepSpeedEngine, Engine, build_engine, deepspeed_config, resolve_precision
from zhllama.train.forward import compile_decoder_layers, resolve_fused_cross_entropy
from zhllama.train.model import (
    add_lora,
    check_quantization_supported,
    frozen_elements,
    load_base,
    merge_adapters,
    move_unpartitioned,
    resize_vocabulary,
    resolve_attn_implementation,
    untie_embeddings,
    zero3_loading,
)

if TYPE_CHECKING:
    from zhllama.run import RunContext

METRICS_DIR = "metrics"


@dataclass(frozen=True)
class TrainInputs:
    """What the stage reads, as local paths: all fetched (a GGUF base imported) before the process group starts."""

    base_model_dir: Path
    """An HF directory (a GGUF base's cached import)."""
    tokenizer: ModelFiles
    base_adapter_dirs: tuple[Path, ...] = ()
    """Adapters merged into the base first, in order (SFT trains on base + the pretraining adapter)."""


@dataclass(frozen=True)
class TrainOutputs:
    adapter_dir: Path
    """Receives (rank 0) the PEFT adapter, the tokenizer files, hyperparameters.yaml and zhllama_adapter.json."""
    metrics_dir: Path
    """Receives (rank 0) metrics.jsonl and the TensorBoard events."""


@dataclass(frozen=True)
class Resume:
    """Where training starts: the beginning, or the checkpoint it continues."""

    step: int = 0
    """Optimizer steps already done."""
    samples: int = 0
    """Global sample position of the next batch."""
    from_step: int | None = None
    """The checkpoint resumed, None for a fresh start."""


@dataclass(frozen=True)
class TrainSetup:
    """Everything `fit` trains with, built once, in the order the module docstring gives."""

    spec: TrainSpec
    env: DistEnv
    inputs: TrainInputs
    outputs: TrainOutputs
    tokenizer: PreTrainedTokenizerBase
    """Loaded once: it tokenizes the data, sizes the vocabulary and travels with the adapter."""
    data: Dataset
    model: PeftModel
    vocab: dict[str, Any]
    """The vocabulary resize's record (rows, tokenizer size, new rows and how they started)."""
    engine: Engine
    precision: str
    checkpoints: Checkpoints | None
    resume: Resume
    record: dict[str, Any]
    """What the adapter's record carries besides the results: data, ZeRO-3 partition, precision, fused loss,
    attention, compiled layers, engine."""
    pad_id: int
    """What short sequences are padded with: the tokenizer's pad token, else its eos."""
    zero3: Any = None
    """ZeRO-3's live HfDeepSpeedConfig: transformers holds only a weakref, and the final gather-and-save needs it."""

    @property
    def global_batch(self) -> int:
        """Samples one optimizer step consumes across all ranks."""
        return self.spec.micro_batch_size * self.spec.grad_accum_steps * self.env.place.world_size


def setup(ctx: RunContext) -> TrainSetup:
    """One training stage's setup (pretrain or sft, as the spec says) from the run context, rules 1-4 in order."""
    spec = ctx.spec
    assert isinstance(spec, TrainSpec)
    check_quantization_supported(spec.bits)  # before anything is downloaded or loaded
    env = process_env(ctx.place)
    resolve_fused_cross_entropy(spec, env.device)  # likewise: a liger loss this machine cannot run fails here
    resolve_attn_implementation(spec.attn_implementation, env.device, resolve_precision(spec.precision, env.device))
    tokenizer_files = locate_tokenizer(ctx.input(spec.tokenizer))
    tokenizer = load_tokenizer(tokenizer_files)
    # The data before the base: a corpus that cannot be used fails before a GGUF base is imported and cached.
    if spec.stage == "pretrain":
        data, data_record = pretrain_dataset(ctx, tokenizer)
    else:
        data, data_record = sft_dataset(list_data_files([ctx.input(s.uri) for s in spec.data]), tokenizer, spec)
    inputs = TrainInputs(
        base_model_dir=hf_model_dir(ctx, spec.base_model, field="base_model", timeout_s=spec.process_group_timeout_s),
        tokenizer=tokenizer_files,
        base_adapter_dirs=tuple(ctx.input(uri) for uri in spec.base_adapters),
    )
    start_process_group(env, needed=spec.zero_stage > 0, timeout_s=spec.process_group_timeout_s)  # rule 3
    checkpoints = Checkpoints(ctx.store, ctx.key("checkpoints"), ctx.place, ctx.workdir / "checkpoints",
                              spec.keep_checkpoints, spec.process_group_timeout_s)
    outputs = TrainOutputs(adapter_dir=ctx.output_dir("adapter"), metrics_dir=ctx.workdir / METRICS_DIR)
    return prepare(spec, env, inputs, outputs, tokenizer, data, checkpoints, {"data": data_record})


def prepare(
    spec: TrainSpec,
    env: DistEnv,
    inputs: TrainInputs,
    outputs: TrainOutputs,
    tokenizer: PreTrainedTokenizerBase,
    data: Dataset,
    checkpoints: Checkpoints | None,
    record: dict[str, Any],
) -> TrainSetup:
    """Rule 4, inside the process group: model, engine and resume point from local inputs."""
    precision = resolve_precision(spec.precision, env.device)
    fused_loss = resolve_fused_cross_entropy(spec, env.device)  # before the model: a refusal costs no load
    # ZeRO-3 loads the base partitioned, under this config (kept in the setup until the adapter is saved).
    zero3 = zero3_loading(deepspeed_config(spec, env.place.world_size, precision, env.device.type == "cuda")) \
        if spec.zero_stage == 3 and spec.bits == 16 else None
    model, vocab = build_model(spec, inputs.base_model_dir, tokenizer, inputs.base_adapter_dirs, env, precision,
                               zero3)
    partition = _partition_record(model, env) if zero3 is not None else {}
    compiled_layers = compile_decoder_layers(model) if spec.compile else 0  # LoRA is in the layers by now
    engine = build_engine(model, spec, env, precision, fused_loss)
    resume = _resume(spec, env, checkpoints, engine, vocab, outputs.metrics_dir)
    deepspeed = {"engine": "deepspeed", "deepspeed": engine.config} if isinstance(engine, DeepSpeedEngine) \
        else {"engine": "pytorch"}
    return TrainSetup(spec=spec, env=env, inputs=inputs, outputs=outputs, tokenizer=tokenizer, data=data, model=model,
                      vocab=vocab, engine=engine, precision=precision, checkpoints=checkpoints, resume=resume,
                      record={**record, **partition, "precision": precision, "fused_cross_entropy": fused_loss,
                              "attn_implementation": model.config._attn_implementation,  # build_model's choice
                              "compiled_layers": compiled_layers, **deepspeed},
                      pad_id=_pad_id(tokenizer, spec), zero3=zero3)


def _pad_id(tokenizer: PreTrainedTokenizerBase, spec: TrainSpec) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise UserError(f"tokenizer {spec.tokenizer}: neither a pad nor an eos token to pad batches with; "
                        "give a tokenizer that defines one")
    return int(pad)


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
    attn_implementation = resolve_attn_implementation(spec.attn_implementation, env.device, precision)
    model = load_base(base_model_dir, torch_dtype(precision), spec.bits, env.device,
                      attn_implementation=attn_implementation)
    tied = untie_embeddings(model)
    model = merge_adapters(model, list(base_adapter_dirs), len(tokenizer))
    # The base's own tokenizer splits each new piece into the sub-tokens its row starts from.
    base_tokenizer = load_tokenizer(base_model_dir, field="base_model") if has_tokenizer(base_model_dir) else None
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
    print(f"rank {env.place.rank}: holds {local} of {total} frozen elements ({local / max(total, 1):.3f})",
          flush=True)
    per_rank: list[Any] = [None] * env.place.world_size
    torch.distributed.all_gather_object(per_rank, local)
    return {"zero3_local_frozen_elements": per_rank, "frozen_elements": total}


def _resume(spec: TrainSpec, env: DistEnv, checkpoints: Checkpoints | None, engine: Engine, vocab: dict[str, Any],
            metrics_dir: Path) -> Resume:
    """Continue from the newest usable checkpoint (engine, RNG streams, the metrics up to it), or start fresh.

    Older complete steps stand in for a newer one that is corrupt or unreadable (Checkpoints.resume says which
    and why); a tokenizer that does not fit a checkpoint stops the job instead, whichever step it is.
    """
    if env.place.is_main:
        shutil.rmtree(metrics_dir, ignore_errors=True)  # a killed attempt's lines past the checkpoint go too
    loaded = None
    if checkpoints is not None:
        loaded = checkpoints.resume(engine, check=lambda state: _check_resumable(state, vocab, state.step))
    elif env.place.is_main:
        print("starting at step 0: no checkpoint", flush=True)
    if loaded is None:
        torch.manual_seed(spec.seed + env.place.rank)  # dropout masks differ per rank, repeat per run
        return Resume()
    state, share = loaded
    if env.place.is_main and (share / METRICS_DIR).exists():
        shutil.copytree(share / METRICS_DIR, metrics_dir)
    return Resume(step=state.step, samples=state.samples, from_step=state.step)


def _check_resumable(state: TrainerState, vocab: dict[str, Any], step: int) -> None:
    if state.vocab_rows != vocab["rows"] or state.tokenizer_size != vocab["tokenizer_size"]:
        raise UserError(
            f"checkpoint step-{step} was trained with a tokenizer of {state.tokenizer_size} tokens "
            f"({state.vocab_rows} rows); this run's tokenizer has {vocab['tokenizer_size']} ({vocab['rows']} rows): "
            "use the original tokenizer, or a new run id to start over"
        )


def local_setup(
    spec: TrainSpec,
    *,
    base_model_dir: Path,
    tokenizer_dir: Path,
    dataset: Dataset,
    outputs: TrainOutputs,
    checkpoints: Checkpoints | None = None,
    base_adapter_dirs: Sequence[Path] = (),
    env: DistEnv | None = None,
    record: dict[str, Any] | None = None,
) -> TrainSetup:
    """`setup` from local paths instead of a run context (tests, benchmarks): nothing to fetch, nothing cached."""
    check_quantization_supported(spec.bits)
    env = env or process_env()
    inputs = TrainInputs(base_model_dir, locate_tokenizer(tokenizer_dir), tuple(base_adapter_dirs))
    tokenizer = load_tokenizer(inputs.tokenizer)
    start_process_group(env, needed=spec.zero_stage > 0, timeout_s=spec.process_group_timeout_s)
    return prepare(spec, env, inputs, outputs, tokenizer, dataset, checkpoints, record or {})
