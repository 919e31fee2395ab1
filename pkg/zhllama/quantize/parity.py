"""This exporter's quantized file against llama.cpp's quantizer's, tensor by tensor, and both against float32.

The exporter quantizes the F16-rounded weights, as llama.cpp's quantizer does when it reads the F16 file, so the
two files agree byte for byte wherever both store a tensor as the same type. Quantizing the float32 weights
instead differed in 0.06-1.6 % of the bytes (only the input's half-precision rounding: gguf's quantizer given the
rounded weights wrote llama.cpp's bytes exactly) at the same error against float32, within noise either way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import numpy as np

from zhllama.quantize.export import float_tensors

FLOAT_TYPES = (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.BF16)


def compare_quantizers(model_dir: Path, ours: gguf.GGUFReader, theirs: gguf.GGUFReader) -> dict[str, Any]:
    """Bytes that differ between `ours` and `theirs` (llama.cpp's quantization of the F16 file) in the tensors
    both quantize to the same type, the tensors they store differently, and each file's relative RMS error
    against the float32 weights of `model_dir`."""
    our_tensors = {t.name: t for t in ours.tensors}
    their_tensors = {t.name: t for t in theirs.tensors}
    compared = differing = 0
    other_type: dict[str, str] = {}
    squared = {"ours": 0.0, "llama_quantizer": 0.0}
    norm = 0.0
    for name, weight in float_tensors(model_dir):
        mine, llamas = our_tensors[name], their_tensors[name]
        if mine.tensor_type in FLOAT_TYPES and llamas.tensor_type in FLOAT_TYPES:
            continue  # norms and unquantizable rows: nothing to compare
        if mine.tensor_type != llamas.tensor_type:
            other_type[name] = f"{mine.tensor_type.name} here, {llamas.tensor_type.name} by llama.cpp"
        else:
            mine_bytes, llama_bytes = _bytes(mine), _bytes(llamas)
            compared += mine_bytes.size
            differing += int(np.count_nonzero(mine_bytes != llama_bytes))
        for key, tensor in (("ours", mine), ("llama_quantizer", llamas)):
            squared[key] += float(np.square(_values(tensor, weight.shape) - weight, dtype=np.float64).sum())
        norm += float(np.square(weight, dtype=np.float64).sum())
    return {
        "bytes_compared": compared,
        "bytes_differing_pct": 100.0 * differing / compared if compared else 0.0,
        "tensors_of_another_type": other_type,
        "weight_relative_rmse": {key: (value / norm) ** 0.5 if norm else 0.0 for key, value in squared.items()},
    }


def _bytes(tensor: Any) -> np.ndarray:
    return np.asarray(tensor.data).view(np.uint8).reshape(-1)


def _values(tensor: Any, shape: tuple[int, ...]) -> np.ndarray:
    data = np.asarray(tensor.data)
    if tensor.tensor_type in FLOAT_TYPES and tensor.tensor_type != gguf.GGMLQuantizationType.BF16:
        return data.astype(np.float32).reshape(shape)
    return np.asarray(gguf.quants.dequantize(data, tensor.tensor_type), dtype=np.float32).reshape(shape)
