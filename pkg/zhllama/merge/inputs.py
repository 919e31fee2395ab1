"""Merge inputs as local directories: a GGUF base imported to safetensors, tokenizer files from a dir or a GGUF."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from zhllama.errors import UserError
from zhllama.merge.shards import write_shards

TOKENIZER_FILES = (
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
"""What a tokenizer directory may hold; copied verbatim into the merged model."""


def gguf_file_of(path: Path) -> Path | None:
    """The GGUF file `path` names: the file itself, or the only .gguf in a directory without safetensors."""
    if path.is_file():
        return path if path.suffix == ".gguf" else None
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1 and not any(path.glob("*.safetensors")):
        return ggufs[0]
    return None


def import_gguf_model(gguf: Path, out_dir: Path) -> Path:
    """Dequantize a GGUF model once into float32 safetensors + config.json in `out_dir`.

    transformers marks GGUF-loaded models as quantized and refuses to save them, so the weights are written
    from the state dict. The whole model is dequantized in memory: meant for small bases like the embedded
    SmolLM2; import big bases as HF directories.
    """
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    state = {name: tensor.detach() for name, tensor in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    out_dir.mkdir(parents=True, exist_ok=True)
    shapes = {name: tuple(tensor.shape) for name, tensor in state.items()}
    write_shards(out_dir, shapes, torch.float32, 2**62, state.__getitem__)
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["dtype"] = "float32"
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out_dir


def tokenizer_dir(path: Path, workdir: Path) -> Path:
    """A directory of tokenizer files for `path`: a tokenizer directory as is, or one saved from a GGUF file."""
    gguf = gguf_file_of(path)
    if gguf is not None:
        from transformers import AutoTokenizer

        saved = workdir / "gguf-tokenizer"
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(saved)
        return saved
    if not path.is_dir() or not any((path / name).is_file() for name in TOKENIZER_FILES[:3]):
        raise UserError(
            f"tokenizer {path}: no tokenizer.model, tokenizer.json or tokenizer_config.json; "
            "pass the tokenizer stage's output directory"
        )
    return path


def copy_tokenizer_files(source: Path, out_dir: Path) -> list[str]:
    copied = []
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, out_dir / name)
            copied.append(name)
    return copied
