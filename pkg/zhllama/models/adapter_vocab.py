"""Which rows of an adapter's embed_tokens/lm_head are tokens: the one reader of that part of its record.

Training pads the resized vocabulary to a multiple of pad_vocab_multiple, so an adapter may carry more rows than its
tokenizer has tokens. Rows past the tokenizer's are never an input id and their logits are no token, so every
reader (train's base_adapters, eval and generate, the merge) asks here how many rows are real, and a model built
for later stages has exactly the tokenizer's rows, as its GGUF vocabulary will.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import yaml

ADAPTER_RECORD = "zhllama_adapter.json"
SPEC_RECORD = "hyperparameters.yaml"
"""The training spec written beside the adapter: its pad_vocab_multiple is the one the rows were padded to."""


def padded_size(size: int, multiple: int) -> int:
    return math.ceil(size / multiple) * multiple


@dataclass(frozen=True)
class AdapterVocab:
    rows: int
    """Rows its embed_tokens/lm_head carry."""
    tokens: int
    """How many of the first rows are tokens; the rest (if any) are padding."""


def adapter_vocab(adapter_dir: Path) -> AdapterVocab | None:
    """The rows an adapter was trained with and how many are tokens; None without zhllama's record (it did not
    resize, or another tool trained it).

    Only rows the adapter's own record says are padding count as padding: its rows must be what training sizes
    them to (resize_vocabulary: the tokenizer, or the base where that is larger, padded to pad_vocab_multiple).
    Any other record makes every row a token, so a caller's size check refuses it as before.
    """
    record_file = adapter_dir / ADAPTER_RECORD
    if not record_file.is_file():
        return None
    record = json.loads(record_file.read_text(encoding="utf-8"))
    rows = int(record["rows"])
    vocab = record.get("vocab") or {}
    tokens, base_rows = vocab.get("tokenizer_size"), vocab.get("base_rows")
    multiple = _pad_multiple(adapter_dir)
    if not (isinstance(tokens, int) and isinstance(base_rows, int) and multiple is not None):
        return AdapterVocab(rows, rows)
    padded = vocab.get("rows") == rows and rows == padded_size(max(tokens, base_rows), multiple)
    return AdapterVocab(rows, tokens if padded else rows)


def _pad_multiple(adapter_dir: Path) -> int | None:
    """The pad_vocab_multiple the adapter was trained with (its training spec); None where that is not written."""
    spec_file = adapter_dir / SPEC_RECORD
    spec = yaml.safe_load(spec_file.read_text(encoding="utf-8")) if spec_file.is_file() else None
    multiple = spec.get("pad_vocab_multiple") if isinstance(spec, dict) else None
    return multiple if isinstance(multiple, int) and multiple >= 1 else None


def real_rows(adapter_dir: Path, rows: int) -> int:
    """How many of an adapter's `rows` (as its tensors carry them) are tokens: all of them, unless its record
    describes these rows and says the ones past its tokenizer are padding."""
    vocab = adapter_vocab(adapter_dir)
    return vocab.tokens if vocab is not None and vocab.rows == rows else rows
