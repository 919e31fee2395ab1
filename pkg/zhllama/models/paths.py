"""Which files of a local input are the model and which the tokenizer: the one resolver every stage uses.

A model input is an HF directory (config.json + safetensors), a `.gguf` file, or a GGUF artifact (a directory of
.gguf files, as the embedded SmolLM2 and the quantize stage's output are). A tokenizer input is a directory of HF
tokenizer files, or a GGUF file (its tokenizer is embedded). Pure path logic: no torch, no transformers.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from zhllama.errors import UserError

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
"""What an HF tokenizer directory may hold: copied verbatim wherever a tokenizer travels (adapter, merged model)."""

TOKENIZER_MARKERS = TOKENIZER_FILES[:3]
"""Any of these makes a directory an HF tokenizer directory (the rest only complete one)."""


@dataclass(frozen=True)
class ModelFiles:
    """A model (or tokenizer) as transformers loads it: `from_pretrained(directory, gguf_file=gguf_file)`."""

    directory: Path
    gguf_file: str | None = None
    """The GGUF file's name inside `directory`; None for HF files."""

    @property
    def gguf(self) -> Path | None:
        return self.directory / self.gguf_file if self.gguf_file is not None else None


def has_tokenizer(directory: Path) -> bool:
    """True when `directory` holds HF tokenizer files."""
    return directory.is_dir() and any((directory / name).is_file() for name in TOKENIZER_MARKERS)


def copy_tokenizer_files(source: Path, out_dir: Path) -> list[str]:
    """Copy the HF tokenizer files of `source` into `out_dir` (not the tokenizer stage's reports); their names."""
    copied = []
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, out_dir / name)
            copied.append(name)
    return copied


def locate_model(path: Path, *, field: str = "model", gguf_file: str | None = None,
                 choose_with: str | None = None) -> ModelFiles:
    """The weights `path` holds: an HF directory (config.json wins), a .gguf file, or the one .gguf of a directory.

    `field` names the spec field in the errors; `gguf_file` picks a file in a directory of several, and
    `choose_with` is the spec field that sets it (None where the spec has none: then the fix is to name the file).
    """
    if path.is_file():
        if path.suffix != ".gguf":
            raise UserError(f"{field} {path}: a model file must be .gguf; pass an HF model directory otherwise")
        return ModelFiles(path.parent, path.name)
    if not path.is_dir():
        raise UserError(f"{field} {path}: model not found; pass an HF model directory or a .gguf file")
    if gguf_file is not None:
        if not (path / gguf_file).is_file():
            raise UserError(f"{field} {path}: gguf_file {gguf_file!r} is not in the model directory; "
                            "set gguf_file to one of its .gguf files")
        return ModelFiles(path, gguf_file)
    if (path / "config.json").is_file():
        return ModelFiles(path)
    found = _only_gguf(path, field, choose_with)
    if found is None:
        raise UserError(f"{field} {path}: neither an HF model directory (no config.json) nor a GGUF artifact "
                        "(no .gguf); pass an HF model directory or a .gguf file")
    return ModelFiles(path, found)


def locate_tokenizer(path: Path, *, field: str = "tokenizer") -> ModelFiles:
    """The tokenizer `path` holds: HF tokenizer files (they win: they are exact), else the one GGUF's own."""
    if path.is_file() and path.suffix == ".gguf":
        return ModelFiles(path.parent, path.name)
    if has_tokenizer(path):
        return ModelFiles(path)
    found = _only_gguf(path, field, None) if path.is_dir() else None
    if found is None:
        raise UserError(f"{field} {path}: no tokenizer.model, tokenizer.json or tokenizer_config.json (nor a .gguf); "
                        "pass the tokenizer stage's output directory, an HF model directory or a GGUF file")
    return ModelFiles(path, found)


def tokenizer_of(model: ModelFiles, adapters: list[Path]) -> ModelFiles:
    """The tokenizer a base + adapters model speaks: the last adapter's that ships one (the SFT adapter carries the
    extended vocabulary), else the model's own (its GGUF's, for a GGUF model)."""
    for adapter in reversed(adapters):
        if has_tokenizer(adapter):
            return ModelFiles(adapter)
    return model


def preferred_tokenizer_file(directory: Path, *, field: str) -> Path | None:
    """The one file a directory's tokenizer is read from: tokenizer.model (SentencePiece, as HF's slow tokenizer
    preferred it), then tokenizer.json, then the directory's one .gguf; None when it has none of them."""
    for name in ("tokenizer.model", "tokenizer.json"):
        if (directory / name).is_file():
            return directory / name
    found = _only_gguf(directory, field, None)
    return directory / found if found is not None else None


def _only_gguf(directory: Path, field: str, choose_with: str | None) -> str | None:
    """The name of the directory's only .gguf file; None without one; several are refused with the fix."""
    names = sorted(path.name for path in directory.glob("*.gguf"))
    if len(names) > 1:
        fix = (f"set {choose_with} to the one to load" if choose_with is not None
               else f"point {field} at the one to load ({directory / names[0]})")
        raise UserError(f"{field} {directory}: several GGUF files ({', '.join(names)}); {fix}")
    return names[0] if names else None
