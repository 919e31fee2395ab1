"""The one resolver of model and tokenizer files: what each kind of input resolves to, and the one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from zhllama.errors import UserError
from zhllama.models import ModelFiles, locate_model, locate_tokenizer, preferred_tokenizer_file, tokenizer_of


def touch(directory: Path, *names: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        (directory / name).write_bytes(b"")
    return directory


def test_models_resolve_to_hf_files_or_one_gguf(tmp_path: Path) -> None:
    hf = touch(tmp_path / "hf", "config.json", "model.safetensors", "other.gguf")
    assert locate_model(hf) == ModelFiles(hf)  # config.json wins over a stray .gguf
    artifact = touch(tmp_path / "gguf", "model-F16.gguf", "report.md")
    assert locate_model(artifact) == ModelFiles(artifact, "model-F16.gguf")
    assert locate_model(artifact / "model-F16.gguf").gguf == artifact / "model-F16.gguf"


def test_model_errors_name_the_field_and_the_fix(tmp_path: Path) -> None:
    several = touch(tmp_path / "q", "model-F16.gguf", "model-Q4_0.gguf")
    with pytest.raises(UserError, match=r"^base_model .*several GGUF files .*; point base_model at the one to load"):
        locate_model(several, field="base_model")
    with pytest.raises(UserError, match=r"several GGUF files \(model-F16.gguf, model-Q4_0.gguf\); set gguf_file"):
        locate_model(several, choose_with="gguf_file")
    assert locate_model(several, gguf_file="model-Q4_0.gguf").gguf_file == "model-Q4_0.gguf"
    with pytest.raises(UserError, match="gguf_file 'missing.gguf' is not in the model directory"):
        locate_model(several, gguf_file="missing.gguf")
    with pytest.raises(UserError, match="^base_model .*: neither an HF model directory"):
        locate_model(touch(tmp_path / "empty"), field="base_model")
    with pytest.raises(UserError, match="a model file must be .gguf"):
        locate_model(touch(tmp_path / "bin", "model.bin") / "model.bin")
    with pytest.raises(UserError, match="^model .*: model not found; pass an HF model directory") as raised:
        locate_model(tmp_path / "missing")
    assert "\n" not in str(raised.value)


def test_tokenizers_prefer_hf_files_and_fall_back_to_the_gguf(tmp_path: Path) -> None:
    both = touch(tmp_path / "both", "tokenizer.json", "model.gguf")
    assert locate_tokenizer(both) == ModelFiles(both)
    gguf_only = touch(tmp_path / "g", "model.gguf")
    assert locate_tokenizer(gguf_only) == ModelFiles(gguf_only, "model.gguf")
    with pytest.raises(UserError, match="^tokenizer .*: no tokenizer.model, tokenizer.json or tokenizer_config.json"):
        locate_tokenizer(touch(tmp_path / "none", "config.json"))
    sp = touch(tmp_path / "sp", "tokenizer.json", "tokenizer.model", "model.gguf")
    assert preferred_tokenizer_file(sp, field="base_tokenizer") == sp / "tokenizer.model"
    assert preferred_tokenizer_file(touch(tmp_path / "e"), field="base_tokenizer") is None


def test_a_model_with_adapters_speaks_the_last_adapter_that_ships_a_tokenizer(tmp_path: Path) -> None:
    model = ModelFiles(touch(tmp_path / "base", "model.gguf"), "model.gguf")
    pretrain = touch(tmp_path / "pt", "adapter_config.json", "tokenizer.json")
    sft = touch(tmp_path / "sft", "adapter_config.json")
    assert tokenizer_of(model, [pretrain, sft]) == ModelFiles(pretrain)
    assert tokenizer_of(model, [sft]) == model
