"""S3 that is down, refuses us or lacks the bucket: every store operation says so in one line, within seconds,
having shown each retry. Real rclone S3 servers on loopback, and ports where nothing listens."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.core.store_servers import flip_byte, logged_server, make_artifact, no_aws_profiles, point_at
from tests.e2e.s3_servers import BUCKET, S3_SECRET, S3Server, free_port
from zhllama.errors import StoreUnavailable, UserError
from zhllama.store import ArtifactStore, open_store


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with logged_server(tmp_path_factory.mktemp("s3-faults")) as running:
        yield running


def every_operation(store: ArtifactStore, tmp_path: Path) -> dict[str, Callable[[], object]]:
    """One call of each thing a command does with a store."""
    local = make_artifact(tmp_path / "src")
    return {
        "read_json": lambda: store.read_json("runs/x/status.json"),
        "write_json": lambda: store.write_json("runs/x/status.json", {"state": "Running"}),
        "exists": lambda: store.exists("runs/x/status.json"),
        "is_complete": lambda: store.is_complete("runs/x/outputs/o"),
        "list_keys": lambda: store.list_keys("runs/x"),
        "list_dirs": lambda: store.list_dirs("runs"),
        "object_versions": lambda: store.object_versions("data/corpus.txt"),
        "fetch_objects": lambda: store.fetch_objects("data/corpus.txt"),
        "publish_dir": lambda: store.publish_dir(local, "runs/x/outputs/o", progress=False),
        "fetch_dir": lambda: store.fetch_dir("runs/x/outputs/o", tmp_path / "dest"),
        "verify": lambda: store.verify("runs/x/outputs/o"),
        "delete_prefix": lambda: store.delete_prefix("runs/x"),
        "create_exclusive": lambda: store.create_exclusive("runs/x/attempts/1.json", b"{}"),
    }


def test_an_unreachable_endpoint_is_one_line_after_four_shown_retries(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    point_at(monkeypatch, endpoint)
    store = open_store(f"s3://{BUCKET}/team")
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as raised:
        store.write_json("runs/x/status.json", {"state": "Pending"})
    elapsed = time.monotonic() - started
    message = str(raised.value)
    assert "\n" not in message and S3_SECRET not in message
    assert message.startswith(f"s3://{BUCKET}/team: PUT runs/x/status.json: cannot reach the S3 endpoint {endpoint}")
    assert "(connection refused, 5 attempts); check AWS_ENDPOINT_URL and that the server is up" in message
    retries = [line for line in capsys.readouterr().err.splitlines() if line.startswith("s3: ")]
    assert retries == [f"s3: PUT runs/x/status.json: connection refused; retry {n}/4 in {d}s"
                       for n, d in ((1, "0.5"), (2, "1.0"), (3, "2.0"), (4, "4.0"))]
    assert 7 < elapsed < 15


def test_every_operation_on_a_down_endpoint_raises_the_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    point_at(monkeypatch, f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("ZHLLAMA_S3_RETRIES", "0")
    store = open_store(f"s3://{BUCKET}")
    for name, operation in every_operation(store, tmp_path).items():
        with pytest.raises(StoreUnavailable, match=r"cannot reach the S3 endpoint .* \(connection refused\)") as e:
            operation()
        assert "\n" not in str(e.value), name
    assert "retry" not in capsys.readouterr().err


def test_the_retry_count_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    point_at(monkeypatch, f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("ZHLLAMA_S3_RETRIES", "1")
    with pytest.raises(StoreUnavailable, match="connection refused, 2 attempts"):
        open_store(f"s3://{BUCKET}").read_bytes("a/b")
    assert re.findall(r"retry \d+/\d+", capsys.readouterr().err) == ["retry 1/1"]
    monkeypatch.setenv("ZHLLAMA_S3_RETRIES", "many")
    with pytest.raises(UserError, match="ZHLLAMA_S3_RETRIES='many': give a whole number"):
        open_store(f"s3://{BUCKET}")


def test_a_server_that_comes_up_during_the_retries_is_used(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    (tmp_path / "late" / BUCKET).mkdir(parents=True)
    point_at(monkeypatch, f"http://127.0.0.1:{port}")
    monkeypatch.setenv("ZHLLAMA_S3_RETRIES", "6")  # up to 31 s: rclone starts in one or two on a busy machine
    store = open_store(f"s3://{BUCKET}")
    late: list[S3Server] = []
    starter = threading.Timer(0.3, lambda: late.append(S3Server.start(tmp_path / "late", tmp_path / "l.log",
                                                                      port=port)))
    starter.start()
    try:
        store.write_bytes("hello.txt", b"hi")
        assert store.read_bytes("hello.txt") == b"hi"
    finally:
        starter.join()
        for running in late:
            running.stop()
    assert "s3: PUT hello.txt: connection refused; retry 1/6 in 0.5s" in capsys.readouterr().err


def test_no_credentials_says_which_variables_to_set(
    server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    point_at(monkeypatch, server.endpoint, key="")
    no_aws_profiles(monkeypatch, tmp_path)
    store = open_store(f"s3://{BUCKET}/team")
    for name, operation in every_operation(store, tmp_path).items():
        with pytest.raises(StoreUnavailable) as raised:
            operation()
        assert str(raised.value).startswith(f"no AWS credentials for s3://{BUCKET}/team ("), name
        assert str(raised.value).endswith(
            "; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
        ), name
    assert "retry" not in capsys.readouterr().err  # a missing key does not appear by waiting


def test_a_wrong_key_is_access_denied_without_the_secret(server: S3Server, monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    wrong_secret = "wrong-secret-never-printed-987"
    point_at(monkeypatch, server.endpoint, key="nobody-we-know", secret=wrong_secret)
    store = open_store(f"s3://{BUCKET}")
    for name, operation in every_operation(store, tmp_path).items():
        with pytest.raises(StoreUnavailable) as raised:
            operation()
        message = str(raised.value)
        assert re.match(rf"s3://{BUCKET}: access denied \((InvalidAccessKeyId|403)\) on ", message), (name, message)
        assert "check the credentials" in message and wrong_secret not in message and "nobody-we-know" not in message


def test_a_wrong_secret_is_access_denied_too(server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    point_at(monkeypatch, server.endpoint, secret="not-the-secret-at-all")
    with pytest.raises(StoreUnavailable, match=rf"s3://{BUCKET}: access denied \(SignatureDoesNotMatch\)"):
        open_store(f"s3://{BUCKET}").write_bytes("x", b"1")


def test_a_missing_bucket_is_named(server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    point_at(monkeypatch, server.endpoint)
    operations = every_operation(open_store("s3://nosuch/team"), tmp_path)
    for name in ("read_json", "list_keys", "list_dirs", "fetch_dir", "verify", "write_json", "exists"):
        with pytest.raises(StoreUnavailable, match=r"^s3://nosuch: bucket does not exist; check the store URI"):
            operations[name]()


def test_operations_work_on_a_healthy_server(server: S3Server, monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    """The error handling wraps every call, and gets out of the way when nothing fails."""
    point_at(monkeypatch, server.endpoint)
    store = open_store(f"s3://{BUCKET}/healthy")
    store.write_bytes("data/corpus.txt", "語料\n".encode())
    operations = every_operation(store, tmp_path)
    for name in ("write_json", "publish_dir", "fetch_dir", "verify", "fetch_objects", "read_json"):
        operations[name]()
    assert store.exists("runs/x/status.json") and store.is_complete("runs/x/outputs/o")
    assert store.list_dirs("runs") == ["x"]
    assert operations["create_exclusive"]() is True and operations["create_exclusive"]() is False
    assert store.list_dirs("runs/x/attempts") == []  # the claims beside the key stay out of listings of dirs
    store.write_bytes("runs/x/outputs/o/a.txt", flip_byte(store.read_bytes("runs/x/outputs/o/a.txt"), 0))
    operations["delete_prefix"]()
    assert store.list_keys("runs/x") == []
