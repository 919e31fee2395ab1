"""The weighted, windowed sample order: a pure function of (seed, position), exact shares in every period, every
block once per source epoch, and a pod on a few shards at a time."""

from __future__ import annotations

import numpy as np
import pytest

from zhllama.data.mixture import MIX_PERIOD, MixedOrder, quotas

SHARDS = [[30, 40, 20, 25, 35], [10, 6]]  # source 0: 150 blocks in 5 shards; source 1: 16 in 2


@pytest.mark.parametrize(("weights", "expected"), [([0.9, 0.1], [900, 100]), ([1, 1, 1], [334, 333, 333]),
                                                   ([1, 1e-9], [999, 1])])
def test_quotas_are_the_weights_share_of_a_period(weights: list[float], expected: list[int]) -> None:
    assert quotas(weights) == expected and sum(expected) == MIX_PERIOD


def test_the_order_is_a_pure_function_of_seed_and_position() -> None:
    whole = MixedOrder(SHARDS, [0.9, 0.1], seed=7, window=2).indices(0, 3000)
    resumed = MixedOrder(SHARDS, [0.9, 0.1], seed=7, window=2)
    assert resumed.indices(1234, 100) == whole[1234:1334]
    assert [resumed.indices(p, 1)[0] for p in (2999, 5, 1001)] == [whole[2999], whole[5], whole[1001]]
    assert MixedOrder(SHARDS, [0.9, 0.1], seed=8, window=2).indices(0, 100) != whole[:100]


def test_every_period_has_the_exact_mixture_and_each_source_epoch_covers_its_blocks() -> None:
    order = np.array(MixedOrder(SHARDS, [0.9, 0.1], seed=3, window=2).indices(0, 3 * MIX_PERIOD))
    first, second = order < 150, order >= 150
    for period in range(3):
        window = slice(period * MIX_PERIOD, (period + 1) * MIX_PERIOD)
        assert first[window].sum() == 900 and second[window].sum() == 100
    source0 = order[first]
    for epoch in range(len(source0) // 150):
        assert sorted(source0[epoch * 150 : (epoch + 1) * 150]) == list(range(150))
    source1 = order[second]
    for epoch in range(len(source1) // 16):  # the small source repeats, reshuffled
        assert sorted(source1[epoch * 16 : (epoch + 1) * 16]) == list(range(150, 166))
    assert list(source1[:16]) != list(source1[16:32])


def test_a_window_keeps_the_reader_on_a_few_shards() -> None:
    ends = np.cumsum(SHARDS[0])
    source0 = [i for i in MixedOrder(SHARDS, [1.0, 1.0], seed=1, window=2).indices(0, 400) if i < 150]
    shard_of = np.searchsorted(ends, source0, side="right")
    # The first window is 2 shards: until its blocks are used up, no third shard is touched.
    first_window = {int(s) for s in shard_of[:50]}
    assert len(first_window) <= 2
    assert len({int(s) for s in shard_of[:150]}) == 5
