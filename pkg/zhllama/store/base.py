"""The artifact store: a directory or an S3 bucket, seen through one small interface.

Backends implement a handful of object operations (`_put_file`, `_get_file`, ...). Everything about artifacts
(manifest last, verification on read, safe local paths, never writing through a link) is written once here on top
of them.
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
from zhllama.store.verify import check_hashes, check_sizes

COMPLETE_MARK = ".complete"


def safe_local_path(dest: Path, key: str) -> Path:
    """`dest/key`, refusing keys that would land outside `dest` (absolute, `..`, drive letters, backslashes).

    Used for reads and writes alike, so the messages say where the key points, not what was about to happen.
    """
    parts = _key_parts(key)
    root = dest.resolve()
    target = root.joinpath(*parts).resolve()
    if not target.is_relative_to(root):
        raise ArtifactError(f"{key!r} resolves outside the destination {root}")
    return target


def _key_parts(key: str) -> tuple[str, ...]:
    parts = PurePosixPath(key.replace("\\", "/")).parts
    if not parts or key.startswith("/") or any(p in ("..", "") or ":" in p for p in parts):
        raise ArtifactError(f"{key!r} points outside the destination directory")
    return parts


def refuse_links(dest: Path, key: str) -> None:
    """Refuse if `dest` or an existing entry on the way from it to `dest/key` is a symbolic link.

    A link planted in a pull's destination (`D/tokenizer/manifest.json -> /tmp/victim`) would otherwise have the
    write land wherever it points. `dest`'s own parents are the caller's choice and are not looked at.
    """
    parts = _key_parts(key)
    for path in (dest, *(dest.joinpath(*parts[: depth + 1]) for depth in range(len(parts)))):
        if path.is_symlink():
            raise UserError(f"{path} is a symbolic link; ctl pull does not write through links: remove it")


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

    @abstractmethod
    def _object_sizes(self, prefix: str) -> dict[str, int]:
        """Every object under `prefix/`, by its path relative to it, with its size: one listing, no reads."""

    @abstractmethod
    def _range_sha256(self, key: str, offset: int, length: int) -> str:
        """The sha256 of `length` bytes of the object `key` from `offset`, read (streamed) without a copy."""

    @abstractmethod
    def create_exclusive(self, key: str, data: bytes) -> bool:
        """Write the object `key` only if it does not exist: True when this call created it, False when it was
        already there. Of any number of concurrent callers exactly one gets True."""

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

    def fetch_file(self, key: str, rel: str, meta: dict[str, Any]) -> Path:
        """A verified local copy of one file `rel` of the artifact `key` (`meta`: its manifest entry), in the node
        cache by its sha256: a reader of a few shards of a big dataset downloads just those, once per node."""
        cached = local_cache_dir("files") / meta["sha256"]
        if not cached.exists():
            with node_lock(str(cached)):
                if not cached.exists():
                    staging = cached.with_name(f".fetch-{os.getpid()}-{cached.name}")
                    try:
                        self._get_file(join_key(key, rel), staging, progress=False)
                        check_file(staging, meta, self.uri(join_key(key, rel)))
                        os.replace(staging, cached)
                    finally:
                        staging.unlink(missing_ok=True)
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
        """Every file into a staging directory inside `dest`, checked, then each renamed into place, the manifest
        last. A rename replaces a link at the target instead of following it; links above it are refused first."""
        files: dict[str, dict[str, Any]] = manifest.get("files", {})
        for rel in (*files, MANIFEST):
            refuse_links(dest, rel)
        dest.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=dest))
        try:
            for rel, meta in files.items():
                target = safe_local_path(staging, rel)
                target.parent.mkdir(parents=True, exist_ok=True)
                self._get_file(join_key(key, rel), target, progress=progress)
                check_file(target, meta, self.uri(join_key(key, rel)))
            (staging / MANIFEST).write_bytes(manifest_bytes(manifest))
            for rel in (*files, MANIFEST):
                refuse_links(dest, rel)  # again, just before: the download took a while
                final = dest.joinpath(*_key_parts(rel))  # not resolved: a link there is replaced, not followed
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(safe_local_path(staging, rel), final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return dest

    def verify(self, key: str, *, full: bool = False) -> dict[str, Any]:
        """Check the artifact `key` where it lies; its manifest, or ArtifactError naming the first bad file.

        Cheap by default (store/verify.py): every size from one listing, then one or two random chunks of every
        file hashed by ranged reads. `full` hashes every byte of every file.
        """
        manifest = self.read_manifest(key)
        files: dict[str, dict[str, Any]] = manifest.get("files", {})

        def uri(rel: str) -> str:
            return self.uri(join_key(key, rel))

        check_sizes(files, self._object_sizes(key), uri)
        check_hashes(files, lambda rel, offset, length: self._range_sha256(join_key(key, rel), offset, length),
                     uri, full=full)
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
