"""The prepare stage: files dealt to workers, one unit per file kept by content, the index last, and the errors."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from zhllama.data import ShardedBlocks, read_dataset_index, read_unit_blocks
from zhllama.errors import UserError
from zhllama.prepare import run_prepare
from zhllama.run import RunContext
from zhllama.run.process import Place
from zhllama.spec import PrepareSpec, resolve_spec
from zhllama.store import DirStore, open_store


@pytest.fixture
def corpus(tmp_path: Path, tiny: dict[str, Path]) -> dict[str, Path]:
    """Chinese in three files of different sizes, English in one, JSONL with a broken record in another."""
    lines = [line for file in sorted(tiny["corpus"].iterdir()) for line in file.read_text(encoding="utf-8").split("\n")
             if line.strip()]
    zh, en = tmp_path / "zh", tmp_path / "en"
    zh.mkdir()
    en.mkdir()
    for name, part in (("a.txt", lines[:120]), ("b.txt", lines[120:180]), ("c.txt", lines[180:200])):
        (zh / name).write_text("\n".join(part) + "\n", encoding="utf-8")
    (en / "replay.txt").write_text("\n".join(f"English line {i} about tokens and replay." for i in range(80)),
                                   encoding="utf-8")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "中国"}\n{"text": oops}\n' + "".join(
        json.dumps({"text": line}, ensure_ascii=False) + "\n" for line in lines[:30]), encoding="utf-8")
    return {"zh": zh, "en": en, "bad": bad}


def spec_of(tiny: dict[str, Path], tmp_path: Path, run_id: str, data: list[Any], **values: Any) -> PrepareSpec:
    spec = resolve_spec("prepare", size="tiny", run_id=run_id, values={
        "store": f"file://{tmp_path / 'store'}", "tokenizer": f"file://{tiny['zh_tokenizer']}", "data": data,
        "block_size": 32, "shard_mb": 1, **values})
    assert isinstance(spec, PrepareSpec)
    return spec


def run_worker(spec: PrepareSpec, tmp_path: Path, worker: int, workers: int) -> None:
    ctx = RunContext(spec=spec, store=DirStore(tmp_path / "store"), workdir=tmp_path / f"work-{worker}",
                     place=Place(rank=worker, world_size=workers, node_rank=worker))
    run_prepare(ctx)


def test_workers_take_shares_and_worker_0_publishes_the_index_last(
    tiny: dict[str, Path], corpus: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = [{"uri": f"file://{corpus['zh']}", "weight": 0.9}, {"uri": f"file://{corpus['en']}", "weight": 0.1}]
    spec = spec_of(tiny, tmp_path, "prep", data)
    store = DirStore(tmp_path / "store")
    run_worker(spec, tmp_path, 1, 2)
    worker1 = capsys.readouterr().out
    assert not store.is_complete("runs/prep/outputs/dataset")  # worker 0's files are still missing
    run_worker(spec, tmp_path, 0, 2)
    worker0 = capsys.readouterr().out
    tokenized = {out: re.findall(r"tokenized (\S+):", out) for out in (worker0, worker1)}
    # Dealt by size, largest first to the least loaded: a.txt to worker 0, then b.txt to worker 1, ...
    assert "a.txt" in tokenized[worker0] and "b.txt" in tokenized[worker1]
    assert sorted(tokenized[worker0] + tokenized[worker1]) == ["a.txt", "b.txt", "c.txt", "replay.txt"]
    index = read_dataset_index(store.fetch_dir("runs/prep/outputs/dataset"))
    assert [(s.uri, s.weight, s.totals["files"]) for s in index.sources] == [(d["uri"], d["weight"], n)
                                                                           for d, n in zip(data, (3, 1), strict=True)]
    report = store.read_manifest("runs/prep/outputs/dataset")["dataset"]
    assert [s["share"] for s in report["sources"]] == pytest.approx([0.9, 0.1])
    # The streamed blocks are the units' blocks, in index order.
    blocks = ShardedBlocks(store, index, window=2)
    units = dict.fromkeys(shard.unit for source in index.sources for shard in source.shards)
    expected = np.concatenate([read_unit_blocks(store.path(unit), index.dtype, 32) for unit in units])
    assert len(blocks) == len(expected) == report["blocks"]
    assert all(np.array_equal(blocks[i][0], expected[i]) for i in range(0, len(blocks), 7))


def test_a_rerun_keeps_every_unit_and_a_changed_file_is_the_only_one_redone(
    tiny: dict[str, Path], corpus: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = [f"file://{corpus['zh']}"]
    run_worker(spec_of(tiny, tmp_path, "first", data), tmp_path, 0, 1)
    capsys.readouterr()
    run_worker(spec_of(tiny, tmp_path, "again", data), tmp_path, 0, 1)
    assert "3 files: 3 already tokenized, 0 to tokenize" in capsys.readouterr().out
    with (corpus["zh"] / "b.txt").open("a", encoding="utf-8") as handle:
        handle.write("新的一行文字，让这个文件变了。\n")
    run_worker(spec_of(tiny, tmp_path, "changed", data), tmp_path, 0, 1)
    out = capsys.readouterr().out
    assert "3 files: 2 already tokenized, 1 to tokenize" in out and "tokenized b.txt" in out


def test_bad_records_fail_with_file_and_line_or_are_counted_in_the_report(
    tiny: dict[str, Path], corpus: dict[str, Path], tmp_path: Path
) -> None:
    data = [f"file://{corpus['bad']}"]
    with pytest.raises(UserError, match=rf"^{corpus['bad']}:2: not valid JSON .*or set skip_bad_records$"):
        run_worker(spec_of(tiny, tmp_path, "strict", data), tmp_path, 0, 1)
    store = DirStore(tmp_path / "store")
    assert not store.exists("runs/strict/outputs") and store.list_keys("cache/tokens") == []
    run_worker(spec_of(tiny, tmp_path, "lenient", data, skip_bad_records=True), tmp_path, 0, 1)
    (source,) = store.read_manifest("runs/lenient/outputs/dataset")["dataset"]["sources"]
    assert source["bad_records"] == 1 and source["first_bad"].startswith("bad.jsonl:2: not valid JSON")
    assert source["documents"] == 31


def test_an_empty_source_and_a_bad_weight_name_their_entry(
    tiny: dict[str, Path], corpus: dict[str, Path], tmp_path: Path
) -> None:
    (tmp_path / "nothing").mkdir()
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "x.txt").write_text("\n \n", encoding="utf-8")
    ok = f"file://{corpus['zh']}"
    with pytest.raises(UserError, match=r"^data\[1\]: file://.*/nothing holds no \.txt or \.jsonl file \(an empty"):
        run_worker(spec_of(tiny, tmp_path, "e1", [ok, f"file://{tmp_path / 'nothing'}"]), tmp_path, 0, 1)
    with pytest.raises(UserError, match=r"^data\[1\]: file://.*/blank gives 0 tokens, less than one block of 32"):
        run_worker(spec_of(tiny, tmp_path, "e2", [ok, f"file://{tmp_path / 'blank'}"]), tmp_path, 0, 1)
    with pytest.raises(UserError) as err:
        spec_of(tiny, tmp_path, "e3", [ok, {"uri": ok, "weight": -1}, {"uri": ok, "weight": 0}])
    assert [line.split(":")[0] for line in str(err.value).splitlines()[1:]] == ["  - data.1", "  - data.2"]
    assert "weight -1.0 must be > 0" in str(err.value)


def test_training_streams_shards_from_s3_as_the_order_reaches_them_once_per_node(
    tiny: dict[str, Path], corpus: dict[str, Path], tmp_path: Path, s3_env: str
) -> None:
    data = [{"uri": f"file://{corpus['zh']}", "weight": 0.8}, {"uri": f"file://{corpus['en']}", "weight": 0.2}]
    spec = spec_of(tiny, tmp_path, "s3prep", data, store=f"{s3_env}/stream", shard_mb=0.004)  # ~62 blocks a shard
    ctx = RunContext(spec=spec, store=open_store(spec.store), workdir=tmp_path / "work", place=Place())
    run_prepare(ctx)
    index = read_dataset_index(ctx.store.fetch_dir("runs/s3prep/outputs/dataset"))
    shards = sum(len(source.shards) for source in index.sources)
    assert len(index.sources[0].shards) >= 6, shards
    cached = Path(os.environ["ZHLLAMA_CACHE"]) / "files"
    rank0, rank1 = (ShardedBlocks(ctx.store, index, window=2, prefetch=0) for _ in range(2))
    for position in range(0, 40, 2):  # two ranks of one node, reading alternate positions as the loop does
        for rank, blocks in enumerate((rank0, rank1)):
            (index_,) = blocks.indices(spec.seed, position + rank, 1)
            assert np.array_equal(blocks[index_][0], rank0[index_][0])
    # A window of 2 shards per source: the first 40 samples need at most 2 + 2 shards, fetched once for the node.
    assert 2 <= len(list(cached.iterdir())) <= 4 < shards
    assert rank0.shards_fetched <= 4 and rank1.shards_fetched <= 4

    # Read-ahead: the shards of the next positions are in the node cache before any rank reads them.
    ahead = ShardedBlocks(ctx.store, index, window=2, prefetch=300)
    ahead.indices(spec.seed, 40, 1)
    ahead.wait_prefetch()
    ends = np.cumsum([shard.blocks for shard in ahead.shards])
    needed = {ahead.shards[int(np.searchsorted(ends, i, side="right"))].meta["sha256"]
              for i in rank0.indices(spec.seed, 41, 300)}  # the same order, without a read-ahead of its own
    assert len(needed) > 4 and needed <= {path.name for path in cached.iterdir()}
