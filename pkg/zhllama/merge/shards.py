"""Read safetensors tensors one at a time and write sharded safetensors tensor by tensor.

Both directions keep at most one tensor resident: reading opens the file per tensor (the mmap is dropped when
the handle closes, so touched pages do not pile up in the resident set), and writing lays out each shard's
header from the planned shapes first, then streams every tensor's bytes as it is produced.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from zhllama.errors import UserError

INDEX_NAME = "model.safetensors.index.json"

SAFETENSORS_DTYPES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32"}


@dataclass(frozen=True)
class StoredTensor:
    """Where one tensor lives: the file, and its shape as stored."""

    file: Path
    shape: tuple[int, ...]


def index_safetensors(model_dir: Path) -> dict[str, StoredTensor]:
    """Every tensor of an HF model directory (sharded or not), in file order, without reading any data."""
    index = model_dir / INDEX_NAME
    if index.is_file():
        files = sorted({model_dir / name for name in json.loads(index.read_text())["weight_map"].values()})
    else:
        files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise UserError(f"{model_dir}: no *.safetensors weights; pass an HF model directory saved with safetensors")
    tensors: dict[str, StoredTensor] = {}
    for file in files:
        if not file.is_file():
            raise UserError(f"{index}: lists {file.name}, which is missing from {model_dir}")
        tensors.update(_file_tensors(file))
    return tensors


def _file_tensors(file: Path) -> dict[str, StoredTensor]:
    with safe_open(str(file), framework="pt") as handle:
        return {name: StoredTensor(file, tuple(handle.get_slice(name).get_shape())) for name in handle.keys()}  # noqa: SIM118


def read_tensor(file: Path, name: str) -> torch.Tensor:
    with safe_open(str(file), framework="pt") as handle:
        return handle.get_tensor(name)


def plan_shards(shapes: dict[str, tuple[int, ...]], dtype: torch.dtype, max_shard_bytes: int) -> list[list[str]]:
    """Tensor names grouped into shards of at most `max_shard_bytes` (a bigger tensor gets a shard of its own)."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    shards: list[list[str]] = [[]]
    filled = 0
    for name, shape in shapes.items():
        size = _numel(shape) * itemsize
        if shards[-1] and filled + size > max_shard_bytes:
            shards.append([])
            filled = 0
        shards[-1].append(name)
        filled += size
    return shards


def write_shards(
    out_dir: Path,
    shapes: dict[str, tuple[int, ...]],
    dtype: torch.dtype,
    max_shard_bytes: int,
    produce: Callable[[str], torch.Tensor],
    progress: Callable[[Iterable[str]], Iterable[str]] = lambda names: names,
) -> dict[str, object]:
    """Write `shapes` as safetensors shards plus the index, calling `produce(name)` once per tensor, in order."""
    shards = plan_shards(shapes, dtype, max_shard_bytes)
    itemsize = torch.empty((), dtype=dtype).element_size()
    weight_map: dict[str, str] = {}
    produced = iter(progress([name for shard in shards for name in shard]))
    total = 0
    for number, names in enumerate(shards, start=1):
        file_name = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        header: dict[str, object] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name in names:
            size = _numel(shapes[name]) * itemsize
            header[name] = {
                "dtype": SAFETENSORS_DTYPES[dtype],
                "shape": list(shapes[name]),
                "data_offsets": [offset, offset + size],
            }
            offset += size
            weight_map[name] = file_name
        total += offset
        header_bytes = json.dumps(header, separators=(",", ":")).encode()
        header_bytes += b" " * (-len(header_bytes) % 8)
        with (out_dir / file_name).open("wb") as out:
            out.write(struct.pack("<Q", len(header_bytes)))
            out.write(header_bytes)
            for name in names:
                next(produced)
                tensor = produce(name).to(dtype).contiguous()
                if tuple(tensor.shape) != shapes[name]:
                    raise AssertionError(f"{name}: produced {tuple(tensor.shape)}, planned {shapes[name]}")
                out.write(tensor.reshape(-1).view(torch.uint8).numpy().data)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out_dir / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    return {"shards": len(shards), "total_bytes": total}


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count
