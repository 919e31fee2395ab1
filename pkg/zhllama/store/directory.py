"""The embedded default store: a directory (`file:///path`, default ./artifacts)."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zhllama.store.base import ArtifactStore, check_file, join_key, safe_local_path
from zhllama.store.manifest import MANIFEST, build_manifest, manifest_bytes

_BLOCK = 1 << 20


class DirStore(ArtifactStore):
    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.root_uri = f"file://{self.root}"

    def path(self, key: str) -> Path:
        return safe_local_path(self.root, key) if key else self.root

    def _put_file(self, local: Path, key: str, *, progress: bool = False) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        shutil.copyfile(local, tmp)
        os.replace(tmp, target)

    def _get_file(self, key: str, local: Path, *, progress: bool = False) -> None:
        source = self.path(key)
        if not source.is_file():
            raise FileNotFoundError(str(source))
        shutil.copyfile(source, local)

    def read_bytes(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def write_bytes(self, key: str, data: bytes) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, target)

    def create_exclusive(self, key: str, data: bytes) -> bool:
        """A complete temporary file, then link(2) to the key: the link is atomic and fails if the name exists, so
        one caller wins and no reader ever sees the object half written."""
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            try:
                os.link(tmp, target)
            except FileExistsError:
                return False
            return True
        finally:
            os.unlink(tmp)

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def _object_sizes(self, prefix: str) -> dict[str, int]:
        base = self.path(prefix)
        if not base.is_dir():
            return {}
        return {p.relative_to(base).as_posix(): p.stat().st_size for p in base.rglob("*") if p.is_file()}

    def _range_sha256(self, key: str, offset: int, length: int) -> str:
        digest = hashlib.sha256()
        with open(self.path(key), "rb") as handle:
            handle.seek(offset)
            while length > 0 and (block := handle.read(min(_BLOCK, length))):
                digest.update(block)
                length -= len(block)
        return digest.hexdigest()

    def list_keys(self, prefix: str) -> list[str]:
        base = self.path(prefix)
        if not base.is_dir():
            return []
        return sorted(join_key(prefix, p.relative_to(base).as_posix()) for p in base.rglob("*") if p.is_file())

    def list_dirs(self, prefix: str) -> list[str]:
        base = self.path(prefix)
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))

    def object_versions(self, key: str) -> dict[str, str]:
        path = self.path(key)
        if path.is_file():
            return {key: _version(path)}
        return {k: _version(self.path(k)) for k in self.list_keys(key)}

    def delete_prefix(self, prefix: str) -> None:
        target = self.path(prefix)
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()

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
        """Copy into a hidden sibling, write the manifest, then rename into place: readers never see a half."""
        manifest = build_manifest(local_dir, spec=spec, inputs=inputs, extra=extra)
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
        try:
            for rel in manifest["files"]:
                dest = safe_local_path(staging, rel)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(local_dir / rel, dest)
            if before_manifest is not None:
                before_manifest()
            (staging / MANIFEST).write_bytes(manifest_bytes(manifest))
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return manifest

    def fetch_dir(self, key: str, dest: Path | None = None, *, progress: bool = True) -> Path:
        """Verify in place and return the directory itself: a local store needs no copy."""
        if dest is not None:
            return super().fetch_dir(key, dest, progress=progress)
        manifest = self.read_manifest(key)
        for rel, meta in manifest.get("files", {}).items():
            check_file(self.path(join_key(key, rel)), meta, self.uri(join_key(key, rel)))
        return self.path(key)


    def fetch_file(self, key: str, rel: str, meta: dict[str, Any]) -> Path:
        """The file itself, its size checked (a local store needs no copy; fetch_dir checks every byte)."""
        path = self.path(join_key(key, rel))
        if not path.is_file() or path.stat().st_size != meta["size"]:
            check_file(path, meta, self.uri(join_key(key, rel)))
        return path


def _version(path: Path) -> str:
    stat = path.stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"
