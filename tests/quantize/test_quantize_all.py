"""quantize_all end to end on a tiny model, and the merge reading a GGUF base written by the exporter."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from tests.quantize.quantize_fixtures import CORPUS
from zhllama.errors import UserError
from zhllama.eval.perplexity import per_char_perplexity
from zhllama.merge import merge_lora
from zhllama.models.loading import load_tokenizer
from zhllama.models.provenance import quantized_source, read_provenance
from zhllama.quantize import export_gguf, quantize_all

HAS_LLAMA_CPP = importlib.util.find_spec("llama_cpp") is not None


def test_quantize_all_without_llama_cpp(bpe_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without llama-cpp-python, K-quants are skipped with the reason and transformers scores the rest."""
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # what `import llama_cpp` sees when it is not installed
    report = quantize_all(bpe_model, tmp_path, ["F16", "Q8_0", "Q4_0", "Q4_K_M"], CORPUS, window=32, stride=16)

    rows = {row["type"]: row for row in report["types"]}
    assert "llama-cpp-python is not installed" in rows["Q4_K_M"]["skipped"]
    assert not (tmp_path / "model-Q4_K_M.gguf").exists()
    for qtype in ("F16", "Q8_0", "Q4_0"):
        assert rows[qtype]["readback"]["ok"] and rows[qtype]["transformers"]["loaded"]
        assert (tmp_path / f"model-{qtype}.gguf").stat().st_size == rows[qtype]["bytes"]
    f16, q8, q4 = (rows[t]["transformers"] for t in ("F16", "Q8_0", "Q4_0"))
    # F16 is the HF model up to half-precision rounding; 8 bits cost less than 4
    assert report["hf"] == {} and report["transformers_delta_reference"] == "F16"  # F16 written: the reference
    assert abs(f16["ppl_per_char"] / float32_ppl(bpe_model) - 1) < 1e-3
    assert f16["top1_agreement"] == 1.0
    assert abs(q8["delta_pct"]) < abs(q4["delta_pct"])
    assert rows["F16"]["bytes"] > rows["Q8_0"]["bytes"] > rows["Q4_0"]["bytes"]
    assert json.loads((tmp_path / "report.json").read_text())["types"][0]["type"] == "F16"
    table = (tmp_path / "report.md").read_text()
    assert "| Q8_0 |" in table and "skipped: K-quants are made only by llama.cpp" in table


@pytest.mark.skipif(not HAS_LLAMA_CPP, reason="llama-cpp-python is not installed")
def test_quantize_all_with_llama_cpp(spm_model: Path, tmp_path: Path) -> None:
    report = quantize_all(spm_model, tmp_path, ["F16", "Q4_K_M"], CORPUS, window=32, stride=16)
    rows = {row["type"]: row for row in report["types"]}
    assert rows["Q4_K_M"]["via"] == "llama.cpp" and rows["Q4_K_M"]["readback"]["ok"]
    assert rows["Q4_K_M"]["bytes"] < rows["F16"]["bytes"]
    # where llama.cpp scores the files, it alone loads them: its logits check the exporter's layout
    for row in rows.values():
        assert "transformers" not in row
        assert row["llama_cpp"]["loaded"] and row["llama_cpp"]["tokenization_matches_hf"]
        assert row["llama_cpp"]["tokens_per_second"] > 0
    # F16's logits are the HF model's up to half-precision rounding (0.014 here); a wrong Q/K permutation or a
    # shifted vocabulary moves them by whole units, as 4-bit quantization does (2.2)
    assert rows["F16"]["llama_cpp"]["logits_max_abs_diff"] < 0.1 < rows["Q4_K_M"]["llama_cpp"]["logits_max_abs_diff"]
    # llama.cpp's F16 perplexity is the HF model's up to half-precision rounding
    assert abs(rows["F16"]["llama_cpp"]["ppl_per_char"] / float32_ppl(spm_model) - 1) < 1e-2
    header = (tmp_path / "report.md").read_text()
    assert "float32 HF model is not scored" in header and "Δ is against F16 (llama.cpp). Perplexity" in header


