"""A GGUF base as an HF directory: dequantized once per input and cached in the store for every later stage.

Training, merging, evaluation and generation read safetensors (transformers' GGUF loader parses the file's whole
vocabulary in Python: 24 s for SmolLM2 on 2 cores, against 1 s for the imported copy); the embedded SmolLM2 (and
any llama.cpp release) is a GGUF file. The import keeps transformers' own writer (save_pretrained): the directory
it writes is complete (config with architectures, generation_config.json, sharded weights with their index, the
GGUF's tokenizer beside them, which training's sub-token initialisation of new rows needs), and is the format
every reader here loads. The one cost is to clear the marks transformers leaves on a GGUF-loaded model, which
would make the copy look quantized.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zhllama.models.once import DEFAULT_WAIT_S, built_once
from zhllama.models.paths import locate_model
from zhllama.models.provenance import write_gguf_provenance

if TYPE_CHECKING:
    from zhllama.run import RunContext

CACHE_PREFIX = "cache/base"


def import_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantize a GGUF model into an HF directory (float32 safetensors + its tokenizer files).

    The whole model is dequantized in memory: meant for small bases like the embedded SmolLM2; give big bases as
    HF directories.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The loaded model is marked GGUF-quantized, which training refuses; the saved copy is plain safetensors.
    for attribute in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(model.config, attribute):
            delattr(model.config, attribute)
    setattr(model, "hf_quantizer", None)  # noqa: B010 - transformers types it as always set
    model.save_pretrained(out_dir, safe_serialization=True)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out_dir)
    write_gguf_provenance(gguf, out_dir)


def import_cache_key(fingerprint: str) -> str:
    """Where the import of the input with this fingerprint (run.input_fingerprint) is cached in the store."""
    return f"{CACHE_PREFIX}/{hashlib.sha256(fingerprint.encode()).hexdigest()[:32]}"


def hf_model_dir(ctx: RunContext, uri: str, *, field: str, gguf_file: str | None = None,
                 choose_with: str | None = None, timeout_s: float = DEFAULT_WAIT_S) -> Path:
    """A local HF directory for the model input `uri`: the input itself, or its GGUF (`gguf_file` of a directory
    of several, set by the spec field `choose_with`) imported once per input for every stage that loads it
    (node 0 imports and publishes under cache/base/<id>; the other nodes wait up to `timeout_s` for it)."""
    files = locate_model(ctx.input(uri), field=field, gguf_file=gguf_file, choose_with=choose_with)
    gguf = files.gguf
    if gguf is None:
        return files.directory
    # Keyed by the input's fingerprint (manifest digest or object versions): no node re-hashes a big file.
    key = import_cache_key(ctx.fingerprint(uri) + (f"#{gguf_file}" if gguf_file else ""))

    def build(out: Path) -> dict[str, Any]:
        print(f"importing {gguf.name} to safetensors (once; cached at {key})", flush=True)
        import_gguf(gguf, out)
        return {"imported_from": gguf.name}

    return built_once(ctx.store, key, build, node_rank=ctx.place.node_rank, what=f"the imported {field}",
                      timeout_s=timeout_s)
