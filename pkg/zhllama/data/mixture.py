"""The order of pretraining samples over weighted sources: a pure function of (seed, sample position).

Positions are dealt in periods of MIX_PERIOD: in every period each source gets its quota of positions (its
weight's share, by largest remainder), at places shuffled by (seed, period). So the k-th sample of a source is
known from the position alone, and the mixture holds exactly in every period, not just on average.

Within a source, each epoch visits the shards in a fresh random order, `window` shards at a time, the blocks of
a window shuffled together. A pod then reads a few shards at once, not the whole corpus; a source smaller than
its share simply runs through more epochs.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

MIX_PERIOD = 1000
"""Positions per mixing period: weights are honoured to 1/MIX_PERIOD."""
_MIX = 0x6D6978  # "mix": the period shuffles' own stream, apart from the sources' epoch shuffles


def quotas(weights: Sequence[float]) -> list[int]:
    """Positions per period for each source: largest remainder of MIX_PERIOD * share, at least 1 each."""
    total = sum(weights)
    exact = [MIX_PERIOD * w / total for w in weights]
    counts = [max(1, int(x)) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(exact[i] % 1), i))
    for i in by_remainder:
        if sum(counts) >= MIX_PERIOD:
            break
        counts[i] += 1
    while sum(counts) > MIX_PERIOD:  # only when many tiny weights were raised to 1
        counts[counts.index(max(counts))] -= 1
    return counts


class SourceOrder:
    """Block order within one source whose blocks lie in shards of `shard_blocks` rows each."""

    def __init__(self, shard_blocks: Sequence[int], seed: int, source: int, window: int) -> None:
        self.sizes = np.asarray(shard_blocks, dtype=np.int64)
        self.first = np.concatenate([[0], np.cumsum(self.sizes)[:-1]])  # a shard's first block in the source
        self.total = int(self.sizes.sum())
        self.seed, self.source, self.window = seed, source, window

    @functools.lru_cache(maxsize=2)  # noqa: B019 (one SourceOrder per source for the whole run)
    def _epoch(self, epoch: int) -> tuple[list[np.ndarray], np.ndarray]:
        """The epoch's windows (shard ids each) and the end, in blocks, of each window."""
        shards = np.random.default_rng([self.seed, self.source, epoch]).permutation(len(self.sizes))
        windows = [shards[k : k + self.window] for k in range(0, len(shards), self.window)]
        return windows, np.cumsum([self.sizes[w].sum() for w in windows])

    @functools.lru_cache(maxsize=4)  # noqa: B019
    def _window(self, epoch: int, number: int) -> tuple[np.ndarray, np.ndarray]:
        """A window's blocks (source-level indices) in their shuffled order."""
        windows, _ = self._epoch(epoch)
        blocks = np.concatenate([np.arange(self.first[s], self.first[s] + self.sizes[s]) for s in windows[number]])
        order = np.random.default_rng([self.seed, self.source, epoch, number]).permutation(len(blocks))
        return blocks, order

    def block(self, j: int) -> int:
        """The source-level block index of this source's j-th sample."""
        epoch, offset = divmod(j, self.total)
        _, ends = self._epoch(epoch)
        number = int(np.searchsorted(ends, offset, side="right"))
        start = int(ends[number - 1]) if number else 0
        blocks, order = self._window(epoch, number)
        return int(blocks[order[offset - start]])


class MixedOrder:
    """Global sample position -> flat block index over the sources laid end to end."""

    def __init__(self, shard_blocks: Sequence[Sequence[int]], weights: Sequence[float], seed: int,
                 window: int) -> None:
        self.sources = [SourceOrder(sizes, seed, number, window) for number, sizes in enumerate(shard_blocks)]
        self.offsets = np.concatenate([[0], np.cumsum([s.total for s in self.sources])[:-1]])
        self.quotas = quotas(weights)
        self.seed = seed

    @functools.lru_cache(maxsize=2)  # noqa: B019
    def _period(self, period: int) -> tuple[np.ndarray, np.ndarray]:
        """Each position's source in the period, and how many of that source's positions come before it."""
        sources = np.random.default_rng([self.seed, _MIX, period]).permutation(
            np.repeat(np.arange(len(self.quotas)), self.quotas))
        before = np.zeros(MIX_PERIOD, dtype=np.int64)
        for number in range(len(self.quotas)):
            mine = sources == number
            before[mine] = np.arange(int(mine.sum()))
        return sources, before

    def indices(self, start: int, count: int) -> list[int]:
        found = []
        for position in range(start, start + count):
            period, offset = divmod(position, MIX_PERIOD)
            sources, before = self._period(period)
            number = int(sources[offset])
            j = period * self.quotas[number] + int(before[offset])
            found.append(int(self.offsets[number]) + self.sources[number].block(j))
        return found
