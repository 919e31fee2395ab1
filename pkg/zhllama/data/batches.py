"""Training examples as one indexable set, a deterministic order over it, and padded batches.

The order is a pure function of (seed, sample position): a run restarted at step k reads exactly the batches an
uninterrupted run would have read, on any number of ranks.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch

from zhllama.data.sft import IGNORE_INDEX


class BlockData:
    """Pretraining blocks in memory (tests, benchmarks): every token is a target (the model shifts labels)."""

    def __init__(self, blocks: np.ndarray) -> None:
        self.blocks = blocks

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        ids = np.asarray(self.blocks[index], dtype=np.int64)
        return ids, ids

    def indices(self, seed: int, start: int, count: int) -> list[int]:
        return sample_indices(len(self), seed, start, count)


class SequenceData:
    """SFT sequences of different lengths, with their own labels (prompts masked)."""

    def __init__(self, sequences: Sequence[tuple[np.ndarray, np.ndarray]]) -> None:
        self.sequences = sequences

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
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


def collate(items: Sequence[tuple[np.ndarray, np.ndarray]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids, attention_mask and labels (padding is never a target)."""
    length = max(len(ids) for ids, _ in items)
    input_ids = torch.full((len(items), length), pad_id, dtype=torch.long)
    labels = torch.full((len(items), length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(items), length), dtype=torch.long)
    for row, (ids, target) in enumerate(items):
        input_ids[row, : len(ids)] = torch.from_numpy(ids)
        labels[row, : len(target)] = torch.from_numpy(target)
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
