"""Pretraining blocks streamed from a token dataset: each shard is fetched when the order first reaches it.

Fetches go through the store's node cache (by the shard's sha256, verified), so the ranks of one pod share one
download and one memory map's page cache; the windowed order (data/mixture.py) keeps a pod on a few shards at a
time, so training starts after the first shards, not after the corpus.
"""

from __future__ import annotations

import numpy as np

from zhllama.data.mixture import MixedOrder
from zhllama.data.shards import DatasetIndex, open_shard
from zhllama.store import ArtifactStore


class ShardedBlocks:
    def __init__(self, store: ArtifactStore, index: DatasetIndex, window: int) -> None:
        self.store, self.index, self.window = store, index, window
        self.shards = [shard for source in index.sources for shard in source.shards]
        self.ends = np.cumsum([shard.blocks for shard in self.shards])
        self._orders: dict[int, MixedOrder] = {}
        self._open: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0

    @property
    def shards_fetched(self) -> int:
        return len(self._open)

    def indices(self, seed: int, start: int, count: int) -> list[int]:
        if seed not in self._orders:
            sources = self.index.sources
            self._orders[seed] = MixedOrder([[shard.blocks for shard in source.shards] for source in sources],
                                            [source.weight for source in sources], seed, self.window)
        return self._orders[seed].indices(start, count)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        number = int(np.searchsorted(self.ends, index, side="right"))
        row = index - (int(self.ends[number - 1]) if number else 0)
        ids = np.asarray(self._shard(number)[row], dtype=np.int64)
        return ids, ids

    def _shard(self, number: int) -> np.ndarray:
        if number not in self._open:
            ref = self.shards[number]
            path = self.store.fetch_file(ref.unit, ref.name, ref.meta)
            self._open[number] = open_shard(path, self.index.dtype, self.index.block_size)
        return self._open[number]
