"""What the store fault tests share: a logged rclone S3 server, boto3's environment pointed at an endpoint, and
artifacts to publish."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.e2e.s3_servers import BUCKET, S3_KEY, S3_SECRET, S3Server

AWS_VARIABLES = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                 "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION",
                 "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                 "AWS_CONTAINER_CREDENTIALS_FULL_URI", "ZHLLAMA_S3_RETRIES")


@contextmanager
def logged_server(root: Path) -> Iterator[S3Server]:
    """`rclone serve s3 -vv` over `root` with the test bucket, stopped afterwards."""
    (root / "data" / BUCKET).mkdir(parents=True)
    server = S3Server.start(root / "data", root / "rclone.log")
    try:
        yield server
    finally:
        server.stop()


def point_at(monkeypatch: pytest.MonkeyPatch, endpoint: str, key: str = S3_KEY, secret: str = S3_SECRET) -> None:
    """boto3's environment: only this endpoint and these credentials, nothing inherited."""
    for name in AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no one-second wait on a metadata service
    if key:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)


def no_aws_profiles(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Empty AWS config and credentials files, so that no profile anywhere supplies a key."""
    for name in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "BOTO_CONFIG"):
        empty = tmp_path / f"empty-{name.lower()}"
        empty.write_text("")
        monkeypatch.setenv(name, str(empty))


def make_artifact(root: Path, big: int = 0) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("你好，世界\n", encoding="utf-8")
    (root / "sub" / "b.bin").write_bytes(os.urandom(1000))
    if big:
        (root / "big.bin").write_bytes(os.urandom(big))
    return root


def flip_byte(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]
