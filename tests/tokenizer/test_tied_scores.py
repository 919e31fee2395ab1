"""Chinese-LLaMA's own tokenizers: new pieces at score 0, ties SentencePiece breaks by position, which no
tokenizer.json merge list expresses. Every path that tokenizes must still give SentencePiece's ids.

The always-on tests build the tied model themselves (the tiny English base + a Chinese model at score 0); the
`reference` ones use LLaMA-2 + Chinese-LLaMA's chinese-sp-20k from ../shared/data when it is there.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import gguf
import pytest
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as sp_pb2
from transformers import AutoTokenizer

from tests.quantize.quantize_fixtures import tiny_llama
from tests.tokenizer.conftest import HELDOUT_LINES, shared_file
from zhllama.data.sft import SftExample, tokenize_example
from zhllama.embedded.peoples_daily import paragraph_texts, peoples_daily
from zhllama.errors import SpecError
from zhllama.eval.perplexity import document_ids
from zhllama.models.loading import encode, load_tokenizer
from zhllama.prepare.dataset import tokenization_for
from zhllama.prepare.units import load_encoder
from zhllama.prompts import alpaca_prompt
from zhllama.quantize import export_gguf
from zhllama.spec import resolve_spec
from zhllama.tokenizer import build_tokenizer

EXAM = [
    ("下列哪一项是我国的四大发明之一？", ("指南针", "蒸汽机", "电话", "望远镜"), "A"),
    ("“床前明月光，疑是地上霜”的作者是谁？", ("杜甫", "李白", "白居易", "王维"), "B"),
    ("中华人民共和国成立于哪一年？", ("1911年", "1921年", "1949年", "1978年"), "C"),
    ("水在标准大气压下的沸点是多少摄氏度？", ("0", "50", "90", "100"), "D"),
    ("长江流经的省级行政区不包括下列哪一个？", ("四川省", "湖北省", "山东省", "江苏省"), "C"),
    ("我国社会主义初级阶段的基本经济制度以什么为主体？", ("公有制", "私有制", "外资经济", "个体经济"), "A"),
    ("下列哪种作物原产于美洲？", ("小麦", "玉米", "水稻", "大豆"), "B"),
    ("《红楼梦》中“林黛玉进贾府”一节，林黛玉的母亲是？", ("贾敏", "王夫人", "薛姨妈", "邢夫人"), "A"),
]
"""A CMMLU-style exam (questions written for this test)."""


def exam_texts() -> list[str]:
    """The exam as lm-eval's cmmlu_* tasks write it: description, solved dev examples, the question, a letter."""
    def question(text: str, options: tuple[str, ...]) -> str:
        return f"{text}\nA. {options[0]}\nB. {options[1]}\nC. {options[2]}\nD. {options[3]}\n答案："

    header = "以下是关于中国历史的单项选择题，请直接给出正确答案的选项。\n\n"
    shots = "".join(f"{question(text, options)} {answer}\n\n" for text, options, answer in EXAM[:3])
    return [f"{header}{shots}{question(text, options)} {letter}" for text, options, _ in EXAM[3:] for letter in "AD"]


def heldout_lines(count: int) -> list[str]:
    return paragraph_texts(peoples_daily().heldout)[-count:]


def merge_tokenizers_py(llama: sp_pb2.ModelProto, chinese: sp_pb2.ModelProto) -> sp_pb2.ModelProto:
    """What Chinese-LLaMA's scripts/merge_tokenizer/merge_tokenizers.py writes, step for step."""
    merged = sp_pb2.ModelProto()
    merged.CopyFrom(llama)
    llama_spm_tokens_set = {p.piece for p in merged.pieces}
    for p in chinese.pieces:
        if p.piece not in llama_spm_tokens_set:
            new_p = sp_pb2.ModelProto().SentencePiece()
            new_p.piece = p.piece
            new_p.score = 0
            merged.pieces.append(new_p)
    return merged


def load_proto(path: Path) -> sp_pb2.ModelProto:
    proto = sp_pb2.ModelProto()
    proto.ParseFromString(path.read_bytes())
    return proto


def assert_every_path_gives_sentencepiece_ids(directory: Path, sp: spm.SentencePieceProcessor,
                                              lines: list[str], tmp_path: Path) -> None:
    """prepare/pretrain blocks, SFT, perplexity, exams and generation, each through the function the stage calls."""
    tokenizer = load_tokenizer(directory)
    auto = AutoTokenizer.from_pretrained(str(directory))
    bos, eos = sp.bos_id(), sp.eos_id()
    expected = sp.encode(lines)
    for text, want in zip(lines, expected, strict=True):
        assert auto(text)["input_ids"] == [bos, *want], text[:40]
        assert encode(tokenizer, text) == [bos, *want], text[:40]            # generation, exams (the harness)
        assert document_ids(tokenizer, text) == [bos, *want], text[:40]      # perplexity
        assert tokenizer.decode(encode(tokenizer, text), skip_special_tokens=True) == sp.decode(want)
    tokenization = tokenization_for(directory, "tokenizer", tmp_path, block_size=64, shard_mb=1.0,
                                    skip_bad_records=False)
    flat = load_encoder(tokenization).encode(lines).tolist()              # prepare stage, inline pretraining
    assert flat == [i for want in expected for i in (*want, eos)]
    for prompt in lines[:50]:                                             # SFT: prompt and response apart
        example = SftExample(alpaca_prompt(prompt[:30]), prompt, "test:1")
        ids, labels, _ = tokenize_example(example, tokenizer, eos, 100_000)  # type: ignore[misc]
        assert ids == [bos, *sp.encode(example.prompt), *sp.encode(prompt), eos]


