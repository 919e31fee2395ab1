"""Merge LoRA adapters into a base model, tensor by tensor, into sharded safetensors.

Every check runs before the first byte is written: an adapter for another vocabulary or architecture is the
mistake users hit most, and it must fail in seconds with the sizes, not after half a merged model is on disk.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from zhllama.errors import UserError
from zhllama.merge.adapters import EMBED, LM_HEAD, Adapter, read_adapter
from zhllama.merge.shards import StoredTensor, index_safetensors, read_tensor, write_shards
from zhllama.models import copy_tokenizer_files, locate_model
from zhllama.models.adapter_vocab import real_rows
from zhllama.models.dtypes import TORCH_DTYPES
from zhllama.models.loading import load_tokenizer, tokenizer_directory
from zhllama.models.provenance import copy_provenance

Progress = Callable[[Iterable[str]], Iterable[str]]


@dataclass(frozen=True)
class MergePlan:
    """What the merged model holds and where each tensor comes from."""

    shapes: dict[str, tuple[int, ...]]
    """Output tensors in write order."""
    base: dict[str, StoredTensor]
    base_sources: dict[str, str]
    """Output tensor -> base tensor it starts from, where the names differ (an untied head from a tied base)."""
    adapters: list[Adapter]
    tie_word_embeddings: bool
    vocab_size: int

    def tensor(self, name: str) -> torch.Tensor:
        """The merged tensor: the last full copy an adapter carries (else the base), plus later LoRA deltas."""
        start = max((i for i, a in enumerate(self.adapters) if name in a.replacements), default=-1)
        if start >= 0:
            # rows past the vocabulary are the adapter's padding (_check_adapter let only those through)
            weight = self.adapters[start].replacement(name).float()[: self.vocab_size]
        else:
            source = self.base_sources.get(name, name)
            weight = read_tensor(self.base[source].file, source).float()
        for adapter in self.adapters[start + 1 :]:
            if name in adapter.deltas:
                weight += adapter.delta(name)
        return weight


def merge_lora(
    base: Path,
    adapters: list[Path],
    tokenizer: Path,
    out_dir: Path,
    *,
    max_shard_bytes: int,
    dtype: str,
    workdir: Path | None = None,
    progress: Progress = lambda names: names,
) -> dict[str, Any]:
    """Merge `adapters` (in order) into `base`, writing an HF model directory with the tokenizer's files.

    `base` is an HF safetensors directory or a GGUF file (imported into scratch; the stage passes the import the
    store caches); `tokenizer` a tokenizer directory or a GGUF file.
    Returns a summary (vocab size, tying, shard count, bytes, seconds).
    """
    started = time.monotonic()
    if dtype not in TORCH_DTYPES:
        raise UserError(f"merge: dtype {dtype!r} is not one of {', '.join(TORCH_DTYPES)}")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise UserError(f"merge: output directory {out_dir} is not empty; pass a new directory")
    loaded = [read_adapter(path) for path in adapters]
    with tempfile.TemporaryDirectory(dir=workdir, prefix="merge-") as scratch:
        tokenizer_files = tokenizer_directory(tokenizer, Path(scratch))
        vocab_size = len(load_tokenizer(tokenizer_files))
        base_dir = _hf_base(base, Path(scratch))
        config = read_config(base_dir)
        plan = plan_merge(index_safetensors(base_dir), config, loaded, vocab_size, tokenizer)

        out_dir.mkdir(parents=True, exist_ok=True)
        try:
            written = write_shards(out_dir, plan.shapes, TORCH_DTYPES[dtype], max_shard_bytes, plan.tensor, progress)
            write_config(config, plan, dtype, out_dir)
            if (base_dir / "generation_config.json").is_file():
                shutil.copy2(base_dir / "generation_config.json", out_dir / "generation_config.json")
            copy_provenance(base_dir, out_dir)
            copied = copy_tokenizer_files(tokenizer_files, out_dir)
        except BaseException:
            # nothing half-written stays behind: the directory was empty when the merge started
            for path in out_dir.iterdir():
                shutil.rmtree(path) if path.is_dir() else path.unlink()
            raise
    return {
        "adapters": [str(path) for path in adapters],
        "vocab_size": plan.vocab_size,
        "tie_word_embeddings": plan.tie_word_embeddings,
        "merged_lora_tensors": sum(len(a.deltas) for a in loaded),
        "dtype": dtype,
        "tokenizer_files": copied,
        "seconds": round(time.monotonic() - started, 2),
        **written,
    }


def read_config(model_dir: Path) -> dict[str, Any]:
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        raise UserError(f"base {model_dir}: no config.json; pass an HF model directory or a GGUF file")
    config: dict[str, Any] = json.loads(config_file.read_text())
    missing = [key for key in ("hidden_size", "num_hidden_layers") if key not in config]
    if missing:
        raise UserError(f"base {config_file}: missing {', '.join(missing)}; only LLaMA-family models can be merged")
    return config


def _hf_base(base: Path, scratch: Path) -> Path:
    """The HF directory of `base`; a GGUF base is imported into `scratch` (uncached: no store here)."""
    files = locate_model(base, field="base_model")
    if files.gguf is None:
        return files.directory
    from zhllama.models.gguf import import_gguf

    import_gguf(files.gguf, scratch / "base")
    return scratch / "base"


def plan_merge(
    base: dict[str, StoredTensor],
    config: dict[str, Any],
    adapters: list[Adapter],
    vocab_size: int,
    tokenizer: Path,
) -> MergePlan:
    """Check every adapter against the base and the tokenizer; lay out the merged tensors."""
    if EMBED not in base:
        raise UserError(f"base: no tensor {EMBED}; only LLaMA-family models can be merged")
    hidden, layers = config["hidden_size"], config["num_hidden_layers"]
    for adapter in adapters:
        _check_adapter(adapter, base, hidden, layers, vocab_size, tokenizer)

    # PEFT's copy of a tied embedding is a separate module: once an adapter trains either side, the model it
    # trained has an input embedding and a head that differ, so the merged model must be untied to match it
    base_tied = bool(config.get("tie_word_embeddings", False)) or LM_HEAD not in base
    trained = {name: any(name in a.replacements for a in adapters) for name in (EMBED, LM_HEAD)}
    tied = base_tied and not any(trained.values())
    head_source = EMBED if base_tied else LM_HEAD
    for name, source in ((EMBED, EMBED), (LM_HEAD, head_source)):
        rows = base[source].shape[0]
        if not trained[name] and rows != vocab_size:
            raise UserError(
                f"merge: the tokenizer {tokenizer} has {vocab_size} tokens but the base {source} has {rows} rows "
                "and no adapter carries a trained copy (modules_to_save); pass the adapters trained with this tokenizer"
            )

    shapes: dict[str, tuple[int, ...]] = {}
    for name, stored in base.items():
        if name == LM_HEAD and base_tied:
            continue
        shapes[name] = (vocab_size, hidden) if name == EMBED else stored.shape
    if not tied:
        shapes[LM_HEAD] = (vocab_size, hidden)
    return MergePlan(shapes, base, {LM_HEAD: head_source}, adapters, tied, vocab_size)


def _check_adapter(
    adapter: Adapter,
    base: dict[str, StoredTensor],
    hidden: int,
    layers: int,
    vocab_size: int,
    tokenizer: Path,
) -> None:
    for name, lora in adapter.deltas.items():
        if name not in base:
            layer = re.search(r"\.layers\.(\d+)\.", name)
            if layer and int(layer.group(1)) >= layers:
                raise UserError(
                    f"adapter {adapter.path}: has LoRA weights for layer {layer.group(1)} but the base has {layers} "
                    "layers; it was trained for another model"
                )
            raise UserError(f"adapter {adapter.path}: targets {name}, which the base does not have")
        if lora.weight_shape != base[name].shape:
            raise UserError(
                f"adapter {adapter.path}: {name} is {list(lora.weight_shape)} in the adapter but "
                f"{list(base[name].shape)} in the base (hidden_size {hidden}); it was trained for another architecture"
            )
    for name, (_, shape) in adapter.replacements.items():
        if len(shape) != 2 or shape[1] != hidden:
            raise UserError(
                f"adapter {adapter.path}: {name} has hidden size {shape[-1]} but the base has {hidden}; "
                "it was trained for another architecture"
            )
        if real_rows(adapter.path, shape[0]) != vocab_size:
            raise UserError(
                f"adapter {adapter.path}: {name} has {shape[0]} rows but the tokenizer {tokenizer} has "
                f"{vocab_size} tokens; it was trained for another vocabulary, merge with its own tokenizer"
            )


def write_config(config: dict[str, Any], plan: MergePlan, dtype: str, out_dir: Path) -> None:
    merged = {key: value for key, value in config.items() if key not in ("quantization_config", "torch_dtype")}
    merged.update(vocab_size=plan.vocab_size, tie_word_embeddings=plan.tie_word_embeddings, dtype=dtype)
    (out_dir / "config.json").write_text(json.dumps(merged, indent=2) + "\n")
