"""The training data of each stage: pretraining's token blocks (a prepared dataset, or `data` tokenized once per
corpus and tokenizer, both streamed shard by shard) and SFT's prompt-masked sequences (small enough for every
rank to build its own)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from transformers import PreTrainedTokenizerBase

from zhllama.data import Sample, SequenceData, build_sft_sequences, read_sft_examples
from zhllama.data.shards import DatasetIndex, read_dataset_index, write_dataset_index
from zhllama.data.streaming import ShardedBlocks
from zhllama.errors import UserError
from zhllama.models.once import built_once
from zhllama.prepare import build_index, corpus_files, eos_of, prepare_units, tokenization_for, tokenizer_fingerprint
from zhllama.spec import PrepareSpec, TrainSpec

if TYPE_CHECKING:
    from zhllama.run import RunContext


class Dataset(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Sample: ...

    def indices(self, seed: int, start: int, count: int) -> list[int]:
        """The dataset indices of global sample positions start..start+count: a pure function of its arguments."""
        ...


def pretrain_dataset(ctx: RunContext, tokenizer: PreTrainedTokenizerBase) -> tuple[Dataset, dict[str, Any]]:
    """The blocks to pretrain on, streamed from the store, and the record of them (sources, weights, counts)."""
    spec = ctx.spec
    assert isinstance(spec, TrainSpec)
    eos_id = eos_of(tokenizer, spec.tokenizer)
    if spec.dataset:
        print(f"training on the prepared dataset {spec.dataset}; `data` is not read", flush=True)
        index = read_dataset_index(ctx.input(spec.dataset))
        where = spec.dataset
    else:
        index, where = tokenized_data(ctx, tokenizer, eos_id)
    if index.block_size != spec.block_size:
        raise UserError(f"dataset {where} has blocks of {index.block_size} tokens and block_size is "
                        f"{spec.block_size}; prepare it with block_size {spec.block_size}, or set block_size")
    if index.tokenizer != tokenizer_fingerprint(tokenizer, eos_id):
        raise UserError(f"dataset {where} was tokenized with another tokenizer than {spec.tokenizer}; prepare it "
                        "with this tokenizer")
    return ShardedBlocks(ctx.store, index, spec.shuffle_window), {"dataset": where, **index.report()}


def tokenized_data(ctx: RunContext, tokenizer: PreTrainedTokenizerBase, eos_id: int) -> tuple[DatasetIndex, str]:
    """`data` tokenized by this run: node 0 makes what the store lacks (the prepare stage's units, with
    tokenize_workers processes) and publishes the index; the other nodes wait for it. Keyed by what the
    inputs are (tokenizer, corpus fingerprints, weights), so a second run reuses it without reading the corpus."""
    spec = ctx.spec
    assert isinstance(spec, TrainSpec)
    if not spec.data:
        raise UserError("data: no sources; give `data` (text to tokenize) or `dataset` (a prepare output)")
    shard_mb = PrepareSpec.model_fields["shard_mb"].default
    sources = [(source.uri, source.weight, ctx.fingerprint(source.uri)) for source in spec.data]
    made_of = json.dumps([tokenizer_fingerprint(tokenizer, eos_id), spec.block_size, shard_mb, sources])
    key = f"cache/datasets/{hashlib.sha256(made_of.encode()).hexdigest()[:32]}"

    def build(out: Path) -> dict[str, Any]:
        tokenization = tokenization_for(ctx.input(spec.tokenizer), spec.tokenizer, ctx.workdir,
                                        block_size=spec.block_size, shard_mb=shard_mb, skip_bad_records=False)
        files = corpus_files(spec.data, ctx.store)
        prepare_units(ctx.store, files, tokenization, workers=spec.tokenize_workers)
        index = build_index(ctx.store, spec.data, files, tokenization)
        write_dataset_index(index, out)
        return {"dataset": index.report()}

    local = built_once(ctx.store, key, build, node_rank=ctx.place.node_rank, what="the tokenized corpus",
                       timeout_s=spec.process_group_timeout_s)
    return read_dataset_index(local), ctx.store.uri(key)


def sft_dataset(files: list[Path], tokenizer: PreTrainedTokenizerBase, spec: TrainSpec) -> tuple[Dataset,
                                                                                                  dict[str, Any]]:
    """SFT sequences with prompts masked, and the record of them (examples read, skipped, packed)."""
    if tokenizer.eos_token_id is None:
        raise UserError(f"tokenizer {spec.tokenizer} has no eos token; SFT ends every response with it: give a "
                        "tokenizer that defines one")
    examples, report = read_sft_examples(files, skip_bad_records=spec.skip_bad_records)
    sequences = build_sft_sequences(examples, tokenizer, int(tokenizer.eos_token_id), spec.block_size,
                                    packing=spec.packing, report=report)
    return SequenceData(sequences), {"sft": report.as_dict()}
