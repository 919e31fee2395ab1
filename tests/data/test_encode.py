"""DocumentEncoder gives exactly tokenizer.encode_batch(texts, add_special_tokens=False)'s ids, each document then
eos, whichever backend encodes: tokenizer.json, or SentencePiece when the directory has a tokenizer.model."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from zhllama.data.encode import CUT_CHARS, VERIFY_FIRST_CHARS, DocumentEncoder, _pieces
from zhllama.embedded.peoples_daily import paragraph_texts, peoples_daily
from zhllama.tokenizer import build_tokenizer
from zhllama.tokenizer.parity import english_sample

TRAIN_LINES = 600


@pytest.fixture(scope="module")
def chinese() -> list[str]:
    daily = peoples_daily()
    return paragraph_texts(daily.train[:TRAIN_LINES] + daily.heldout[:300])


@pytest.fixture(scope="module")
def documents(chinese: list[str]) -> list[str]:
    """Held-out paragraphs plus what breaks encoders: empty, emoji, rare and unseen characters (byte fallback),
    whitespace runs, added tokens' text, a long line."""
    odd = ["", "", " ", "  两个  空格 ", "😀👍🏽🇨🇳", "𠀀𪚥𰻝", "é e\u0301 ｆｕｌｌ", "tab\tand\nnewline\r\n",
           "123 4567.89", "<s>文中的</s>特殊符号<unk>", "[PAD]", "<|endoftext|>结尾", "Ǳ ß ﬁ \u200b\u00a0"]
    long = "".join(chinese[TRAIN_LINES:TRAIN_LINES + 120])
    return [*chinese[TRAIN_LINES:], *odd, long, *english_sample()[:200]]


def expected(tokenizer: Tokenizer, texts: list[str], eos: int) -> list[int]:
    return [i for e in tokenizer.encode_batch(texts, add_special_tokens=False) for i in [*e.ids, eos]]


