"""DocumentEncoder: documents -> one flat id array (each document's ids, then eos), ids exactly those of
`tokenizer.encode_batch(texts, add_special_tokens=False)`.

Why (measured by bench/prepare.py, one worker process per core, on People's Daily):
- encode_batch_fast, not encode_batch: the same ids without offsets (1.0-1.2x byte-level BPE, 1.3-1.5x converted
  SentencePiece). One thread: rayon's pool cost 6-75% more CPU a character, and a worker per core has none to lend.
- SentencePiece itself when tokenizer.model passes a parity check here: ~2.5x tokenizer.json on Chinese.
- Byte-level BPE: long documents in pieces cut where the pre-tokenizer cuts anyway (1.15x at 10k characters, 1.25x
  at 100k). Its pre-tokenizer alone costs 0.45-0.65 us a character: under 2M chars/s per core, whatever is done here.
- No gain (<5%), left as they are: batch size, BPE cache size; np.fromiter + np.insert saves 5-15 ns a character.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece as spm
from tokenizers import Tokenizer, models

from zhllama.errors import UserError
from zhllama.models.sentencepiece_tokenizer import (
    SentencePieceTokenizer,
    is_sentencepiece_directory,
    load_sentencepiece_tokenizer,
)
from zhllama.tokenizer.parity import PROBES, ParityCheck, english_sample, sentencepiece_parity

VERIFY_FIRST_CHARS = 100_000
"""Characters of an encoder's first documents (~0.1 s of tokenizer.json) that SentencePiece must encode exactly
like tokenizer.json..."""
VERIFY_EVERY = 256
"""...and, after them, one document in this many (~1% more time), so text unlike the probes is checked too."""

CUT_CHARS = 1024
"""Byte-level BPE: a document longer than this is encoded in pieces of about this many characters (see _cuts)."""
CUT_AFTER = re.compile("[\uff0c\u3002\u3001\uff1b\uff1a\uff1f\uff01](?=[\u4e00-\u9fa5])")
r"""，。、；：？！ followed by a CJK ideograph of Unicode 1.1: a boundary of the GPT-2 pre-tokenizer regex, whatever
comes before or after (the punctuation run `?[^\s\p{L}\p{N}]+` ends there, no lookahead or contraction crosses it,
the regex never looks behind), so the pieces' ids are the document's. Both classes are stable across Unicode
versions, so Python and Oniguruma agree on them."""



class DocumentEncoder:
    """Encodes batches of documents for the prepare stage, in the process that calls it, on one core.

    With a SentencePiece model (the tokenizer.model of a SentencePiece-based tokenizer) the documents are encoded
    by SentencePiece, once it has matched tokenizer.json on PROBES and as long as it matches on the documents
    checked (VERIFY_FIRST_CHARS, VERIFY_EVERY); a mismatch switches this encoder to tokenizer.json for good, from the
    batch where it was found. Documents holding an added token's text always go to tokenizer.json (it maps them to
    the added token's id, SentencePiece would spell them out).
    """

    dtype: str
    """"uint16" when every id (eos included) fits, else "uint32"."""

    def __init__(self, tokenizer: Tokenizer, eos_id: int, sentencepiece_model: Path | None = None) -> None:
        # Rayon reads this on every call; set here so a worker per core never starts a thread pool of its own.
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        self.tokenizer = tokenizer
        self.eos_id = eos_id
        self.dtype = id_dtype(eos_id, tokenizer.get_vocab(with_added_tokens=True).values())
        self._added = sorted({t.content for t in tokenizer.get_added_tokens_decoder().values() if t.content})
        self._cuts = _cuts_keep_ids(tokenizer)
        self._sentencepiece: spm.SentencePieceProcessor | None = None
        self._seen = 0
        self._verified_chars = 0
        self.fallback: str | None = None
        """Why SentencePiece is not (or no longer) used, when one was given."""
        self.probe_check: ParityCheck | None = None
        self.document_check = ParityCheck("SentencePiece ids == tokenizer.json ids on sampled documents")
        if sentencepiece_model is not None:
            self._sentencepiece = self._verified_sentencepiece(sentencepiece_model)

    @classmethod
    def from_dir(cls, tokenizer_dir: Path, eos_id: int) -> DocumentEncoder:
        """The encoder of an HF tokenizer directory: tokenizer.json, and tokenizer.model when there is one."""
        tokenizer_json = tokenizer_dir / "tokenizer.json"
        if not tokenizer_json.is_file():
            raise UserError(f"{tokenizer_dir}: no tokenizer.json; point the prepare stage at a tokenizer stage's "
                            "output or an HF tokenizer directory")
        model = tokenizer_dir / "tokenizer.model"
        return cls(Tokenizer.from_file(str(tokenizer_json)), eos_id, model if model.is_file() else None)

    @property
    def backend(self) -> str:
        """"sentencepiece" or "tokenizers": what encodes the next batch."""
        return "tokenizers" if self._sentencepiece is None else "sentencepiece"

    def describe(self) -> dict[str, Any]:
        """What a report should say about this encoder."""
        checks = [c.as_dict() for c in (self.probe_check, self.document_check) if c is not None and c.checked]
        return {"backend": self.backend, "dtype": self.dtype, "eos_id": self.eos_id, "fallback": self.fallback,
                "checks": checks}

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Every text's ids without special tokens, each followed by eos_id, as one flat array of `dtype`."""
        texts = texts if isinstance(texts, list) else list(texts)
        ids = self._encode_tokenizers(texts) if self._sentencepiece is None else self._encode_sentencepiece(texts)
        self._seen += len(texts)
        return flatten(ids, self.eos_id, self.dtype)

    def _encode_tokenizers(self, texts: list[str]) -> list[list[int]]:
        long = [i for i, text in enumerate(texts) if len(text) > CUT_CHARS] if self._cuts else []
        if long:
            holding = self._with_added_tokens([texts[i] for i in long], base=long)
            long = [i for i in long if i not in holding]
        if not long:
            return [e.ids for e in self.tokenizer.encode_batch_fast(texts, add_special_tokens=False)]
        # Measured: a 10k-100k-character document costs 1.15-1.25x more a character than ~1k-character pieces;
        # encode them as pieces cut where the pre-tokenizer cuts anyway.
        cut = {i: _pieces(texts[i]) for i in long}
        flat = [piece for i, text in enumerate(texts) for piece in cut.get(i, (text,))]
        encodings = iter(self.tokenizer.encode_batch_fast(flat, add_special_tokens=False))
        return [list(itertools.chain.from_iterable(next(encodings).ids for _ in cut[i])) if i in cut
                else next(encodings).ids for i in range(len(texts))]

    def _encode_sentencepiece(self, texts: list[str]) -> list[list[int]]:
        assert self._sentencepiece is not None
        ids: list[list[int]] = self._sentencepiece.encode(texts, num_threads=1)
        checked = set(range((-self._seen) % VERIFY_EVERY, len(texts), VERIFY_EVERY))
        for index, text in enumerate(texts):
            if self._verified_chars >= VERIFY_FIRST_CHARS:
                break
            checked.add(index)
            self._verified_chars += len(text)
        special = self._with_added_tokens(texts)
        checked -= special
        redo = sorted(checked | special)
        for index, expected in zip(redo, self._encode_tokenizers([texts[i] for i in redo]), strict=True):
            if index in checked:
                self.document_check.record(texts[index], expected, ids[index])
            ids[index] = expected
        if not self.document_check.ok:
            example = self.document_check.examples[0]["text"]
            self.fallback = f"SentencePiece differed from tokenizer.json on a document: {example[:60]!r}"
            self._sentencepiece = None
            return self._encode_tokenizers(texts)
        return ids

    def _with_added_tokens(self, texts: list[str], base: list[int] | None = None) -> set[int]:
        """Indices (in `base`, when given) of the texts holding an added token's content (one scan of all texts
        when none does)."""
        if not self._added:
            return set()
        joined = "\0".join(texts)
        if not any(token in joined for token in self._added):
            return set()
        found = [i for i, text in enumerate(texts) if any(token in text for token in self._added)]
        return set(found if base is None else (base[i] for i in found))

    def _verified_sentencepiece(self, model: Path) -> spm.SentencePieceProcessor | None:
        tokenizer = self.tokenizer
        if tokenizer.truncation is not None or tokenizer.padding is not None:
            self.fallback = "tokenizer.json truncates or pads; SentencePiece would not"
            return None
        if any(t.normalized for t in tokenizer.get_added_tokens_decoder().values()):
            self.fallback = "tokenizer.json has added tokens matched after normalization; only it can find them"
            return None
        try:
            processor = spm.SentencePieceProcessor(model_file=str(model))
        except (OSError, RuntimeError) as error:
            self.fallback = f"{model}: not a SentencePiece model ({error})"
            return None
        probes = [text for text in PROBES + english_sample()[::4] if not any(t in text for t in self._added)]
        self.probe_check = sentencepiece_parity(processor, tokenizer, probes)
        if not self.probe_check.ok:
            check = self.probe_check
            self.fallback = (f"{model} differs from tokenizer.json on {check.checked - check.matched}/{check.checked}"
                             f" probes (first: {check.examples[0]['text'][:60]!r})")
            return None
        return processor


