"""The training data of each stage: pretraining's token blocks (built once per job, cached in the store) and SFT's
prompt-masked sequences (small enough for every rank to build its own)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from transformers import PreTrainedTokenizerBase

from zhllama.data import (
    BlockData,
    SequenceData,
    blocks_key,
    build_blocks,
    build_sft_sequences,
    list_data_files,
    load_blocks,
    read_sft_examples,
)
from zhllama.errors import UserError
from zhllama.models.once import built_once
from zhllama.spec import TrainSpec

if TYPE_CHECKING:
    from zhllama.run import RunContext


class Dataset(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]: ...


def _eos_id(tokenizer: PreTrainedTokenizerBase, spec: TrainSpec, why: str) -> int:
    if tokenizer.eos_token_id is None:
        raise UserError(f"tokenizer {spec.tokenizer} has no eos token; {why}: give a tokenizer that defines one")
    return int(tokenizer.eos_token_id)


def pretrain_dataset(ctx: RunContext, tokenizer: PreTrainedTokenizerBase) -> tuple[Dataset, dict[str, Any]]:
    """Tokenized blocks, built on node 0 once per (tokenizer, corpus, block size) and cached in the store; and the
    record of them. Only node 0 downloads the raw corpus, and only when the cache lacks the blocks."""
    spec = ctx.spec
    assert isinstance(spec, TrainSpec)
    eos_id = _eos_id(tokenizer, spec, "pretraining joins documents with it")
    # Cache keys from what the inputs are (tokenizer rules, corpus fingerprints), never from re-reading the corpus.
    fingerprint = hashlib.sha256((tokenizer.backend_tokenizer.to_str() + f"eos={eos_id}").encode()).hexdigest()
    data = hashlib.sha256("\n".join(ctx.fingerprint(uri) for uri in spec.data).encode()).hexdigest()
    key = blocks_key(fingerprint, data, spec.block_size)

    def build(out: Path) -> dict[str, Any]:
        files = list_data_files([ctx.input(uri) for uri in spec.data])
        build_blocks(files, tokenizer.backend_tokenizer, eos_id, spec.block_size, out, workers=spec.tokenize_workers)
        return {"data_files": [f.name for f in files]}

    local = built_once(ctx.store, key, build, node_rank=ctx.place.node_rank, what="the tokenized corpus",
                       timeout_s=spec.process_group_timeout_s)
    blocks = load_blocks(local)
    return BlockData(blocks), {"blocks_cache": key, "blocks": len(blocks), "block_size": spec.block_size}


def sft_dataset(files: list[Path], tokenizer: PreTrainedTokenizerBase, spec: TrainSpec) -> tuple[Dataset,
                                                                                                  dict[str, Any]]:
    """SFT sequences with prompts masked, and the record of them (examples read, skipped, packed)."""
    eos_id = _eos_id(tokenizer, spec, "SFT ends every response with it")
    examples, report = read_sft_examples(files, skip_bad_records=spec.skip_bad_records)
    sequences = build_sft_sequences(examples, tokenizer, eos_id, spec.block_size, packing=spec.packing,
                                    report=report)
    return SequenceData(sequences), {"sft": report.as_dict()}
