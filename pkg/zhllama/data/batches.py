"""Training examples as one indexable set, a deterministic order over it, and padded batches.

The order is a pure function of (seed, sample position): a run restarted at step k reads exactly the batches an
uninterrupted run would have read, on any number of ranks.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

IGNORE_INDEX = -100
"""The label of a position that is no target: a masked prompt, padding."""


class Sample(NamedTuple):
    """One training sequence."""

    input_ids: np.ndarray
    labels: np.ndarray
    position_ids: np.ndarray | None = None
    """Packed SFT: each example's positions, restarting at 0 where the next example begins, which is where attention
    is cut; None for one sequence (a block, an unpacked example)."""


class BlockData:
    """Pretraining blocks in memory (tests, benchmarks): every token is a target (the model shifts labels)."""

    def __init__(self, blocks: np.ndarray) -> None:
        self.blocks = blocks

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, index: int) -> Sample:
        ids = np.asarray(self.blocks[index], dtype=np.int64)
        return Sample(ids, ids)

    def indices(self, seed: int, start: int, count: int) -> list[int]:
        return sample_indices(len(self), seed, start, count)


class SequenceData:
    """SFT sequences of different lengths, with their own labels (prompts masked) and, packed, their examples'
    positions."""

    def __init__(self, sequences: Sequence[Sample]) -> None:
        self.sequences = sequences

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, index: int) -> Sample:
        return self.sequences[index]

    def indices(self, seed: int, start: int, count: int) -> list[int]:
        return sample_indices(len(self), seed, start, count)


@functools.lru_cache(maxsize=2)
def _epoch_order(dataset_size: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(dataset_size)


def sample_indices(dataset_size: int, seed: int, start: int, count: int) -> list[int]:
    """Dataset indices of global sample positions start..start+count: a fresh shuffle every epoch."""
    indices: list[int] = []
    position = start
    while len(indices) < count:
        epoch, offset = divmod(position, dataset_size)
        order = _epoch_order(dataset_size, seed, epoch)
        take = min(count - len(indices), dataset_size - offset)
        indices.extend(order[offset : offset + take].tolist())
        position += take
    return indices


def collate(items: Sequence[Sample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids and labels (padding is never a target), with an attention_mask; or, when the items are
    packed, with position_ids instead, from which every attention implementation keeps the examples apart."""
    length = max(len(item.input_ids) for item in items)
    input_ids = torch.full((len(items), length), pad_id, dtype=torch.long)
    labels = torch.full((len(items), length), IGNORE_INDEX, dtype=torch.long)
    for row, item in enumerate(items):
        input_ids[row, : len(item.input_ids)] = torch.from_numpy(item.input_ids)
        labels[row, : len(item.labels)] = torch.from_numpy(item.labels)
    if any(item.position_ids is not None for item in items):
        return {"input_ids": input_ids, "labels": labels, **packed_attention(items, length)}
    attention_mask = torch.zeros((len(items), length), dtype=torch.long)
    for row, item in enumerate(items):
        attention_mask[row, : len(item.input_ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def packed_attention(items: Sequence[Sample], length: int) -> dict[str, torch.Tensor]:
    """What keeps packed examples apart, with no attention_mask (one would override it):

    - position_ids restarting at 0 per example: sdpa and eager get a block-diagonal causal mask from them
      (transformers' masking_utils, when there is neither an attention_mask nor a KV cache);
    - cu_seq_lens/max_length over the flattened batch for flash-attention's varlen kernel (transformers derives
      them from position_ids itself only for a batch of one row).
    A row's padding is a segment of its own: it joins no example.
    """
    rows = []
    for item in items:
        given = item.position_ids if item.position_ids is not None else np.arange(len(item.input_ids))
        rows.append(np.concatenate([given, np.arange(length - len(given))]))
    positions = torch.from_numpy(np.stack(rows).astype(np.int64))
    # Every segment starts at position 0; the last ends where the flattened batch does.
    starts = torch.nonzero(positions.reshape(-1) == 0).flatten()
    cu_seq_lens = torch.cat([starts, torch.tensor([positions.numel()])]).to(torch.int32)
    max_length = cu_seq_lens.diff().max()
    return {"position_ids": positions, "cu_seq_lens_q": cu_seq_lens, "cu_seq_lens_k": cu_seq_lens,
            "max_length_q": max_length, "max_length_k": max_length}
