"""English text for replay in pretraining and for held-out perplexity: the Python documentation topics that the
standard library ships (`pydoc_data.topics.topics`, the text `help()` shows for keywords and symbols).

Each topic is cut into paragraphs at blank lines; section underlines are dropped and whitespace collapsed, so a
paragraph is one line. Code is left out where it is cheap to tell: literal blocks (an indented block after a
paragraph that ends with a colon), doctest and traceback lines, grammar rules (`::=`), tables, and blocks with a
comment line or a `def ...:`-style header line. Headings and other short blocks (under 60 characters or 8 words)
and blocks that end no sentence (signatures, table cells) are dropped too. Each paragraph is kept once (the
`compound` and `specialnames` topics repeat the statements' and methods' own topics).

Topics are split by their sorted name: every HELDOUT_EVERY-th topic (from the first) is held out, so held-out
text is whole topics the model never trains on, and the training paragraphs leave out any that also appear in a
held-out topic. The tiny slices take paragraphs evenly spread over their slice.

With CPython 3.11.7's topics (the text varies by Python version; the same version gives the same bytes),
characters counted without the newlines:

  english-replay         789 paragraphs  174,492 characters  (training)
  english-heldout        298 paragraphs   76,290 characters  (held out)
  english-replay-tiny    300 paragraphs   68,902 characters  (spread over english-replay)
  english-heldout-tiny    30 paragraphs    7,130 characters  (spread over english-heldout)
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from zhllama.embedded.registry import builder
from zhllama.errors import UserError

HELDOUT_EVERY = 4
TINY_TRAIN_LINES = 300
TINY_HELDOUT_LINES = 30
MIN_CHARS, MIN_WORDS = 60, 8

UNDERLINE = re.compile(r"^\s*([*=\-~^+#])\1{2,}\s*$")
SENTENCE_END = re.compile(r"[.?!:][\"”’)\]]?( ?\[\d+\])?$")
CODE_LINE = re.compile(
    r"^\s*(>>>|\.\.\. |#|\+-|\||Traceback \("
    r"|(def|class|for|while|if|elif|else|try|except|with|async|return|import|from|raise)\b.{0,50}:$)"
)


@dataclass(frozen=True)
class EnglishText:
    train: list[str]
    heldout: list[str]


def topic_blocks(text: str) -> Iterator[tuple[int, list[str]]]:
    """(indent, lines) of each blank-line-separated block, underlines removed."""
    for block in re.split(r"\n[ \t]*\n", text):
        lines = [line for line in block.splitlines() if line.strip() and not UNDERLINE.match(line)]
        if lines:
            yield min(len(line) - len(line.lstrip()) for line in lines), lines


def topic_paragraphs(text: str) -> list[str]:
    """The prose paragraphs of one topic, each on one line."""
    paragraphs = []
    indent, opens_literal = 0, False
    for block_indent, lines in topic_blocks(text):
        flat = " ".join(" ".join(lines).split())
        if opens_literal and block_indent > indent:
            continue  # a literal block (code, grammar, a shell session) and whatever else it holds
        indent, opens_literal = block_indent, flat.endswith(":")
        if "::=" in flat or any(CODE_LINE.match(line) for line in lines):
            continue
        if len(flat) < MIN_CHARS or len(flat.split()) < MIN_WORDS or not SENTENCE_END.search(flat):
            continue
        paragraphs.append(flat)
    return paragraphs


def spread(items: list[str], count: int) -> list[str]:
    """`count` items evenly spaced over `items`, in order (all of them when there are fewer)."""
    if len(items) <= count:
        return list(items)
    return [items[index * len(items) // count] for index in range(count)]


@functools.cache
def english_text() -> EnglishText:
    """The training and held-out paragraphs (cached: every builder reads them)."""
    try:
        from pydoc_data.topics import topics
    except ImportError as error:
        raise UserError(f"this Python has no pydoc_data.topics ({error}); the English text is built from it: "
                        "use a Python that ships its documentation topics") from error
    names = sorted(topics)
    heldout_names = set(names[::HELDOUT_EVERY])
    heldout: dict[str, None] = {}
    train: dict[str, None] = {}
    for name in names:
        for paragraph in topic_paragraphs(topics[name]):
            (heldout if name in heldout_names else train).setdefault(paragraph)
    train_lines = [paragraph for paragraph in train if paragraph not in heldout]
    if len(heldout) < TINY_HELDOUT_LINES or len(train_lines) < TINY_TRAIN_LINES:
        raise UserError(f"pydoc_data.topics gave {len(train_lines)} training and {len(heldout)} held-out "
                        "paragraphs, too few; this Python's documentation topics are damaged")
    return EnglishText(train=train_lines, heldout=list(heldout))


def write_lines(paragraphs: list[str], path: Path) -> None:
    """One paragraph per line."""
    path.write_text("".join(paragraph + "\n" for paragraph in paragraphs), encoding="utf-8")


@builder("english-replay")
def english_replay(dest: Path) -> None:
    write_lines(english_text().train, dest / "train.txt")


@builder("english-heldout")
def english_heldout(dest: Path) -> None:
    write_lines(english_text().heldout, dest / "heldout.txt")


@builder("english-replay-tiny")
def english_replay_tiny(dest: Path) -> None:
    write_lines(spread(english_text().train, TINY_TRAIN_LINES), dest / "train.txt")


@builder("english-heldout-tiny")
def english_heldout_tiny(dest: Path) -> None:
    write_lines(spread(english_text().heldout, TINY_HELDOUT_LINES), dest / "heldout.txt")
