"""The real Chinese-LLaMA vocabulary (LLaMA-2 + chinese-sp-20k, built by the tokenizer stage) in a GGUF file.

Needs ../shared/data (skipped without it); the llama.cpp half also needs llama-cpp-python.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import gguf
import pytest
from transformers import AutoTokenizer

from tests.quantize.quantize_fixtures import tiny_llama
from zhllama.quantize import export_gguf

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
pytestmark = pytest.mark.skipif(not (SHARED / "chinese-sp-20k.model").is_file(), reason="../shared/data is absent")

TEXTS = [
    "人工智能正在改变世界，北京大学的研究者发布了新的中文语言模型。1998年1月，经济工作会议在京召开。",
    "The quick brown fox 你好世界！  两个空格\n换行",
]


def test_extended_llama_vocabulary_survives_in_gguf(tmp_path: Path) -> None:
    from zhllama.tokenizer import build_tokenizer

    heldout = tmp_path / "heldout.txt"
    heldout.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    build_tokenizer(
        SHARED / "llama2-tokenizer.model",
        tmp_path / "tokenizer",
        corpus=[],
        heldout=[heldout],
        chinese_sp_model=SHARED / "chinese-sp-20k.model",
        parity_lines=20,
    )
    model = tiny_llama(tmp_path / "model", tmp_path / "tokenizer")
    path = export_gguf(model, tmp_path / "model-F16.gguf", "F16")
    tokenizer = AutoTokenizer.from_pretrained(model)

    tokens = gguf.GGUFReader(path).fields["tokenizer.ggml.tokens"].contents()
    assert len(tokenizer) >= 49953 and len(tokens) == len(tokenizer)
    assert tokens == tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))

    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed: the llama.cpp tokenization check did not run")
    from zhllama.quantize.llamacpp import check_file

    ids = tokenizer(TEXTS[0]).input_ids
    result = check_file(path, TEXTS, [ids], ids[:8], window=32, stride=16, generate_tokens=2)
    assert result["token_ids"] == [tokenizer(text, add_special_tokens=False).input_ids for text in TEXTS]
