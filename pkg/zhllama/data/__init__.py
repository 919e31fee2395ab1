"""Training data: corpus files, the sharded token dataset (written by `prepare`, streamed by pretraining) and its
weighted order, SFT examples with loss masks, batches."""

from zhllama.data.batches import IGNORE_INDEX, BlockData, Sample, SequenceData, collate, sample_indices
from zhllama.data.corpus import iter_documents, list_data_files
from zhllama.data.encode import DocumentEncoder
from zhllama.data.mixture import MixedOrder
from zhllama.data.sft import (
    SftExample,
    SftReport,
    build_sft_sequences,
    pack_sequences,
    read_sft_examples,
    record_examples,
    tokenize_example,
)
from zhllama.data.shards import (
    DatasetIndex,
    UnitStats,
    blocks_of_files,
    read_dataset_index,
    read_unit_blocks,
    write_dataset_index,
    write_unit,
)
from zhllama.data.streaming import ShardedBlocks

__all__ = [
    "IGNORE_INDEX", "BlockData", "DatasetIndex", "DocumentEncoder", "MixedOrder", "Sample", "SequenceData",
    "ShardedBlocks",
    "SftExample", "SftReport", "UnitStats", "blocks_of_files", "build_sft_sequences", "collate", "iter_documents",
    "list_data_files",
    "pack_sequences", "read_dataset_index", "read_sft_examples", "read_unit_blocks", "record_examples",
    "sample_indices", "tokenize_example", "write_dataset_index", "write_unit",
]
