"""S3 store (AWS, MinIO, Ceph): the only module that talks to boto3.

Endpoint, region and credentials come from the usual AWS environment variables and profiles
(AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_PROFILE, IRSA web identity, ...): nothing secret is ever
part of a spec. Custom endpoints get path-style addressing, which MinIO and Ceph expect.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from tqdm import tqdm

from zhllama.errors import ArtifactError
from zhllama.store.base import ArtifactStore, join_key

MULTIPART_BYTES = 16 * 1024 * 1024


class S3Store(ArtifactStore):
    def __init__(self, bucket: str, prefix: str = "") -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.root_uri = f"s3://{bucket}" + (f"/{self.prefix}" if self.prefix else "")
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        config = Config(
            retries={"max_attempts": 10, "mode": "adaptive"},
            s3={"addressing_style": "path" if endpoint else "auto"},
            connect_timeout=10,
            read_timeout=120,
        )
        self.client = boto3.session.Session().client("s3", endpoint_url=endpoint, config=config)
        self.transfer = TransferConfig(
            multipart_threshold=MULTIPART_BYTES, multipart_chunksize=MULTIPART_BYTES, max_concurrency=4
        )

    def _key(self, key: str) -> str:
        return join_key(self.prefix, key)

    def _progress(self, size: int, label: str, enabled: bool) -> Any:
        if not enabled or size < MULTIPART_BYTES:
            return None, None
        bar = tqdm(total=size, unit="B", unit_scale=True, desc=label, leave=False)
        return bar, bar.update

    def _put_file(self, local: Path, key: str, *, progress: bool = False) -> None:
        bar, callback = self._progress(local.stat().st_size, f"upload {Path(key).name}", progress)
        try:
            self.client.upload_file(str(local), self.bucket, self._key(key), Config=self.transfer, Callback=callback)
        except (BotoCoreError, ClientError) as err:
            raise ArtifactError(f"upload to {self.uri(key)} failed: {err}") from None
        finally:
            if bar is not None:
                bar.close()

    def _get_file(self, key: str, local: Path, *, progress: bool = False) -> None:
        try:
            size = self.client.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"]
        except ClientError as err:
            if _not_found(err):
                raise FileNotFoundError(self.uri(key)) from None
            raise ArtifactError(f"cannot read {self.uri(key)}: {err}") from None
        bar, callback = self._progress(size, f"download {Path(key).name}", progress)
        try:
            self.client.download_file(self.bucket, self._key(key), str(local), Config=self.transfer, Callback=callback)
        except (BotoCoreError, ClientError) as err:
            raise ArtifactError(f"download of {self.uri(key)} failed: {err}") from None
        finally:
            if bar is not None:
                bar.close()

    def read_bytes(self, key: str) -> bytes:
        try:
            body: bytes = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except ClientError as err:
            if _not_found(err):
                raise FileNotFoundError(self.uri(key)) from None
            raise ArtifactError(f"cannot read {self.uri(key)}: {err}") from None
        return body

    def write_bytes(self, key: str, data: bytes) -> None:
        # A single PUT replaces an S3 object atomically.
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        except (BotoCoreError, ClientError) as err:
            raise ArtifactError(f"cannot write {self.uri(key)}: {err}") from None

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as err:
            if _not_found(err):
                return bool(self.list_keys(key))
            raise ArtifactError(f"cannot read {self.uri(key)}: {err}") from None
        return True

    def _list(self, prefix: str) -> dict[str, str]:
        """Every key under `prefix/` with its version (size and ETag)."""
        full = self._key(prefix).rstrip("/") + "/" if prefix else (self.prefix + "/" if self.prefix else "")
        found: dict[str, str] = {}
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
                for item in page.get("Contents", []):
                    key = item["Key"][len(self.prefix) + 1 :] if self.prefix else item["Key"]
                    found[key] = f"{item['Size']}:{item.get('ETag', '').strip(chr(34))}"
        except ClientError as err:
            raise ArtifactError(f"cannot list {self.uri(prefix)}: {err}") from None
        return found

    def list_keys(self, prefix: str) -> list[str]:
        return sorted(self._list(prefix))

    def object_versions(self, key: str) -> dict[str, str]:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return {key: f"{head['ContentLength']}:{head.get('ETag', '').strip(chr(34))}"}
        except ClientError as err:
            if not _not_found(err):
                raise ArtifactError(f"cannot read {self.uri(key)}: {err}") from None
        return dict(sorted(self._list(key).items()))

    def list_dirs(self, prefix: str) -> list[str]:
        full = self._key(prefix).rstrip("/") + "/"
        names: list[str] = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full, Delimiter="/"
            )
            for page in pages:
                names.extend(p["Prefix"][len(full) :].rstrip("/") for p in page.get("CommonPrefixes", []))
        except ClientError as err:
            raise ArtifactError(f"cannot list {self.uri(prefix)}: {err}") from None
        return sorted(names)

    def delete_prefix(self, prefix: str) -> None:
        keys = self.list_keys(prefix)
        for start in range(0, len(keys), 1000):
            batch = [{"Key": self._key(k)} for k in keys[start : start + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})


def _not_found(err: ClientError) -> bool:
    return err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")
