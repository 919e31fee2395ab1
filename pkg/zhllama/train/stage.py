"""The pretrain and sft stages: resolve inputs, build (or reuse) the dataset, train, publish the adapter.

Ordering rules, for a job of many pods:
1. Everything that reads the store or burns CPU for an unknown time happens before the process group starts:
   inputs are fetched once per pod into the node cache, the GGUF import and the corpus tokenization run once
   (on node 0) and are published to the store, where the other nodes wait for them by polling, not in a
   collective. A 65 GB download can then never trip NCCL's timeout.
2. Cache keys come from the inputs' fingerprints (manifest digests, object versions), never from re-hashing
   raw files on every rank.
3. Only then do the ranks rendezvous (`process_group_timeout_s` covers the spread of the pods' downloads).
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zhllama.data import (
    BlockData,
    SequenceData,
    blocks_key,
    build_blocks,
    build_sft_sequences,
    list_data_files,
    load_blocks,
    read_sft_examples,
)
from zhllama.errors import UserError
from zhllama.runs import RunContext
from zhllama.spec import TrainSpec
from zhllama.store import ArtifactStore, node_lock
from zhllama.train.checkpoint import Checkpoints
from zhllama.train.distributed import DistEnv, process_env, start_process_group, wait_for
from zhllama.train.loop import METRICS_DIR, Dataset, train
from zhllama.train.model import check_quantization_supported, gguf_file_in, import_gguf, load_tokenizer


def built_once(store: ArtifactStore, key: str, build: Callable[[Path], dict[str, Any]], env: DistEnv,
               timeout_s: int, what: str) -> Path:
    """The artifact `key`, built and published by node 0 when the store lacks it, awaited by the other nodes;
    then fetched once per node. `build` fills a directory and returns the manifest's extra fields."""
    if not store.is_complete(key):
        if env.node_rank == 0:
            with node_lock(f"build:{store.uri(key)}"):
                if not store.is_complete(key):
                    with tempfile.TemporaryDirectory(prefix="zhllama-build-") as tmp:
                        extra = build(Path(tmp))
                        store.publish_dir(Path(tmp), key, extra=extra)
        else:
            wait_for(lambda: store.is_complete(key), f"node 0 to publish {what} ({store.uri(key)})", timeout_s)
    return store.fetch_dir(key)


def base_model_dir(ctx: RunContext, env: DistEnv) -> Path:
    """An HF directory for the base: itself, or the GGUF dequantized once and cached under cache/base/<id>."""
    spec = ctx.spec
    assert isinstance(spec, TrainSpec)
    path = ctx.input(spec.base_model)
    gguf = gguf_file_in(path)
    if gguf is None:
        if not (path / "config.json").exists():
            raise UserError(f"base_model {path}: neither an HF model directory (config.json) nor a GGUF file")
        return path
    key = f"cache/base/{hashlib.sha256(ctx.fingerprint(spec.base_model).encode()).hexdigest()[:32]}"

    def build(out: Path) -> dict[str, Any]:
        print(f"importing {gguf.name} to safetensors (once; cached at {key})", flush=True)
        import_gguf(gguf, out)
        return {"imported_from": gguf.name}

    return built_once(ctx.store, key, build, env, spec.process_group_timeout_s, "the imported base model")


def pretrain_dataset(ctx: RunContext, tokenizer_dir: Path, env: DistEnv) -> tuple[Dataset, dict[str, Any]]:
    """Tokenized blocks, built on node 0 once per (tokenizer, corpus, block size) and cached in the store.

    Only node 0 downloads the raw corpus, and only when the cache lacks the blocks.
    """
    spec = ctx.spec
    assert isinstance(spec, TrainSpec)
    tokenizer = load_tokenizer(tokenizer_dir)
    if tokenizer.eos_token_id is None:
        raise UserError(f"tokenizer {tokenizer_dir} has no eos token; pretraining joins documents with it")
    eos_id = tokenizer.eos_token_id
    fingerprint = hashlib.sha256(
        (tokenizer.backend_tokenizer.to_str() + f"eos={eos_id}").encode()
    ).hexdigest()
    data = hashlib.sha256("\n".join(ctx.fingerprint(uri) for uri in spec.data).encode()).hexdigest()
    key = blocks_key(fingerprint, data, spec.block_size)

    def build(out: Path) -> dict[str, Any]:
        files = list_data_files([ctx.input(uri) for uri in spec.data])
        build_blocks(files, tokenizer.backend_tokenizer, eos_id, spec.block_size, out,
                     workers=spec.tokenize_workers)
        return {"data_files": [f.name for f in files]}

    local = built_once(ctx.store, key, build, env, spec.process_group_timeout_s, "the tokenized corpus")
    blocks = load_blocks(local)
    return BlockData(blocks), {"blocks_cache": key, "blocks": len(blocks), "block_size": spec.block_size}


def sft_dataset(files: list[Path], tokenizer_dir: Path, spec: TrainSpec) -> tuple[Dataset, dict[str, Any]]:
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
    env = process_env()
    # Rule 1: all I/O and preprocessing before the process group exists.
    tokenizer_dir = ctx.input(spec.tokenizer)
    adapter_dirs = [ctx.input(u) for u in spec.base_adapters]
    if spec.stage == "pretrain":
        dataset, record = pretrain_dataset(ctx, tokenizer_dir, env)
    else:
        dataset, record = sft_dataset(list_data_files([ctx.input(u) for u in spec.data]), tokenizer_dir, spec)
    base_dir = base_model_dir(ctx, env)
    start_process_group(env, needed=spec.zero_stage > 0, timeout_s=spec.process_group_timeout_s)

    checkpoints = Checkpoints(ctx.store, ctx.key("checkpoints"), env, ctx.workdir / "checkpoints",
                              spec.keep_checkpoints, spec.process_group_timeout_s)
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
