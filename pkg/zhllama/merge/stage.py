"""The merge stage: inputs from the run context, merge_lora, the merged model published as `model`.

A GGUF base goes through the store's import cache (models.gguf.hf_model_dir), shared with the training stages:
the pipeline's merge reuses the import pretraining already made instead of dequantizing the base again.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

from zhllama.errors import UserError
from zhllama.merge.merge import merge_lora
from zhllama.models.gguf import hf_model_dir
from zhllama.spec.models import MergeSpec

if TYPE_CHECKING:
    from zhllama.run import RunContext

SIZE_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str) -> int:
    """Bytes in a size like '2GB', '500MB' or '1.5GiB' (decimal units, as transformers' max_shard_size)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).upper() if match else ""
    if not match or unit not in SIZE_UNITS or float(match.group(1)) <= 0:
        raise UserError(f"merge: max_shard_size {text!r} is not a size; write e.g. 2GB, 500MB or 1GiB")
    return int(float(match.group(1)) * SIZE_UNITS[unit])


def run_merge(ctx: RunContext) -> None:
    """Merge the adapters into the base in order, shard by shard, with the tokenizer's files alongside."""
    spec = ctx.spec
    assert isinstance(spec, MergeSpec)
    max_shard_bytes = parse_size(spec.max_shard_size)
    out_dir = ctx.output_dir("model")
    summary = merge_lora(
        hf_model_dir(ctx, spec.base_model, field="base_model"),  # one pod: node 0 builds, nobody waits
        [ctx.input(uri) for uri in spec.adapters],
        ctx.input(spec.tokenizer),
        out_dir,
        max_shard_bytes=max_shard_bytes,
        dtype=spec.dtype,
        workdir=ctx.workdir,
        progress=lambda names: ctx.progress(names, desc="merge"),
    )
    (out_dir / "merge.json").write_text(json.dumps(summary, indent=2) + "\n")
    ctx.publish("model")
