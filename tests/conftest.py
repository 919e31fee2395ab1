"""Fixtures shared by every test: an isolated home for zhllama's state, a real S3 server on loopback, and the tiny
model set of the training tests (tests/train, tests/e2e)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

S3_KEY, S3_SECRET, S3_BUCKET = "zhllama-test", "not-a-real-secret-1234", "zhllama"


@pytest.fixture(autouse=True)
def isolated_state(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own state, scratch and cache directories (never the user's ~/.cache)."""
    home = tmp_path_factory.mktemp("zhllama-home")
    for var, sub in (("ZHLLAMA_STATE", "state"), ("ZHLLAMA_WORKDIR", "work"), ("ZHLLAMA_CACHE", "cache")):
        monkeypatch.setenv(var, str(home / sub))
    monkeypatch.delenv("ZHLLAMA_STORE", raising=False)
    return home


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`rclone serve s3` on 127.0.0.1 over a temporary directory; yields the endpoint URL."""
    rclone = shutil.which("rclone") or str(Path(os.sys.executable).parent / "rclone")
    root = tmp_path_factory.mktemp("s3-root")
    (root / S3_BUCKET).mkdir()
    port = _free_port()
    log = open(root.parent / "rclone.log", "wb")
    process = subprocess.Popen(
        [
            rclone,
            "serve",
            "s3",
            str(root),
            "--addr",
            f"127.0.0.1:{port}",
            "--auth-key",
            f"{S3_KEY},{S3_SECRET}",
            "--vfs-cache-mode",
            "off",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(f"rclone exited: {(root.parent / 'rclone.log').read_text()}") from None
            time.sleep(0.2)
    else:
        process.kill()
        raise RuntimeError("rclone serve s3 did not start in 30 s")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


@pytest.fixture
def s3_env(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point boto3's standard environment at the loopback server; returns the bucket's root URI."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)
    return f"s3://{S3_BUCKET}"


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Chinese text, base and extended tokenizers, a briefly pre-trained tiny base model (tests/train/tiny.py)."""
    from tests.train.tiny import build_tiny_set  # torch and transformers only for the tests that use it

    return build_tiny_set(tmp_path_factory.mktemp("tiny-train"))
