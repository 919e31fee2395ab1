"""What the store promises about bytes, on a directory and on a real S3 server (rclone -vv, whose log shows what
was read): cheap verification catches flips and truncation, a pull never writes through a planted link, and of
concurrent creators of one object exactly one wins."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.core.store_servers import flip_byte, logged_server, make_artifact, point_at
from tests.e2e.s3_servers import BUCKET, S3Server
from zhllama.errors import ArtifactError, UserError
from zhllama.run import pull_run
from zhllama.store import ArtifactStore, open_store, safe_local_path
from zhllama.store import manifest as manifest_module
from zhllama.store.manifest import hash_file


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with logged_server(tmp_path_factory.mktemp("s3-integrity")) as running:
        yield running


@pytest.fixture(params=["dir", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ArtifactStore:
    if request.param == "dir":
        return open_store(f"file://{tmp_path / 'store'}")
    point_at(monkeypatch, request.getfixturevalue("server").endpoint)
    return open_store(f"s3://{BUCKET}/{tmp_path.name}")


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> int:
    """64 KiB chunks, so that files of a few hundred KiB have several without costing time."""
    monkeypatch.setattr(manifest_module, "CHUNK_BYTES", 64 * 1024)
    return 64 * 1024


def gets_of(server: S3Server, key_end: str, since: float) -> int:
    return sum(server.traffic("").count("GET", lambda key: key.endswith(key_end), after=since).values())


# --- cheap and full verification ---------------------------------------------------------------------------------


def test_the_manifest_records_chunk_hashes_in_the_same_pass(tmp_path: Path) -> None:
    data = os.urandom(5 * 1024 + 7)
    (tmp_path / "f").write_bytes(data)
    whole, pieces = hash_file(tmp_path / "f", 1024)
    assert len(pieces) == 6 and whole == hash_file(tmp_path / "f", 1 << 20)[0]
    assert pieces == [hashlib.sha256(data[i : i + 1024]).hexdigest() for i in range(0, len(data), 1024)]
    assert hash_file(tmp_path / "f", 1 << 20)[1] == [whole]  # one chunk: its hash is the file's


def test_a_flipped_byte_is_caught_by_the_cheap_check(store: ArtifactStore, tmp_path: Path) -> None:
    store.publish_dir(make_artifact(tmp_path / "src"), "runs/v1/outputs/o", progress=False)
    assert store.verify("runs/v1/outputs/o")["files"]["a.txt"]["chunks"]["sha256"]
    key = "runs/v1/outputs/o/sub/b.bin"
    store.write_bytes(key, flip_byte(store.read_bytes(key), 500))  # same size, one bit
    with pytest.raises(ArtifactError) as raised:
        store.verify("runs/v1/outputs/o")
    assert str(raised.value).startswith(f"{store.uri(key)} is corrupt: bytes 0-999 differ")
    assert str(raised.value).endswith("re-run its stage")


def test_a_truncated_file_is_a_size_mismatch_found_without_reading_it(
    store: ArtifactStore, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    local = make_artifact(tmp_path / "src", big=3 * 1024 * 1024)
    store.publish_dir(local, "runs/v2/outputs/o", progress=False)
    store.write_bytes("runs/v2/outputs/o/big.bin", (local / "big.bin").read_bytes()[:-10])
    since = time.time()
    with pytest.raises(ArtifactError, match=r"big.bin is corrupt: 3145718 bytes, the manifest says 3145728; re-run"):
        store.verify("runs/v2/outputs/o", full=True)
    if "s3" in request.node.name:
        assert gets_of(request.getfixturevalue("server"), "big.bin", since) == 0


def test_the_cheap_check_reads_two_chunks_of_a_big_file(server: S3Server, monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path, small_chunks: int) -> None:
    point_at(monkeypatch, server.endpoint)
    store = open_store(f"s3://{BUCKET}/{tmp_path.name}")
    store.publish_dir(make_artifact(tmp_path / "src", big=8 * small_chunks), "o", progress=False)
    since = time.time()
    store.verify("o")
    assert gets_of(server, "big.bin", since) == 2
    store.verify("o", full=True)
    assert gets_of(server, "big.bin", since) == 3  # the whole file in one streamed read


def test_a_flip_in_one_chunk_of_many_is_caught_when_drawn_and_always_by_full(tmp_path: Path,
                                                                             small_chunks: int) -> None:
    store = open_store(f"file://{tmp_path / 'store'}")
    store.publish_dir(make_artifact(tmp_path / "src", big=5 * small_chunks), "o", progress=False)
    big = tmp_path / "store" / "o" / "big.bin"
    big.write_bytes(flip_byte(big.read_bytes(), 3 * small_chunks + 17))
    caught = 0
    for _ in range(40):
        try:
            store.verify("o")
        except ArtifactError as err:
            assert f"bytes {3 * small_chunks}-{4 * small_chunks - 1} differ" in str(err)
            caught += 1
    assert 0 < caught < 40  # drawn 2 chunks of 5: misses (3/5)^40, catches every time (2/5)^40
    with pytest.raises(ArtifactError, match="big.bin is corrupt: its sha256 differs"):
        store.verify("o", full=True)


def test_an_artifact_from_before_chunk_hashes_is_hashed_whole(store: ArtifactStore, tmp_path: Path,
                                                             small_chunks: int) -> None:
    store.publish_dir(make_artifact(tmp_path / "src", big=5 * small_chunks), "old", progress=False)
    manifest = store.read_manifest("old")
    for meta in manifest["files"].values():
        del meta["chunks"]
    store.write_bytes("old/manifest.json", json.dumps(manifest).encode())
    store.verify("old")
    store.write_bytes("old/big.bin", flip_byte(store.read_bytes("old/big.bin"), 4 * small_chunks + 1))
    for _ in range(3):
        with pytest.raises(ArtifactError, match="big.bin is corrupt: its sha256 differs from the manifest"):
            store.verify("old")


def test_a_missing_file_is_named(store: ArtifactStore, tmp_path: Path) -> None:
    store.publish_dir(make_artifact(tmp_path / "src"), "m", progress=False)
    store.delete_prefix("m/sub")
    with pytest.raises(ArtifactError, match=r"m/sub/b.bin is listed in the manifest but missing; re-run"):
        store.verify("m")


# --- pulls never write through links -----------------------------------------------------------------------------


def test_a_link_planted_in_dest_is_refused_and_the_victim_untouched(store: ArtifactStore, tmp_path: Path) -> None:
    store.publish_dir(make_artifact(tmp_path / "src"), "runs/tok1/outputs/tokenizer", progress=False)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    dest = tmp_path / "D"
    (dest / "tokenizer").mkdir(parents=True)
    planted = dest / "tokenizer" / "manifest.json"
    planted.symlink_to(victim)
    with pytest.raises(UserError) as raised:
        pull_run(store, "tok1", dest)
    assert str(raised.value) == (f"{planted} is a symbolic link; ctl pull does not write through links: remove it")
    assert victim.read_text() == "precious\n"
    assert not (dest / "tokenizer" / "a.txt").exists()  # refused before anything was written


def test_a_linked_directory_in_dest_is_refused(store: ArtifactStore, tmp_path: Path) -> None:
    store.publish_dir(make_artifact(tmp_path / "src"), "runs/tok2/outputs/tokenizer", progress=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "D" / "tokenizer").mkdir(parents=True)
    (tmp_path / "D" / "tokenizer" / "sub").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(UserError, match=r"tokenizer/sub is a symbolic link; ctl pull does not write through"):
        pull_run(store, "tok2", tmp_path / "D")
    assert list(elsewhere.iterdir()) == []


def test_a_hard_link_in_dest_is_replaced_not_written_through(store: ArtifactStore, tmp_path: Path) -> None:
    store.publish_dir(make_artifact(tmp_path / "src"), "runs/tok3/outputs/tokenizer", progress=False)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / "D" / "tokenizer").mkdir(parents=True)
    os.link(victim, tmp_path / "D" / "tokenizer" / "manifest.json")
    os.link(victim, tmp_path / "D" / "tokenizer" / "a.txt")
    pull_run(store, "tok3", tmp_path / "D")
    assert victim.read_text() == "precious\n"
    assert (tmp_path / "D" / "tokenizer" / "a.txt").read_text(encoding="utf-8") == "你好，世界\n"
    assert json.loads((tmp_path / "D" / "tokenizer" / "manifest.json").read_text())["files"]


def test_safe_local_path_messages_fit_reads_and_writes(tmp_path: Path) -> None:
    for key in ("../x", "/etc/passwd", "a/../../x"):
        with pytest.raises(ArtifactError, match="points outside the destination") as raised:
            safe_local_path(tmp_path, key)
        assert "refusing to write" not in str(raised.value)
    (tmp_path / "out").symlink_to("/tmp")
    with pytest.raises(ArtifactError, match=r"'out/x' resolves outside the destination"):
        safe_local_path(tmp_path, "out/x")


# --- create_exclusive --------------------------------------------------------------------------------------------


def test_of_concurrent_creators_exactly_one_wins(store: ArtifactStore, tmp_path: Path) -> None:
    contenders = 8
    # One store per contender, as separate `ctl run` processes would have (separate S3 clients).
    stores = [open_store(store.root_uri) for _ in range(contenders)]
    start = threading.Barrier(contenders)
    results: dict[int, bool] = {}

    def contend(n: int) -> None:
        start.wait()
        results[n] = stores[n].create_exclusive("runs/r/attempts/1.json", f"claim {n}".encode())

    threads = [threading.Thread(target=contend, args=(n,)) for n in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    winners = [n for n, won in results.items() if won]
    assert len(results) == contenders and len(winners) == 1
    assert store.read_bytes("runs/r/attempts/1.json") == f"claim {winners[0]}".encode()
    assert store.create_exclusive("runs/r/attempts/1.json", b"late") is False
    assert store.read_bytes("runs/r/attempts/1.json") == f"claim {winners[0]}".encode()
    assert store.create_exclusive("runs/r/attempts/2.json", b"next") is True


def test_rclone_ignores_if_none_match_so_the_ticket_protocol_is_used(server: S3Server,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Why S3Store.create_exclusive has a fallback: this server lets a second If-None-Match PUT replace."""
    point_at(monkeypatch, server.endpoint)
    store = open_store(f"s3://{BUCKET}/probe")
    assert store._conditional_put() is False  # type: ignore[attr-defined]
    assert store.list_keys("") == []  # the probe object is gone