def _cuts_keep_ids(tokenizer: Tokenizer) -> bool:
    """Whether cutting at CUT_AFTER keeps the ids: no normalizer, GPT-2's byte-level pre-tokenizer (after digit
    splitting or not) without a prefix space, a deterministic BPE, no truncation or padding. Documents holding an
    added token's text are never cut."""
    if tokenizer.normalizer is not None or tokenizer.pre_tokenizer is None:
        return False
    if tokenizer.truncation is not None or tokenizer.padding is not None:
        return False
    if not isinstance(tokenizer.model, models.BPE) or tokenizer.model.dropout:
        return False
    state = json.loads(tokenizer.pre_tokenizer.__getstate__())
    steps = state["pretokenizers"] if state.get("type") == "Sequence" else [state]
    *before, last = steps or [{}]
    return (all(step.get("type") == "Digits" for step in before) and last.get("type") == "ByteLevel"
            and last.get("add_prefix_space") is False and last.get("use_regex") is True)


def _pieces(text: str) -> list[str]:
    """`text` cut after the first CUT_AFTER boundary past every CUT_CHARS characters."""
    pieces, start = [], 0
    while len(text) - start > CUT_CHARS and (boundary := CUT_AFTER.search(text, start + CUT_CHARS)):
        pieces.append(text[start:boundary.end()])
        start = boundary.end()
    pieces.append(text[start:])
    return pieces


