"""The artifact store: a directory or an S3 bucket, seen through one small interface.

Backends implement a handful of object operations (`_put_file`, `_get_file`, ...). Everything about artifacts
(manifest last, verification on read, safe local paths) is written once here on top of them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from zhllama.errors import ArtifactError, UserError
from zhllama.store.manifest import MANIFEST, build_manifest, list_files, manifest_bytes, sha256_file
from zhllama.store.node_cache import local_cache_dir, node_lock

COMPLETE_MARK = ".complete"


def safe_local_path(dest: Path, key: str) -> Path:
    """`dest/key`, refusing keys that would land outside `dest` (absolute, `..`, drive letters, backslashes)."""
    parts = PurePosixPath(key.replace("\\", "/")).parts
    if not parts or key.startswith("/") or any(p in ("..", "") or ":" in p for p in parts):
        raise ArtifactError(f"refusing to write {key!r}: the key points outside the destination directory")
    root = dest.resolve()
    target = root.joinpath(*parts).resolve()
    if not target.is_relative_to(root):
        raise ArtifactError(f"refusing to write {key!r}: it resolves outside {root}")
    return target


def join_key(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


class ArtifactStore(ABC):
    """Files under keys (POSIX-style paths relative to the store root)."""

    root_uri: str

    # --- object operations each backend provides -------------------------------------------------------------
    @abstractmethod
    def _put_file(self, local: Path, key: str, *, progress: bool = False) -> None: ...

    @abstractmethod
    def _get_file(self, key: str, local: Path, *, progress: bool = False) -> None: ...

    @abstractmethod
    def read_bytes(self, key: str) -> bytes:
        """The object's bytes; FileNotFoundError if absent."""

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None:
        """Replace the object atomically (readers see the old or the new bytes, never a mix)."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list_keys(self, prefix: str) -> list[str]:
        """Every key under `prefix/`, sorted."""

    @abstractmethod
    def list_dirs(self, prefix: str) -> list[str]:
        """Names of the immediate sub-prefixes of `prefix/` (like `ls`), sorted."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> None: ...

    @abstractmethod
    def object_versions(self, key: str) -> dict[str, str]:
        """The object `key`, or every object under `key/`, each with a version ("size:etag" or "size:mtime")."""

    def uri(self, key: str) -> str:
        return f"{self.root_uri.rstrip('/')}/{key}"

    # --- small JSON documents (status, pipeline state) -------------------------------------------------------
    def read_json(self, key: str) -> Any:
        return json.loads(self.read_bytes(key))

    def write_json(self, key: str, value: Any) -> None:
        self.write_bytes(key, (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode())

    # --- artifacts -------------------------------------------------------------------------------------------
    def is_complete(self, key: str) -> bool:
        return self.exists(join_key(key, MANIFEST))

    def read_manifest(self, key: str) -> dict[str, Any]:
        try:
            manifest: dict[str, Any] = json.loads(self.read_bytes(join_key(key, MANIFEST)))
        except FileNotFoundError:
            raise ArtifactError(
                f"{self.uri(key)} is incomplete: it has no {MANIFEST}, so the stage that writes it did not "
                "finish; re-run that stage"
            ) from None
        except json.JSONDecodeError as err:
            raise ArtifactError(f"{self.uri(join_key(key, MANIFEST))} is not valid JSON ({err})") from None
        return manifest

    def publish_dir(
        self,
        local_dir: Path,
        key: str,
        *,
        spec: dict[str, Any] | None = None,
        inputs: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
        progress: bool = True,
        before_manifest: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """Upload `local_dir` as the artifact `key`: stale objects removed, files first, the manifest last.

        `before_manifest` runs after the files are up and before the manifest makes the artifact complete (a
        checkpoint's rank 0 waits there for the other ranks' shares).
        """
        manifest = build_manifest(local_dir, spec=spec, inputs=inputs, extra=extra)
        self.delete_prefix(key)
        for rel in manifest["files"]:
            self._put_file(local_dir / rel, join_key(key, rel), progress=progress)
        if before_manifest is not None:
            before_manifest()
        self.write_bytes(join_key(key, MANIFEST), manifest_bytes(manifest))
        return manifest

    def fetch_dir(self, key: str, dest: Path | None = None, *, progress: bool = True) -> Path:
        """A verified local copy of the artifact `key`: in `dest`, or in the node cache (keyed by the manifest's
        digest, downloaded once per node whatever the number of processes asking)."""
        manifest = self.read_manifest(key)
        if dest is not None:
            return self._download(key, manifest, dest, progress)
        cached = local_cache_dir() / sha256_bytes(manifest_bytes(manifest))
        if not (cached / MANIFEST).exists():
            with node_lock(str(cached)):
                if not (cached / MANIFEST).exists():
                    self._download(key, manifest, cached, progress)
        return cached

    def fetch_objects(self, key: str) -> Path:
        """A local copy of plain objects (no manifest): the object `key`, or the directory of those under it.

        Cached per node by the objects' versions, so a changed object is fetched again and an unchanged one once.
        """
        versions = self.object_versions(key)
        if not versions:
            raise UserError(f"input {self.uri(key)} does not exist; check the bucket and key")
        single = list(versions) == [key]
        digest = hashlib.sha256(json.dumps([self.uri(key), sorted(versions.items())]).encode()).hexdigest()
        cached = local_cache_dir("objects") / digest[:32]
        if not (cached / COMPLETE_MARK).exists():
            with node_lock(str(cached)):
                if not (cached / COMPLETE_MARK).exists():
                    self._download_objects(key, list(versions), cached)
        return cached / Path(key).name if single else cached

    def _download_objects(self, key: str, keys: list[str], dest: Path) -> None:
        shutil.rmtree(dest, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=dest.parent))
        try:
            for object_key in keys:
                relative = object_key[len(key) :].lstrip("/") or Path(key).name
                target = safe_local_path(staging, relative)
                target.parent.mkdir(parents=True, exist_ok=True)
                self._get_file(object_key, target, progress=True)
            (staging / COMPLETE_MARK).touch()
            os.replace(staging, dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _download(self, key: str, manifest: dict[str, Any], dest: Path, progress: bool) -> Path:
        files: dict[str, dict[str, Any]] = manifest.get("files", {})
        dest.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=dest))
        try:
            for rel, meta in files.items():
                target = safe_local_path(staging, rel)
                target.parent.mkdir(parents=True, exist_ok=True)
                self._get_file(join_key(key, rel), target, progress=progress)
                check_file(target, meta, self.uri(join_key(key, rel)))
            for rel in files:
                final = safe_local_path(dest, rel)
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(safe_local_path(staging, rel), final)
            (dest / MANIFEST).write_bytes(manifest_bytes(manifest))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return dest

    def verify(self, key: str) -> dict[str, Any]:
        """Check an artifact in place (the directory store reads files without copying them)."""
        manifest = self.read_manifest(key)
        for rel, meta in manifest.get("files", {}).items():
            with tempfile.TemporaryDirectory() as tmp:
                local = Path(tmp) / "f"
                self._get_file(join_key(key, rel), local)
                check_file(local, meta, self.uri(join_key(key, rel)))
        return manifest


def check_file(path: Path, meta: dict[str, Any], uri: str) -> None:
    if not path.exists():
        raise ArtifactError(f"{uri} is listed in the manifest but missing; re-run the stage that wrote it")
    size = path.stat().st_size
    if size != meta["size"]:
        raise ArtifactError(f"{uri} is corrupt: {size} bytes, the manifest says {meta['size']}; re-run its stage")
    if sha256_file(path) != meta["sha256"]:
        raise ArtifactError(f"{uri} is corrupt: its sha256 differs from the manifest; re-run its stage")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


__all__ = ["ArtifactStore", "check_file", "join_key", "list_files", "safe_local_path"]
