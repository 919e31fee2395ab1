"""provenance.json in a model directory: what its weights went through before this run, carried from stage to stage.

The GGUF import writes it (the base's file and quantization type), the merge copies it into the merged model, and
the quantize report reads it: re-quantizing weights that were dequantized from a quantized base is a second
quantization, and a reader of the table must know it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

PROVENANCE_FILE = "provenance.json"


def write_gguf_provenance(gguf_file: Path, out_dir: Path) -> None:
    """Record in `out_dir` that its weights were dequantized from `gguf_file`, and from which type."""
    import gguf

    reader = gguf.GGUFReader(gguf_file)
    field = reader.fields.get("general.file_type")
    file_type = gguf.LlamaFileType(int(field.contents())).name if field is not None else None
    tensor_types: dict[str, int] = {}
    for tensor in reader.tensors:
        tensor_types[tensor.tensor_type.name] = tensor_types.get(tensor.tensor_type.name, 0) + 1
    record = {"imported_from_gguf": {"file": gguf_file.name, "file_type": file_type, "tensor_types": tensor_types}}
    (out_dir / PROVENANCE_FILE).write_text(json.dumps(record, indent=2) + "\n")


def read_provenance(model_dir: Path) -> dict[str, Any]:
    """The directory's provenance; {} when it has none (an HF model as published)."""
    path = model_dir / PROVENANCE_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def copy_provenance(source_dir: Path, out_dir: Path) -> None:
    if (source_dir / PROVENANCE_FILE).is_file():
        shutil.copy2(source_dir / PROVENANCE_FILE, out_dir / PROVENANCE_FILE)


def quantized_source(model_dir: Path) -> str | None:
    """The quantized type the weights were dequantized from (e.g. MOSTLY_Q4_1), or None when they never were."""
    imported = read_provenance(model_dir).get("imported_from_gguf") or {}
    file_type = imported.get("file_type")
    return file_type if file_type and file_type not in ("ALL_F32", "MOSTLY_F16", "MOSTLY_BF16") else None