class SentencePieceEncoder:
    """Encodes documents for a directory that tokenizes with SentencePiece itself (tied scores, see
    zhllama.models.sentencepiece_tokenizer): SentencePiece's ids are the directory's ids, nothing to check them
    against. Documents holding an added token's text go through the directory's tokenizer, which maps it."""

    backend = "sentencepiece"

    def __init__(self, tokenizer: SentencePieceTokenizer, eos_id: int) -> None:
        self.tokenizer = tokenizer
        self.eos_id = eos_id
        self.dtype = id_dtype(eos_id, tokenizer.get_vocab().values())
        self._added = sorted({token.content for token in tokenizer.added_tokens_decoder.values()}
                             | set(tokenizer.all_special_tokens))

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend, "dtype": self.dtype, "eos_id": self.eos_id, "fallback": None,
                "checks": []}

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        texts = texts if isinstance(texts, list) else list(texts)
        ids: list[list[int]] = self.tokenizer.sp_model.encode(texts, num_threads=1)
        joined = "\0".join(texts)
        if any(token in joined for token in self._added):
            for index, text in enumerate(texts):
                if any(token in text for token in self._added):
                    ids[index] = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return flatten(ids, self.eos_id, self.dtype)


def load_document_encoder(tokenizer_dir: Path, eos_id: int) -> DocumentEncoder | SentencePieceEncoder:
    """The encoder of an HF tokenizer directory, giving the ids `zhllama.models.loading.load_tokenizer` gives."""
    if is_sentencepiece_directory(tokenizer_dir):
        return SentencePieceEncoder(load_sentencepiece_tokenizer(tokenizer_dir), eos_id)
    return DocumentEncoder.from_dir(tokenizer_dir, eos_id)


def id_dtype(eos_id: int, ids: Iterable[int]) -> str:
    """"uint16" when every id (eos included) fits, else "uint32"."""
    max_id = max([eos_id, *ids])
    if eos_id < 0 or max_id > np.iinfo(np.uint32).max:
        raise UserError(f"eos_id {eos_id}: must be an id between 0 and {np.iinfo(np.uint32).max}")
    return "uint16" if max_id <= np.iinfo(np.uint16).max else "uint32"


def flatten(ids: list[list[int]], eos_id: int, dtype: str) -> np.ndarray:
    """Every document's ids followed by eos_id, as one flat array."""
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=int(lengths.sum()))
    return np.insert(flat, np.cumsum(lengths), np.array(eos_id, dtype=dtype))
