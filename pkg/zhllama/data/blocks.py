"""Pretraining blocks: tokenize the corpus in parallel, join documents with eos, cut into block_size rows.

The result is a directory (tokens.bin + blocks.json) that `load_blocks` memory-maps; the training stage caches it
in the store under a key of (tokenizer, corpus, block size) so a second run and every rank reuse it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import multiprocessing
import os
from collections.abc import Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer
from tqdm import tqdm

from zhllama.data.corpus import iter_documents
from zhllama.errors import UserError

TOKENS_FILE = "tokens.bin"
INFO_FILE = "blocks.json"
DOCS_PER_TASK = 512

_worker_tokenizer: Tokenizer | None = None


def blocks_key(tokenizer_fingerprint: str, data_fingerprint: str, block_size: int) -> str:
    """The store key of a block cache; any change of tokenizer, corpus or block size gives a new one."""
    digest = hashlib.sha256(f"{tokenizer_fingerprint}:{data_fingerprint}:{block_size}".encode()).hexdigest()
    return f"cache/blocks/{digest[:32]}"


def _init_worker(tokenizer_json: str) -> None:
    global _worker_tokenizer
    _worker_tokenizer = Tokenizer.from_str(tokenizer_json)


def _encode(texts: list[str], eos_id: int, dtype: str) -> tuple[int, np.ndarray]:
    """(documents, their ids each followed by eos as one array)."""
    assert _worker_tokenizer is not None
    flat: list[int] = []
    for encoding in _worker_tokenizer.encode_batch(texts, add_special_tokens=False):
        flat.extend(encoding.ids)
        flat.append(eos_id)
    return len(texts), np.asarray(flat, dtype=dtype)


def _chunks(files: Sequence[Path]) -> Iterator[list[str]]:
    for path in files:
        documents = iter_documents(path)
        while chunk := list(islice(documents, DOCS_PER_TASK)):
            yield chunk


def _encoded_chunks(
    files: Sequence[Path], tokenizer: Tokenizer, eos_id: int, dtype: str, workers: int
) -> Iterator[tuple[int, np.ndarray]]:
    """Encoded chunks in corpus order, whatever the number of workers."""
    encode = functools.partial(_encode, eos_id=eos_id, dtype=dtype)
    if workers <= 1:
        _init_worker(tokenizer.to_str())
        yield from map(encode, _chunks(files))
        return
    # Tokenizers' own threads would fight the worker processes for the same cores.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=_init_worker, initargs=(tokenizer.to_str(),)) as pool:
        yield from pool.imap(encode, _chunks(files))


def build_blocks(
    files: Sequence[Path],
    tokenizer: Tokenizer,
    eos_id: int,
    block_size: int,
    out_dir: Path,
    *,
    workers: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Tokenize `files` into `out_dir` as rows of `block_size` tokens; the incomplete last row is dropped."""
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    dtype = "uint16" if vocab <= np.iinfo(np.uint16).max else "uint32"
    documents = tokens = 0
    carry = np.empty(0, dtype=dtype)
    with open(out_dir / TOKENS_FILE, "wb") as sink, tqdm(
        desc="tokenizing", unit="doc", disable=not progress, dynamic_ncols=True
    ) as bar:
        for count, ids in _encoded_chunks(files, tokenizer, eos_id, dtype, workers):
            documents += count
            tokens += len(ids)
            carry = np.concatenate([carry, ids])
            full = len(carry) // block_size * block_size
            sink.write(carry[:full].tobytes())
            carry = carry[full:]
            bar.update(count)
    n_blocks = (tokens - len(carry)) // block_size
    if n_blocks == 0:
        (out_dir / TOKENS_FILE).unlink()
        names = ", ".join(str(f) for f in files[:3]) + (" ..." if len(files) > 3 else "")
        raise UserError(
            f"data: the corpus ({names}) gives {tokens} tokens, less than one block of {block_size}; "
            "add text or lower block_size"
        )
    info = {
        "block_size": block_size, "blocks": n_blocks, "dtype": dtype, "documents": documents,
        "tokens": tokens, "tokens_dropped": len(carry), "eos_id": eos_id,
    }
    (out_dir / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info


def load_blocks(directory: Path) -> np.ndarray:
    """The blocks of a `build_blocks` directory as a read-only memory map of shape (blocks, block_size)."""
    info = json.loads((directory / INFO_FILE).read_text(encoding="utf-8"))
    return np.memmap(
        directory / TOKENS_FILE, dtype=np.dtype(info["dtype"]), mode="r", shape=(info["blocks"], info["block_size"])
    )
