"""The dataset of a set of sources: the tokenizer's identity, the units complete, then the index over them."""

from __future__ import annotations

import hashlib
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from zhllama.data.shards import DatasetIndex, ShardRef, SourceIndex, unit_stats_of
from zhllama.errors import UserError
from zhllama.models.loading import load_tokenizer, tokenizer_directory
from zhllama.models.sentencepiece_tokenizer import SentencePieceTokenizer, sentencepiece_rules
from zhllama.prepare.sources import CorpusFile
from zhllama.prepare.units import Tokenization, load_encoder
from zhllama.spec import DataSource
from zhllama.store import ArtifactStore

TOTALS = ("documents", "characters", "tokens", "blocks", "tokens_dropped", "bad_records")


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase, eos_id: int) -> str:
    """The tokenizer's rules and eos: a dataset made with one is valid with exactly that one."""
    rules = (sentencepiece_rules(tokenizer) if isinstance(tokenizer, SentencePieceTokenizer)
             else tokenizer.backend_tokenizer.to_str())
    return hashlib.sha256((rules + f"eos={eos_id}").encode()).hexdigest()


def eos_of(tokenizer: PreTrainedTokenizerBase, uri: str) -> int:
    if tokenizer.eos_token_id is None:
        raise UserError(f"tokenizer {uri} has no eos token; pretraining joins documents with it: give a tokenizer "
                        "that defines one")
    return int(tokenizer.eos_token_id)


def tokenization_for(tokenizer_path: Path, uri: str, scratch: Path, *, block_size: int, shard_mb: float,
                     skip_bad_records: bool) -> Tokenization:
    directory = tokenizer_directory(tokenizer_path, scratch)
    tokenizer = load_tokenizer(directory)
    eos_id = eos_of(tokenizer, uri)
    return Tokenization(directory, eos_id, tokenizer_fingerprint(tokenizer, eos_id), block_size,
                        int(shard_mb * 1_000_000), skip_bad_records)


def build_index(store: ArtifactStore, sources: list[DataSource], files: list[CorpusFile],
                tokenization: Tokenization) -> DatasetIndex:
    """The index over complete units, sources in spec order; a source too small for one block is an error."""
    indexed = []
    for number, source in enumerate(sources):
        shards: list[ShardRef] = []
        totals: dict[str, int | str] = dict.fromkeys(TOTALS, 0)
        totals["first_bad"] = ""
        mine = [file for file in files if file.source == number]
        for file in mine:
            key = tokenization.unit_key(file)
            manifest = store.read_manifest(key)
            stats = unit_stats_of(manifest)
            for name in TOTALS:
                totals[name] = int(totals[name]) + getattr(stats, name)
            totals["first_bad"] = totals["first_bad"] or stats.first_bad
            shards += [ShardRef(key, shard["name"], shard["blocks"], manifest["files"][shard["name"]])
                       for shard in stats.shards if shard["blocks"]]
        if not shards:
            raise UserError(f"data[{number}]: {source.uri} gives {totals['tokens']} tokens, less than one block of "
                            f"{tokenization.block_size}; add text to it, remove the entry, or lower block_size")
        totals["files"] = len(mine)
        indexed.append(SourceIndex(source.uri, source.weight, tuple(shards), totals))
    return DatasetIndex(tokenization.block_size, load_encoder(tokenization).dtype, tokenization.eos_id,
                        tokenization.tokenizer, tuple(indexed))
