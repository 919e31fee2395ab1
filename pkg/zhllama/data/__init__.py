"""Training data: corpus files, tokenized pretraining blocks (cached), SFT examples with loss masks, batches."""

from zhllama.data.batches import BlockData, SequenceData, collate, sample_indices
from zhllama.data.blocks import blocks_key, build_blocks, load_blocks
from zhllama.data.corpus import iter_documents, list_data_files
from zhllama.data.sft import (
    IGNORE_INDEX,
    SftExample,
    SftReport,
    build_sft_sequences,
    pack_sequences,
    read_sft_examples,
    record_examples,
    tokenize_example,
)

__all__ = [
    "IGNORE_INDEX", "BlockData", "SequenceData", "SftExample", "SftReport", "blocks_key", "build_blocks",
    "build_sft_sequences", "collate", "iter_documents", "list_data_files",
    "load_blocks", "pack_sequences", "read_sft_examples", "record_examples", "sample_indices", "tokenize_example",
]
