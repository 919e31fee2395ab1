"""Read a Chinese corpus (txt, or JSONL with a `text` field) line by line, and split off held-out lines.

Every problem is reported with the file and the line (zhllama.records), since corpora are too big to eyeball.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from zhllama.errors import UserError
from zhllama.records import TEXT_SUFFIXES, list_files, read_texts


def corpus_files(paths: Iterable[Path]) -> list[Path]:
    """The text files behind `paths`: files as given, directories expanded to their .txt/.jsonl files, sorted."""
    return list_files(paths, TEXT_SUFFIXES, "corpus")


def corpus_lines(file: Path) -> Iterator[str]:
    """The non-empty lines of one corpus file, stripped; a JSONL record's `text` may hold several lines."""
    found = False
    for _, text in read_texts(file):
        for piece in text.splitlines():
            piece = piece.strip()
            if piece:
                found = True
                yield piece
    if not found:
        raise UserError(f"corpus: {file} is empty (no non-blank text); remove it from the corpus or fill it")


def read_corpus(files: Iterable[Path]) -> Iterator[str]:
    for file in files:
        yield from corpus_lines(file)


@dataclass(frozen=True)
class CorpusSplit:
    train_file: Path | None
    """Training lines, one per line (None when there is nothing to train on)."""
    train_lines: int
    heldout: list[str]


def split_corpus(corpus: list[Path], heldout: list[Path], heldout_lines: int, train_file: Path) -> CorpusSplit:
    """Write the training lines to `train_file` and return the held-out lines.

    Without explicit held-out files the last `heldout_lines` lines of the corpus are held out and never written to
    the training file, so the report measures text the Chinese model has not seen.
    """
    files = corpus_files(corpus)
    tail: deque[str] = deque(maxlen=0 if heldout else heldout_lines)
    written = 0
    if files:
        with train_file.open("w", encoding="utf-8") as out:
            for line in tqdm(read_corpus(files), desc="reading corpus", unit=" lines", mininterval=1.0):
                if tail.maxlen and len(tail) == tail.maxlen:
                    out.write(tail[0] + "\n")
                    written += 1
                if tail.maxlen:
                    tail.append(line)
                else:
                    out.write(line + "\n")
                    written += 1
    held = list(read_corpus(corpus_files(heldout))) if heldout else list(tail)
    if files and written == 0:
        raise UserError(f"corpus {', '.join(map(str, corpus))}: all {len(held)} lines are held out, none left to "
                        f"train on; add text or lower heldout_lines (now {heldout_lines})")
    if not held:
        raise UserError("no held-out text: set `heldout` files or a `corpus` whose last lines can be held out; "
                        "the report and the parity check need it")
    return CorpusSplit(train_file if written else None, written, held)
