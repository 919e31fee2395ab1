"""Pretraining blocks streamed from a token dataset: each shard is fetched when the order first reaches it, and
the shards of the next samples are downloaded in the background before that.

Fetches go through the store's node cache (by the shard's sha256, verified, under a node lock), so the ranks of
one pod share one download and one memory map's page cache; the windowed order (data/mixture.py) keeps a pod on a
few shards at a time, so training starts after the first shards, not after the corpus.
"""

from __future__ import annotations

import contextlib
import threading

import numpy as np

from zhllama.data.batches import Sample
from zhllama.data.mixture import MixedOrder
from zhllama.data.shards import DatasetIndex, open_shard
from zhllama.store import ArtifactStore

PREFETCH_SAMPLES = 2048
"""Sample positions read ahead. A window's first samples need all its shards at once; at a cluster's global batch
(~1000 sequences) this gives a step or two of notice to download them."""


class ShardedBlocks:
    def __init__(self, store: ArtifactStore, index: DatasetIndex, window: int,
                 prefetch: int = PREFETCH_SAMPLES) -> None:
        self.store, self.index, self.window, self.prefetch = store, index, window, prefetch
        self.shards = [shard for source in index.sources for shard in source.shards]
        self.ends = np.cumsum([shard.blocks for shard in self.shards])
        self._orders: dict[int, MixedOrder] = {}
        self._open: dict[int, np.ndarray] = {}
        self._ahead_until = 0
        self._prefetcher: threading.Thread | None = None

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
        order = self._orders[seed]
        self._read_ahead(order, start + count)
        return order.indices(start, count)

    def __getitem__(self, index: int) -> Sample:
        number = self._shard_number(index)
        row = index - (int(self.ends[number - 1]) if number else 0)
        ids = np.asarray(self._shard(number)[row], dtype=np.int64)
        return Sample(ids, ids)

    def wait_prefetch(self) -> None:
        if self._prefetcher is not None:
            self._prefetcher.join()

    def _shard_number(self, index: int) -> int:
        return int(np.searchsorted(self.ends, index, side="right"))

    def _shard(self, number: int) -> np.ndarray:
        if number not in self._open:
            ref = self.shards[number]
            path = self.store.fetch_file(ref.unit, ref.name, ref.meta)
            self._open[number] = open_shard(path, self.index.dtype, self.index.block_size)
        return self._open[number]

    def _read_ahead(self, order: MixedOrder, position: int) -> None:
        """Download, in one background thread, the shards of the next `prefetch` positions once half of the last
        look-ahead is used up."""
        busy = self._prefetcher is not None and self._prefetcher.is_alive()
        if not self.prefetch or busy or position + self.prefetch // 2 <= self._ahead_until:
            return
        begin, self._ahead_until = max(self._ahead_until, position), position + self.prefetch
        self._prefetcher = threading.Thread(target=self._fetch, args=(order, begin, self._ahead_until), daemon=True)
        self._prefetcher.start()

    def _fetch(self, order: MixedOrder, begin: int, end: int) -> None:
        for number in sorted({self._shard_number(i) for i in order.indices(begin, end - begin)}):
            ref = self.shards[number]
            # A failed read-ahead is not an error yet: the read itself fetches again and reports it.
            with contextlib.suppress(Exception):
                self.store.fetch_file(ref.unit, ref.name, ref.meta)
