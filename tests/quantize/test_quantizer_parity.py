"""The exporter's Q8_0/Q4_0 against llama.cpp's own quantizer on the same F16 file."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import gguf
import numpy as np
import pytest

from tests.quantize.quantize_fixtures import CORPUS
from zhllama.quantize import quantize_all
from zhllama.quantize.export import float_tensors

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                reason="llama-cpp-python is not installed")


def test_our_files_are_llama_cpps_bytes(spm_model: Path, tmp_path: Path) -> None:
    report = quantize_all(spm_model, tmp_path, ["F16", "Q8_0", "Q4_0"], CORPUS, window=32, stride=16)
    rows = {row["type"]: row for row in report["types"]}
    assert "llama_quantizer" not in rows["F16"]
    for qtype in ("Q8_0", "Q4_0"):
        theirs = rows[qtype]["llama_quantizer"]
        assert theirs["made"] and not theirs["tensors_of_another_type"]
        assert theirs["bytes_compared"] > 0 and theirs["bytes_differing_pct"] == 0.0
        error = theirs["weight_relative_rmse"]
        assert error["ours"] == error["llama_quantizer"] > 0
        assert theirs["ppl_scored"] is False  # identical bytes: llama.cpp's file is not scored a second time
        assert theirs["ours_vs_theirs_pct"] == pytest.approx(0.0, abs=1e-9)
        assert rows[qtype]["bytes"] == theirs["bytes"]
    assert not (tmp_path / "model-Q8_0.llama-quantize.gguf").exists()  # the comparison file is scratch
    table = (tmp_path / "report.md").read_text()
    assert "(=)" in table.split("Against llama.cpp's own quantizer")[1].split("| Q4_0 |")[1]


def test_the_float32_weights_would_give_other_bytes(spm_model: Path, tmp_path: Path) -> None:
    """Why the exporter rounds to half precision first: quantizing the float32 weights differs from llama.cpp."""
    quantize_all(spm_model, tmp_path, ["Q8_0"], CORPUS[:1], window=32, stride=16, check_llama_cpp=False)
    written = {t.name: np.asarray(t.data).view(np.uint8).reshape(-1)
               for t in gguf.GGUFReader(tmp_path / "model-Q8_0.gguf").tensors}
    differing = compared = 0
    for name, weight in float_tensors(spm_model):
        if weight.ndim == 2:
            direct = np.asarray(gguf.quants.quantize(weight, gguf.GGMLQuantizationType.Q8_0)).view(np.uint8)
            differing += int(np.count_nonzero(direct.reshape(-1) != written[name]))
            compared += direct.size
    assert 0 < differing < compared // 10
