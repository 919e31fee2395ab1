"""The pretrain and sft stages: resolve inputs, build (or reuse) the dataset, train, publish the adapter.

Under torchrun every rank runs this; rank 0 builds shared caches first and publishes, the others then read them.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path
from typing import Any

from zhllama.data import (
    BlockData,
    SequenceData,
    blocks_key,
    build_blocks,
    build_sft_sequences,
    fingerprint_files,
    list_data_files,
    load_blocks,
    read_sft_examples,
)
from zhllama.errors import UserError
from zhllama.runs import RunContext
from zhllama.spec import TrainSpec
from zhllama.store import ArtifactStore
from zhllama.train.checkpoint import Checkpoints
from zhllama.train.distributed import DistEnv, init_distributed, main_first
from zhllama.train.loop import METRICS_DIR, Dataset, train
from zhllama.train.model import check_quantization_supported, gguf_file_in, import_gguf, load_tokenizer


def base_model_dir(store: ArtifactStore, path: Path, env: DistEnv) -> Path:
    """An HF directory for the base: itself, or the GGUF dequantized once and cached under cache/base/<sha256>."""
    gguf = gguf_file_in(path)
    if gguf is None:
        if not (path / "config.json").exists():
            raise UserError(f"base_model {path}: neither an HF model directory (config.json) nor a GGUF file")
        return path
    digest = hashlib.sha256()
    with open(gguf, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    key = f"cache/base/{digest.hexdigest()[:32]}"

    def build() -> Path:
        if not store.is_complete(key):
            with tempfile.TemporaryDirectory(prefix="zhllama-gguf-import-") as tmp:
                print(f"importing {gguf.name} to safetensors (once; cached at {key})", flush=True)
                import_gguf(gguf, Path(tmp))
                store.publish_dir(Path(tmp), key, extra={"imported_from": gguf.name})
        return store.fetch_dir(key)

    return main_first(env, build, lambda: store.fetch_dir(key))


def pretrain_dataset(
    store: ArtifactStore, files: list[Path], tokenizer_dir: Path, block_size: int, workers: int, env: DistEnv
) -> tuple[Dataset, dict[str, Any]]:
    """Tokenized blocks, built by rank 0 once per (tokenizer, corpus, block size) and cached in the store."""
    tokenizer = load_tokenizer(tokenizer_dir)
    if tokenizer.eos_token_id is None:
        raise UserError(f"tokenizer {tokenizer_dir} has no eos token; pretraining joins documents with it")
    fingerprint = hashlib.sha256(
        (tokenizer.backend_tokenizer.to_str() + f"eos={tokenizer.eos_token_id}").encode()
    ).hexdigest()
    key = blocks_key(fingerprint, fingerprint_files(files), block_size)

    def build() -> Path:
        if not store.is_complete(key):
            with tempfile.TemporaryDirectory(prefix="zhllama-blocks-") as tmp:
                build_blocks(files, tokenizer.backend_tokenizer, tokenizer.eos_token_id, block_size, Path(tmp),
                             workers=workers)
                store.publish_dir(Path(tmp), key, extra={"data_files": [f.name for f in files]})
        return store.fetch_dir(key)

    local = main_first(env, build, lambda: store.fetch_dir(key))
    blocks = load_blocks(local)
    return BlockData(blocks), {"blocks_cache": key, "blocks": len(blocks), "block_size": block_size}


def sft_dataset(
    files: list[Path], tokenizer_dir: Path, spec: TrainSpec
) -> tuple[Dataset, dict[str, Any]]:
    """SFT sequences with prompts masked; small enough that every rank tokenizes its own copy."""
    tokenizer = load_tokenizer(tokenizer_dir)
    if tokenizer.eos_token_id is None:
        raise UserError(f"tokenizer {tokenizer_dir} has no eos token; SFT ends every response with it")
    examples, report = read_sft_examples(files, skip_bad_records=spec.skip_bad_records)
    sequences = build_sft_sequences(examples, tokenizer, tokenizer.eos_token_id, spec.block_size,
                                    packing=spec.packing, report=report)
    return SequenceData(sequences), {"sft": report.as_dict()}


def run_train(ctx: RunContext) -> None:
    """One training stage (pretrain or sft, as the spec says) from the run context to the `adapter` output."""
    spec = ctx.spec
    assert isinstance(spec, TrainSpec)
    check_quantization_supported(spec.bits)  # before anything is downloaded or loaded
    env = init_distributed(needs_process_group=spec.zero_stage > 0)

    def inputs() -> tuple[Path, Path, list[Path], list[Path]]:
        return (ctx.input(spec.base_model), ctx.input(spec.tokenizer), [ctx.input(u) for u in spec.data],
                [ctx.input(u) for u in spec.base_adapters])

    base_path, tokenizer_dir, data_paths, adapter_dirs = main_first(env, inputs, inputs)
    files = list_data_files(data_paths)
    if spec.stage == "pretrain":
        dataset, record = pretrain_dataset(ctx.store, files, tokenizer_dir, spec.block_size, spec.tokenize_workers,
                                           env)
    else:
        dataset, record = sft_dataset(files, tokenizer_dir, spec)
    base_dir = base_model_dir(ctx.store, base_path, env)

    checkpoints = Checkpoints(ctx.store, ctx.key("checkpoints"), env, ctx.workdir / "checkpoints",
                              spec.keep_checkpoints)
    output_dir = ctx.output_dir("adapter")
    metrics_dir = ctx.workdir / METRICS_DIR
    if env.is_main:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    result = train(spec, base_model_dir=base_dir, tokenizer_dir=tokenizer_dir, dataset=dataset,
                   output_dir=output_dir, metrics_dir=metrics_dir, checkpoints=checkpoints,
                   base_adapter_dirs=adapter_dirs, env=env, record={"data": record})
    if env.is_main:
        ctx.store.publish_dir(metrics_dir, ctx.key(METRICS_DIR), extra={"steps": result.steps}, progress=False)
        ctx.publish("adapter", extra={"init_new_rows": spec.init_new_rows, "vocab": result.vocab,
                                      "final_loss": result.final_loss, "steps": result.steps})


def run_pretrain(ctx: RunContext) -> None:
    if ctx.spec.stage != "pretrain":
        raise UserError(f"run_pretrain got a {ctx.spec.stage} spec; use run_sft")
    run_train(ctx)


def run_sft(ctx: RunContext) -> None:
    if ctx.spec.stage != "sft":
        raise UserError(f"run_sft got a {ctx.spec.stage} spec; use run_pretrain")
    run_train(ctx)