def test_zero_scores_reproduce_merge_tokenizers_py(zero_merged: tuple[Path, dict[str, Any]],
                                                   tiny_sp_base: Path) -> None:
    out, report = zero_merged
    reference = merge_tokenizers_py(load_proto(tiny_sp_base), load_proto(out / "chinese_sp.model"))
    assert (out / "tokenizer.model").read_bytes() == reference.SerializeToString()
    assert report["new_piece_scores"] == "zero" and report["pieces_added"] == len(reference.pieces) - 600


def test_tied_scores_are_detected_and_applied_by_sentencepiece(zero_merged: tuple[Path, dict[str, Any]]) -> None:
    out, report = zero_merged
    application = report["application"]
    assert application["backend"] == "sentencepiece" and application["merge_order"]["ambiguous"]
    witness = application["merge_order"]["witness"]
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    assert sp.encode(witness["text"]) == witness["sentencepiece"] != witness["tokenizer_json"]
    parity = application["tokenizer_json_parity"]
    assert parity["matched"] < parity["checked"]          # a merge list really would tokenize lines differently
    assert not (out / "tokenizer.json").exists()
    assert json.loads((out / "tokenizer_config.json").read_text())["tokenizer_class"] == "SentencePieceBackend"
    assert [(c["checked"], c["matched"]) for c in report["checks"]] == [(HELDOUT_LINES, HELDOUT_LINES)] * 3
    assert "SentencePiece itself" in (out / "report.md").read_text(encoding="utf-8")


def test_ready_tokenizer_every_path_gives_sentencepiece_ids(tmp_path: Path, zero_merged: tuple[Path, dict[str, Any]],
                                                            heldout_file: Path) -> None:
    """A user's tied tokenizer.model, taken as it is (extend: false)."""
    tied = zero_merged[0] / "tokenizer.model"
    report = build_tokenizer(tied, tmp_path / "ready", corpus=[], extend=False, heldout=[heldout_file])
    assert report["mode"] == "ready" and report["pieces_added"] == 0 and report["chinese_model"] is None
    sp = spm.SentencePieceProcessor(model_file=str(tied))
    assert report["pad_token"] == {"token": "[PAD]", "id": sp.get_piece_size()}
    assert (tmp_path / "ready" / "tokenizer.model").read_bytes() == tied.read_bytes()
    lines = heldout_lines(HELDOUT_LINES) + exam_texts() + ["😀 𪚥 byte fallback", "  two  spaces ", "a\nb"]
    assert_every_path_gives_sentencepiece_ids(tmp_path / "ready", sp, lines, tmp_path / "scratch")


def test_saved_tokenizer_reloads_as_sentencepiece(tmp_path: Path, zero_merged: tuple[Path, dict[str, Any]]) -> None:
    """Adapters and merged models carry the tokenizer by save_pretrained; the copy must stay SentencePiece's."""
    out, _ = zero_merged
    load_tokenizer(out).save_pretrained(tmp_path / "saved")
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    text = heldout_lines(1)[0]
    for reloaded in (load_tokenizer(tmp_path / "saved"), AutoTokenizer.from_pretrained(str(tmp_path / "saved"))):
        assert reloaded(text)["input_ids"] == [sp.bos_id(), *sp.encode(text)]
        assert reloaded.pad_token == "[PAD]" and len(reloaded) == sp.get_piece_size() + 1


def test_slow_only_hf_directory_is_read_with_sentencepiece(tmp_path: Path,
                                                           zero_merged: tuple[Path, dict[str, Any]]) -> None:
    """Chinese-Alpaca's released layout: tokenizer.model, LlamaTokenizer config, [PAD] in added_tokens.json."""
    tied = zero_merged[0] / "tokenizer.model"
    pieces = spm.SentencePieceProcessor(model_file=str(tied)).get_piece_size()
    released = tmp_path / "chinese-alpaca"
    released.mkdir()
    (released / "tokenizer.model").write_bytes(tied.read_bytes())
    (released / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False, "model_max_length": 1e30,
        "bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": False, "normalized": True,
                      "rstrip": False, "single_word": False}, "eos_token": "</s>", "unk_token": "<unk>"}))
    (released / "special_tokens_map.json").write_text(json.dumps({"pad_token": "[PAD]"}))
    (released / "added_tokens.json").write_text(json.dumps({"[PAD]": pieces}))
    sp = spm.SentencePieceProcessor(model_file=str(tied))
    text = heldout_lines(2)[0]
    assert load_tokenizer(released)(text)["input_ids"] == [sp.bos_id(), *sp.encode(text)]
    report = build_tokenizer(released, tmp_path / "out", corpus=[], extend=False,
                             heldout=[_write(tmp_path / "h.txt", heldout_lines(50))])
    assert report["pad_token"] == {"token": "[PAD]", "id": pieces} and report["vocab_size"] == pieces + 1