def test_without_an_f16_file_the_float32_model_is_the_reference(bpe_model: Path, tmp_path: Path) -> None:
    report = quantize_all(bpe_model, tmp_path, ["Q8_0"], CORPUS, window=32, stride=16, check_llama_cpp=False)
    assert abs(report["hf"]["ppl_per_char"] / float32_ppl(bpe_model) - 1) < 1e-9
    row = report["types"][0]["transformers"]
    assert report["transformers_delta_reference"] == "HF model"
    assert row["delta_pct"] == pytest.approx(100 * (row["ppl_per_char"] / report["hf"]["ppl_per_char"] - 1))


def float32_ppl(model_dir: Path) -> float:
    """The float32 HF model's per-character perplexity on the corpus, with the windows the tests pass."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return per_char_perplexity(model, load_tokenizer(model_dir, field="model"), CORPUS, 32, 16).per_char


def test_unknown_type_fails_before_any_work(bpe_model: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown GGUF type"):
        quantize_all(bpe_model, tmp_path, ["F16", "Q4_K_X"], CORPUS)
    assert list(tmp_path.iterdir()) == []


def test_merge_reads_a_gguf_base(bpe_model: Path, tmp_path: Path) -> None:
    """A GGUF base (as the embedded SmolLM2 is) merges like the HF directory it was exported from."""
    hf = AutoModelForCausalLM.from_pretrained(bpe_model, dtype=torch.float32)
    with torch.no_grad():  # values an F16 file holds exactly, so both bases are the same numbers
        for parameter in hf.parameters():
            parameter.copy_(parameter.half().float())
    hf.save_pretrained(tmp_path / "hf")
    for tokenizer_file in bpe_model.glob("tokenizer*"):
        (tmp_path / "hf" / tokenizer_file.name).write_bytes(tokenizer_file.read_bytes())
    gguf_base = export_gguf(tmp_path / "hf", tmp_path / "base.gguf", "F16")

    peft_model = get_peft_model(hf, LoraConfig(r=4, target_modules=["q_proj", "k_proj", "down_proj"]))
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.1)
    peft_model.save_pretrained(tmp_path / "lora")

    for base, out in ((gguf_base, "from-gguf"), (tmp_path / "hf", "from-hf")):
        merge_lora(base, [tmp_path / "lora"], bpe_model, tmp_path / out, max_shard_bytes=10**9, dtype="float32")
    from_gguf = load_file(str(next((tmp_path / "from-gguf").glob("*.safetensors"))))
    from_hf = load_file(str(next((tmp_path / "from-hf").glob("*.safetensors"))))
    assert from_gguf.keys() == from_hf.keys()
    for name, tensor in from_hf.items():
        assert torch.allclose(from_gguf[name], tensor, atol=1e-6), name


def test_a_quantized_base_is_named_in_the_report(bpe_model: Path, tmp_path: Path) -> None:
    """A base shipped quantized (as the embedded SmolLM2 is, Q4_1) is quantized twice: the merge carries the
    base's type to the quantize report, which says so."""
    q8_base = export_gguf(bpe_model, tmp_path / "base-Q8_0.gguf", "Q8_0")
    f16_base = export_gguf(bpe_model, tmp_path / "base-F16.gguf", "F16")
    for base, out in ((q8_base, "from-q8"), (f16_base, "from-f16")):
        merge_lora(base, [], bpe_model, tmp_path / out, max_shard_bytes=10**9, dtype="float32")
    assert read_provenance(tmp_path / "from-q8")["imported_from_gguf"]["file_type"] == "MOSTLY_Q8_0"
    assert quantized_source(tmp_path / "from-f16") is None  # an F16 base loses nothing to its import

    (tmp_path / "gguf").mkdir()
    report = quantize_all(tmp_path / "from-q8", tmp_path / "gguf", ["Q4_0"], CORPUS[:2], window=32, stride=16,
                          check_llama_cpp=False)
    assert report["source_quantization"] == "MOSTLY_Q8_0"
    assert "Double quantization: the base model was shipped as Q8_0" in (tmp_path / "gguf" / "report.md").read_text()
