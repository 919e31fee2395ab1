"""S3 store (AWS, MinIO, Ceph): the only module that talks to boto3.

Endpoint, region and credentials come from the usual AWS environment variables and profiles
(AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_PROFILE, IRSA web identity, ...): nothing secret is ever
part of a spec. Custom endpoints get path-style addressing, which MinIO and Ceph expect. Every request goes through
S3Faults.call (store/s3_faults.py): bounded, announced retries and one-line errors instead of botocore's silent
half-minute of retries and its tracebacks.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError
from tqdm import tqdm

from zhllama.errors import StoreUnavailable
from zhllama.store.base import ArtifactStore, join_key
from zhllama.store.claims import create_by_tickets
from zhllama.store.manifest import MANIFEST
from zhllama.store.s3_faults import (
    CONNECT_TIMEOUT_S,
    ObjectExists,
    S3Faults,
    client_setup_error,
    public_endpoint,
    retries_from_env,
)

T = TypeVar("T")
MULTIPART_BYTES = 16 * 1024 * 1024
READ_TIMEOUT_S = 60
_BLOCK = 1 << 20
PROBES = ".zhllama-probes"


class S3Store(ArtifactStore):
    def __init__(self, bucket: str, prefix: str = "") -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.root_uri = f"s3://{bucket}" + (f"/{self.prefix}" if self.prefix else "")
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        config = Config(
            retries={"total_max_attempts": 1, "mode": "standard"},  # S3Faults retries, and says so
            s3={"addressing_style": "path" if endpoint else "auto"},
            connect_timeout=CONNECT_TIMEOUT_S,
            read_timeout=READ_TIMEOUT_S,
            # Servers such as rclone send the whole object's CRC with a ranged GET, which botocore then rejects;
            # what we read is checked against the manifest's sha256 anyway.
            response_checksum_validation="when_required",
        )
        try:
            self.client = boto3.session.Session().client("s3", endpoint_url=endpoint, config=config)
        except BotoCoreError as err:
            raise client_setup_error(self.root_uri, err) from None
        self.faults = S3Faults(
            self.root_uri, bucket, public_endpoint(endpoint or self.client.meta.endpoint_url), retries_from_env()
        )
        # One attempt per transfer: a failed one is retried whole by S3Faults, visibly.
        self.transfer = TransferConfig(
            multipart_threshold=MULTIPART_BYTES, multipart_chunksize=MULTIPART_BYTES, max_concurrency=4,
            num_download_attempts=1,
        )
        self._honours_conditional_put: bool | None = None

    def _key(self, key: str) -> str:
        return join_key(self.prefix, key)

    def _call(self, op: str, key: str, attempt: Callable[[], T]) -> T:
        return self.faults.call(op, key, attempt)

    def _progress(self, size: int, label: str, enabled: bool) -> Any:
        if not enabled or size < MULTIPART_BYTES:
            return None, None
        bar = tqdm(total=size, unit="B", unit_scale=True, desc=label, leave=False)
        return bar, bar.update

    def _put_file(self, local: Path, key: str, *, progress: bool = False) -> None:
        size = local.stat().st_size

        def upload() -> None:
            bar, callback = self._progress(size, f"upload {Path(key).name}", progress)
            try:
                self.client.upload_file(str(local), self.bucket, self._key(key), Config=self.transfer,
                                        Callback=callback)
            finally:
                if bar is not None:
                    bar.close()

        self._call("PUT", key, upload)

    def _get_file(self, key: str, local: Path, *, progress: bool = False) -> None:
        size = self._call("HEAD", key, lambda: self.client.head_object(Bucket=self.bucket, Key=self._key(key)))
        bar_size = int(size["ContentLength"])

        def download() -> None:
            bar, callback = self._progress(bar_size, f"download {Path(key).name}", progress)
            try:
                self.client.download_file(self.bucket, self._key(key), str(local), Config=self.transfer,
                                          Callback=callback)
            finally:
                if bar is not None:
                    bar.close()

        self._call("GET", key, download)

    def read_bytes(self, key: str) -> bytes:
        def get() -> bytes:
            body: bytes = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
            return body

        return self._call("GET", key, get)

    def write_bytes(self, key: str, data: bytes) -> None:
        # A single PUT replaces an S3 object atomically.
        self._call("PUT", key, lambda: self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data))

    def create_exclusive(self, key: str, data: bytes) -> bool:
        """A PUT with If-None-Match: * where the server honours it (AWS S3, recent MinIO and Ceph: a 412 means
        the object was there). Where it does not (rclone serve s3 ignores the header and replaces the object), the
        ticket protocol of store/claims.py, correct with plain PUT/LIST/DELETE. Which one is probed once per store
        with a throwaway object. Either way a caller that wins and dies before writing leaves the key absent for
        good: the losers return False and must wait for it or time out."""
        if not self._conditional_put():
            return create_by_tickets(self, key, data)
        attempts = 0

        def put() -> None:
            nonlocal attempts
            attempts += 1
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, IfNoneMatch="*")

        try:
            self._call("PUT", key, put)
        except ObjectExists:
            # A retried PUT can meet the object its own first attempt wrote before the reply was lost.
            return attempts > 1 and self.read_bytes(key) == data
        return True

    def _conditional_put(self) -> bool:
        """Whether the server refuses a second If-None-Match PUT of one object, found out once."""
        put_fields = self.client.meta.service_model.operation_model("PutObject").input_shape.members
        if "IfNoneMatch" not in put_fields:  # a botocore older than conditional writes (1.35)
            return False
        if self._honours_conditional_put is None:
            probe = join_key(PROBES, uuid.uuid4().hex)

            def put() -> None:
                self.client.put_object(Bucket=self.bucket, Key=self._key(probe), Body=b"", IfNoneMatch="*")

            self._call("PUT", probe, put)
            try:
                self._call("PUT", probe, put)
                self._honours_conditional_put = False
            except ObjectExists:
                self._honours_conditional_put = True
            finally:
                self.delete_keys([probe])
        return self._honours_conditional_put

    def exists(self, key: str) -> bool:
        try:
            self._call("HEAD", key, lambda: self.client.head_object(Bucket=self.bucket, Key=self._key(key)))
        except FileNotFoundError:
            return bool(self.list_keys(key))
        return True

    def _list(self, prefix: str) -> dict[str, tuple[int, str]]:
        """Every key under `prefix/` with its size and ETag."""
        full = self._key(prefix).rstrip("/") + "/" if prefix else (self.prefix + "/" if self.prefix else "")

        def list_all() -> dict[str, tuple[int, str]]:
            found: dict[str, tuple[int, str]] = {}
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
                for item in page.get("Contents", []):
                    key = item["Key"][len(self.prefix) + 1 :] if self.prefix else item["Key"]
                    found[key] = (int(item["Size"]), item.get("ETag", "").strip(chr(34)))
            return found

        return self._call("LIST", prefix, list_all)

    def list_keys(self, prefix: str) -> list[str]:
        return sorted(self._list(prefix))

    def object_versions(self, key: str) -> dict[str, str]:
        try:
            head = self._call("HEAD", key, lambda: self.client.head_object(Bucket=self.bucket, Key=self._key(key)))
            return {key: f"{head['ContentLength']}:{head.get('ETag', '').strip(chr(34))}"}
        except FileNotFoundError:
            pass
        return {k: f"{size}:{etag}" for k, (size, etag) in sorted(self._list(key).items())}

    def _object_sizes(self, prefix: str) -> dict[str, int]:
        skip = len(prefix.strip("/")) + 1 if prefix.strip("/") else 0
        return {k[skip:]: size for k, (size, _) in self._list(prefix).items()}

    def _range_sha256(self, key: str, offset: int, length: int) -> str:
        digest = hashlib.sha256()
        if length <= 0:
            return digest.hexdigest()

        def ranged_get() -> str:
            digest = hashlib.sha256()
            body = self.client.get_object(
                Bucket=self.bucket, Key=self._key(key), Range=f"bytes={offset}-{offset + length - 1}"
            )["Body"]
            for block in body.iter_chunks(_BLOCK):
                digest.update(block)
            return digest.hexdigest()

        return self._call("GET", key, ranged_get)

    def list_dirs(self, prefix: str) -> list[str]:
        full = self._key(prefix).rstrip("/") + "/"

        def list_prefixes() -> list[str]:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full, Delimiter="/"
            )
            return [p["Prefix"][len(full) :].rstrip("/") for page in pages for p in page.get("CommonPrefixes", [])]

        # Dot names are bookkeeping (claims, probes), hidden as the directory store hides its staging.
        return sorted(name for name in self._call("LIST", prefix, list_prefixes) if not name.startswith("."))

    def delete_prefix(self, prefix: str) -> None:
        # Manifests first: an artifact interrupted half-deleted must read as incomplete, not as complete but corrupt.
        keys = self.list_keys(prefix)
        manifests = [key for key in keys if key.endswith(f"/{MANIFEST}")]
        self.delete_keys(manifests)
        self.delete_keys([key for key in keys if key not in set(manifests)])

    def delete_keys(self, keys: list[str]) -> None:
        """Delete these objects (absent ones are no error)."""
        for start in range(0, len(keys), 1000):
            batch = [{"Key": self._key(k)} for k in keys[start : start + 1000]]
            response = self._call("DELETE", keys[start], self._deleter(batch))
            if errors := response.get("Errors"):
                first = errors[0]
                raise StoreUnavailable(
                    f"{self.root_uri}: DELETE {first.get('Key', '')} failed ({first.get('Code', '?')}) with "
                    f"{len(errors)} other(s); check the credentials may delete in this bucket"
                )

    def _deleter(self, batch: list[dict[str, str]]) -> Callable[[], Any]:
        return lambda: self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
