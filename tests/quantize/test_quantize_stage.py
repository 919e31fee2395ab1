"""run_quantize through the real run contract: file:// inputs, a directory store, the published artifact."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import pytest

from tests.quantize.quantize_fixtures import CORPUS
from zhllama.errors import UserError
from zhllama.quantize import run_quantize
from zhllama.run import RunContext
from zhllama.spec import StageSpec, resolve_spec


def quantize_spec(model: Path, tmp_path: Path, types: list[str]) -> StageSpec:
    heldout = tmp_path / "heldout.txt"
    heldout.write_text("\n".join(CORPUS) + "\n", encoding="utf-8")
    values = {
        "model": f"file://{model}",
        "heldout": [f"file://{heldout}"],
        "types": types,
        "max_eval_chars": 150,
        "check_llama_cpp": False,
        "store": f"file://{tmp_path / 'store'}",
    }
    return resolve_spec("quantize", size="tiny", values=values)


def test_run_quantize_publishes_gguf_files_and_report(bpe_model: Path, tmp_path: Path) -> None:
    spec = quantize_spec(bpe_model, tmp_path, ["F16", "Q8_0"])
    run_quantize(RunContext.create(spec, workdir=tmp_path / "work"))

    artifact = tmp_path / "store" / "runs" / spec.run_id / "outputs" / "gguf"
    assert (artifact / "manifest.json").is_file()
    report = json.loads((artifact / "report.json").read_text())
    assert report["heldout"]["characters"] == 150
    assert [row["type"] for row in report["types"]] == ["F16", "Q8_0"]
    assert gguf.GGUFReader(artifact / "model-Q8_0.gguf").fields["general.file_type"].contents() == 7


def test_run_quantize_refuses_an_unknown_type_first(bpe_model: Path, tmp_path: Path) -> None:
    spec = quantize_spec(bpe_model, tmp_path, ["Q4_0", "q4_0"])
    with pytest.raises(UserError, match=r"unknown GGUF type\(s\) \['q4_0'\]; valid types: F32, F16"):
        run_quantize(RunContext.create(spec, workdir=tmp_path / "work"))
    assert not (tmp_path / "store" / "runs" / spec.run_id / "outputs").exists()
