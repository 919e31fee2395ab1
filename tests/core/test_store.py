"""The artifact contract on both stores: a directory, and a real S3 server (rclone) on loopback."""

import hashlib
import json
from pathlib import Path

import pytest

from tests.core.store_servers import make_artifact
from zhllama.errors import ArtifactError
from zhllama.run import pull_run
from zhllama.store import ArtifactStore, open_store


@pytest.fixture(params=["dir", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "dir":
        return open_store(f"file://{tmp_path / 'store'}")
    root = request.getfixturevalue("s3_env")
    return open_store(f"{root}/{tmp_path.name}")


def test_publish_then_fetch_round_trips_with_checksums(store: ArtifactStore, tmp_path: Path) -> None:
    local = make_artifact(tmp_path / "src", big=20 * 1024 * 1024)  # above the multipart threshold
    manifest = store.publish_dir(local, "runs/r1/outputs/model", spec={"stage": "merge"}, inputs={"base": "x"})
    assert store.is_complete("runs/r1/outputs/model")
    assert set(manifest["files"]) == {"a.txt", "sub/b.bin", "big.bin"}
    assert manifest["files"]["big.bin"]["sha256"] == hashlib.sha256((local / "big.bin").read_bytes()).hexdigest()
    assert manifest["spec"] == {"stage": "merge"} and manifest["inputs"] == {"base": "x"}
    assert manifest["code_version"]
    fetched = store.fetch_dir("runs/r1/outputs/model", tmp_path / "dst")
    for rel in manifest["files"]:
        assert (fetched / rel).read_bytes() == (local / rel).read_bytes()
    assert json.loads((fetched / "manifest.json").read_text())["files"] == manifest["files"]


def test_an_artifact_without_manifest_is_refused(store: ArtifactStore, tmp_path: Path) -> None:
    local = make_artifact(tmp_path / "src")
    store._put_file(local / "a.txt", "runs/r2/outputs/half/a.txt")  # what a crash mid-upload leaves
    assert not store.is_complete("runs/r2/outputs/half")
    with pytest.raises(ArtifactError, match="incomplete: it has no manifest.json"):
        store.fetch_dir("runs/r2/outputs/half", tmp_path / "dst")
    assert not (tmp_path / "dst" / "a.txt").exists()


def test_a_corrupt_file_is_refused_and_nothing_is_left(store: ArtifactStore, tmp_path: Path) -> None:
    local = make_artifact(tmp_path / "src")
    store.publish_dir(local, "runs/r3/outputs/o")
    store.write_bytes("runs/r3/outputs/o/a.txt", "你好，世間\n".encode())  # same size, other bytes
    with pytest.raises(ArtifactError, match="corrupt: its sha256 differs"):
        store.fetch_dir("runs/r3/outputs/o", tmp_path / "dst")
    assert not any(p.is_file() for p in (tmp_path / "dst").rglob("*"))


def test_republishing_replaces_stale_files(store: ArtifactStore, tmp_path: Path) -> None:
    first = make_artifact(tmp_path / "v1")
    store.publish_dir(first, "runs/r4/outputs/o")
    second = tmp_path / "v2"
    second.mkdir()
    (second / "only.txt").write_text("v2")
    store.publish_dir(second, "runs/r4/outputs/o")
    assert store.list_keys("runs/r4/outputs/o") == ["runs/r4/outputs/o/manifest.json", "runs/r4/outputs/o/only.txt"]


def test_pull_never_writes_outside_dest(store: ArtifactStore, tmp_path: Path) -> None:
    local = make_artifact(tmp_path / "src")
    store.publish_dir(local, "runs/r5/outputs/good")
    evil = store.read_json("runs/r5/outputs/good/manifest.json")
    evil["files"] = {"../../escaped.txt": evil["files"]["a.txt"]}
    store.write_json("runs/r5/outputs/good/manifest.json", evil)
    dest = tmp_path / "pulled"
    with pytest.raises(ArtifactError, match="outside the destination"):
        pull_run(store, "r5", dest)
    assert not list(tmp_path.rglob("escaped.txt"))


def test_pull_downloads_every_complete_output(store: ArtifactStore, tmp_path: Path) -> None:
    store.publish_dir(make_artifact(tmp_path / "a"), "runs/r6/outputs/adapter")
    store._put_file(tmp_path / "a" / "a.txt", "runs/r6/outputs/unfinished/a.txt")
    paths = pull_run(store, "r6", tmp_path / "dest")
    assert [p.name for p in paths] == ["adapter"]
    assert (tmp_path / "dest" / "adapter" / "sub" / "b.bin").read_bytes() == (tmp_path / "a/sub/b.bin").read_bytes()


def test_list_dirs_and_json(store: ArtifactStore) -> None:
    store.write_json("runs/x1/status.json", {"state": "Running"})
    store.write_json("runs/x2/status.json", {"state": "Failed"})
    assert store.list_dirs("runs") == ["x1", "x2"]
    assert store.read_json("runs/x2/status.json") == {"state": "Failed"}
    with pytest.raises(FileNotFoundError):
        store.read_json("runs/x3/status.json")