def encoded(encoder: DocumentEncoder, texts: list[str], batch: int = 97) -> list[int]:
    parts = [encoder.encode(texts[i:i + batch]) for i in range(0, len(texts), batch)]
    assert all(p.dtype == np.dtype(encoder.dtype) for p in parts)
    return np.concatenate(parts).tolist()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, chinese: list[str]) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "peoples_daily.txt"
    path.write_text("\n".join(chinese[:TRAIN_LINES]) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def bytelevel_dir(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> Path:
    """The tokenizer stage's output for a byte-level BPE base in SmolLM2's layout (as the demo's tokenizer)."""
    base = Tokenizer(models.BPE())
    base.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                  pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    base.decoder = decoders.ByteLevel()
    # Chinese punctuation runs in the base's merges, as in SmolLM2's: cutting inside one would change ids.
    base.train_from_iterator(english_sample() + ["“引号。”！！……。）？ ，12：“"] * 3000, trainer=trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    directory = tmp_path_factory.mktemp("bytelevel")
    base.save(str(directory / "base.json"))
    build_tokenizer(directory / "base.json", directory / "out", corpus=[corpus], heldout_lines=50, vocab_size=3000,
                    num_threads=1)
    return directory / "out"


@pytest.fixture(scope="module")
def sentencepiece_dir(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> Path:
    """The tokenizer stage's output for a LLaMA-like SentencePiece base (BPE, byte fallback, English only):
    tokenizer.json and the merged tokenizer.model, like Chinese-LLaMA's."""
    directory = tmp_path_factory.mktemp("sentencepiece")
    english = directory / "english.txt"
    english.write_text("\n".join(english_sample()[::3]) + "\n", encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(english), model_prefix=str(directory / "base"), vocab_size=400, model_type="bpe",
        byte_fallback=True, split_digits=True, normalization_rule_name="identity", character_coverage=1.0,
        remove_extra_whitespaces=False, minloglevel=2, num_threads=1, max_sentence_length=1 << 16)
    build_tokenizer(directory / "base.model", directory / "out", corpus=[corpus], heldout_lines=50, vocab_size=3000,
                    num_threads=1)
    return directory / "out"


def test_bytelevel_bpe_ids_are_encode_batch_ids(bytelevel_dir: Path, documents: list[str]) -> None:
    tokenizer = Tokenizer.from_file(str(bytelevel_dir / "tokenizer.json"))
    encoder = DocumentEncoder.from_dir(bytelevel_dir, eos_id=0)
    assert (encoder.backend, encoder.dtype) == ("tokenizers", "uint16")
    assert encoded(encoder, documents) == expected(tokenizer, documents, 0)
    assert encoded(encoder, documents, batch=len(documents)) == expected(tokenizer, documents, 0)


def test_long_bytelevel_documents_are_cut_without_changing_an_id(bytelevel_dir: Path, chinese: list[str]) -> None:
    """Cut points right before or after what the pre-tokenizer joins: quotes, spaces, digits, emoji, contractions,
    newlines, punctuation runs; and a long document holding an added token (never cut)."""
    tokenizer = Tokenizer.from_file(str(bytelevel_dir / "tokenizer.json"))
    encoder = DocumentEncoder.from_dir(bytelevel_dir, eos_id=0)
    assert encoder._cuts
    rng = random.Random(0)
    joints = ["。", "，", "。”", "！！", "？ ", "、1", "。😀", "。a", "，'s",
              "。\n", "；\t", "：‘", "。 ", "，12", "。..."]
    words = [w for text in chinese[:200] for w in text.split("。") if w]
    long = ["".join(rng.choice(words) + rng.choice(joints) for _ in range(n)) for n in (40, 150, 400)]
    long += ["<|endoftext|>".join(long[:2]), " ".join(english_sample()[:60]), "。" * 3000 + "中" * 3000]
    assert all(len(text) > CUT_CHARS for text in long) and len(_pieces(long[2])) > 5
    assert encoded(encoder, long, batch=2) == expected(tokenizer, long, 0)


def test_sentencepiece_ids_are_encode_batch_ids(sentencepiece_dir: Path, documents: list[str]) -> None:
    tokenizer = Tokenizer.from_file(str(sentencepiece_dir / "tokenizer.json"))
    encoder = DocumentEncoder.from_dir(sentencepiece_dir, eos_id=2)
    assert encoder.backend == "sentencepiece", encoder.fallback
    stream = documents * (VERIFY_FIRST_CHARS // sum(map(len, documents)) + 2)  # past the verified start
    assert encoded(encoder, stream) == expected(tokenizer, stream, 2)
    assert encoder.backend == "sentencepiece" and encoder.fallback is None
    checks = encoder.describe()["checks"]
    assert [c["ok"] for c in checks] == [True, True] and checks[1]["checked"] < len(stream) - len(documents)
    # <s>, </s>, <unk>, [PAD] in the text are the added tokens' ids, as tokenizer.json makes them
    assert encoder.encode(["<s>文中的</s>"]).tolist() == [*tokenizer.encode("<s>文中的</s>",
                                                                            add_special_tokens=False).ids, 2]


def test_a_sentencepiece_model_that_differs_is_not_used(sentencepiece_dir: Path, bytelevel_dir: Path,
                                                        documents: list[str]) -> None:
    tokenizer = Tokenizer.from_file(str(bytelevel_dir / "tokenizer.json"))
    encoder = DocumentEncoder(tokenizer, 0, sentencepiece_model=sentencepiece_dir / "tokenizer.model")
    assert encoder.backend == "tokenizers" and encoder.fallback and "probes" in encoder.fallback
    assert encoded(encoder, documents) == expected(tokenizer, documents, 0)


def test_a_mismatch_on_a_document_switches_to_tokenizer_json_from_that_batch(
    sentencepiece_dir: Path, documents: list[str]
) -> None:
    tokenizer = Tokenizer.from_file(str(sentencepiece_dir / "tokenizer.json"))
    encoder = DocumentEncoder.from_dir(sentencepiece_dir, eos_id=2)
    processor = encoder._sentencepiece
    assert processor is not None

    class Wrong:
        """SentencePiece as it would be if it segmented 'Python' unlike tokenizer.json."""

        def encode(self, texts: list[str], num_threads: int) -> list[list[int]]:
            ids: list[list[int]] = processor.encode(texts, num_threads=num_threads)
            return [[*i, 5] if "Python" in t else i for t, i in zip(texts, ids, strict=True)]

    encoder._sentencepiece = Wrong()  # type: ignore[assignment]
    chinese_only = [d for d in documents if "Python" not in d]
    english = [d for d in documents if "Python" in d]
    assert encoded(encoder, chinese_only) == expected(tokenizer, chinese_only, 2)
    assert encoder.backend == "sentencepiece"
    assert encoded(encoder, english) == expected(tokenizer, english, 2)
    assert encoder.backend == "tokenizers" and "Python" in (encoder.fallback or "")


def test_dtype_holds_every_id_and_eos() -> None:
    small = Tokenizer(models.WordLevel({"<unk>": 0, "a": 1}, unk_token="<unk>"))
    assert DocumentEncoder(small, 65535).dtype == "uint16"
    assert DocumentEncoder(small, 65536).dtype == "uint32"
    big = Tokenizer(models.WordLevel({f"w{i}": i for i in range(70_000)}, unk_token="w0"))
    big.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    encoder = DocumentEncoder(big, 1)
    assert encoder.dtype == "uint32"
    assert encoder.encode(["w69999 w3", "", "w65536"]).tolist() == [69999, 3, 1, 1, 65536, 1]
    assert encoder.encode([]).tolist() == []
