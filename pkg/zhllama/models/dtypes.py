"""The one table of torch dtypes by the names specs use: merge's `dtype` (float16, bfloat16, float32) and
training's `precision` (fp16, bf16, fp32)."""

from __future__ import annotations

import torch

TORCH_DTYPES: dict[str, torch.dtype] = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
PRECISION_NAMES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


def torch_dtype(name: str) -> torch.dtype:
    """The dtype a spec names, by either spelling."""
    return TORCH_DTYPES[PRECISION_NAMES.get(name, name)]