def test_gguf_keeps_the_ties_and_llama_cpp_breaks_them_like_sentencepiece(
        tmp_path: Path, zero_merged: tuple[Path, dict[str, Any]]) -> None:
    out, _ = zero_merged
    model = tiny_llama(tmp_path / "model", out)
    path = export_gguf(model, tmp_path / "model-F16.gguf", "F16")
    fields = gguf.GGUFReader(path).fields
    proto = load_proto(out / "tokenizer.model")
    assert fields["tokenizer.ggml.model"].contents() == "llama"
    assert fields["tokenizer.ggml.tokens"].contents() == [p.piece for p in proto.pieces] + ["[PAD]"]
    assert fields["tokenizer.ggml.scores"].contents()[:len(proto.pieces)] == [p.score for p in proto.pieces]
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed: the llama.cpp tokenization check did not run")
    from zhllama.quantize.llamacpp import check_file

    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    lines = heldout_lines(HELDOUT_LINES) + exam_texts()
    ids = [sp.bos_id(), *sp.encode(lines[0])][:32]
    result = check_file(path, lines, [ids], ids[:8], window=32, stride=16, generate_tokens=2)
    assert result["token_ids"] == sp.encode(lines)


def test_spec_lists_every_inconsistency_of_a_ready_tokenizer() -> None:
    with pytest.raises(SpecError) as raised:
        resolve_spec("tokenizer", size="tiny", values={"extend": False, "chinese_sp_model": "file:///zh.model",
                                                       "new_piece_scores": "zero", "corpus": [], "heldout": []})
    message = str(raised.value)
    for field in ("chinese_sp_model:", "new_piece_scores:", "heldout:"):
        assert field in message


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def reference_merge(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Must-show: `ctl run tokenizer` with new_piece_scores=zero on LLaMA-2 + chinese-sp-20k (../shared/data)."""
    llama, chinese = shared_file("llama2-tokenizer.model"), shared_file("chinese-sp-20k.model")
    store = tmp_path_factory.mktemp("reference_store")
    done = subprocess.run(
        [str(Path(sys.executable).parent / "ctl"), "run", "tokenizer", "--local", "--run-id", "reference-zero",
         "--set", f"base_tokenizer=file://{llama}", "--set", f"chinese_sp_model=file://{chinese}",
         "--set", "new_piece_scores=zero", "--set", "corpus=[]"],
        capture_output=True, text=True, env={**os.environ, "ZHLLAMA_STORE": f"file://{store}"}, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    [out] = list(store.glob("runs/reference-zero/outputs/tokenizer"))
    return out, chinese


def test_reference_zero_merge_is_chinese_llamas_byte_for_byte(reference_merge: tuple[Path, Path]) -> None:
    out, chinese = reference_merge
    reference = merge_tokenizers_py(load_proto(shared_file("llama2-tokenizer.model")), load_proto(chinese))
    assert len(reference.pieces) == 49953
    assert (out / "tokenizer.model").read_bytes() == reference.SerializeToString()
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["application"]["backend"] == "sentencepiece" and report["vocab_size"] == 49954


def test_reference_zero_merge_every_path_gives_sentencepiece_ids(reference_merge: tuple[Path, Path],
                                                                 tmp_path: Path) -> None:
    out, _ = reference_merge
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    assert_every_path_gives_sentencepiece_ids(out, sp, heldout_lines(3000) + exam_texts(), tmp_path)


def test_reference_zero_merge_in_llama_cpp(reference_merge: tuple[Path, Path], tmp_path: Path) -> None:
    """The GGUF of a model with Chinese-LLaMA's tokenizer, tokenizing 3000 held-out lines and the exam in llama.cpp."""
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed: the llama.cpp tokenization check did not run")
    from zhllama.quantize.llamacpp import check_file

    out, _ = reference_merge
    path = export_gguf(tiny_llama(tmp_path / "model", out), tmp_path / "model-F16.gguf", "F16")
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    lines = heldout_lines(3000) + exam_texts()
    ids = [sp.bos_id(), *sp.encode(lines[0])][:32]
    result = check_file(path, lines, [ids], ids[:8], window=32, stride=16, generate_tokens=2)
    matched = sum(got == want for got, want in zip(result["token_ids"], sp.encode(lines), strict=True))
    assert matched == len(lines)
