"""The run contract every stage function gets: inputs by URI, outputs published as artifacts, status in the store.

Layout of a run in the store:
  runs/<id>/spec.json            the resolved spec (no secrets)
  runs/<id>/status.json          state, timestamps, the one-line reason of a failure
  runs/<id>/logs/                job logs
  runs/<id>/outputs/<name>/      artifacts (complete when manifest.json exists)
  runs/<id>/checkpoints/step-N/  training checkpoints (artifacts too)
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import shutil
import socket
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tqdm import tqdm

from zhllama.errors import ArtifactError, UserError
from zhllama.spec import StageSpec, spec_from_json
from zhllama.store import MANIFEST, ArtifactStore, DirStore, join_key, locate, open_store

T = TypeVar("T")


def run_key(run_id: str, *parts: str) -> str:
    return join_key("runs", run_id, *parts)


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def spec_record(spec: StageSpec) -> dict[str, Any]:
    return spec.model_dump(mode="json")


@dataclass
class RunContext:
    spec: StageSpec
    store: ArtifactStore
    workdir: Path
    rank: int = 0
    world_size: int = 1
    _inputs: dict[str, Path] = field(default_factory=dict)
    _staged: set[str] = field(default_factory=set)
    _input_digests: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(cls, spec: StageSpec, workdir: Path | None = None) -> RunContext:
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        base = workdir or Path(os.environ.get("ZHLLAMA_WORKDIR", Path.home() / ".cache" / "zhllama" / "work"))
        run_dir = base / spec.run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        return cls(spec=spec, store=open_store(spec.store), workdir=run_dir, rank=rank, world_size=world)

    @property
    def run_id(self) -> str:
        return self.spec.run_id

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def key(self, *parts: str) -> str:
        return run_key(self.run_id, *parts)

    def input(self, uri: str) -> Path:
        """A verified local path for an input URI (a file or a directory)."""
        if uri not in self._inputs:
            self._inputs[uri], digest = fetch_input(uri, self.store)
            if digest is not None:
                self._input_digests[uri] = digest
        return self._inputs[uri]

    def fingerprint(self, uri: str) -> str:
        """The input's content identity without downloading it (see input_fingerprint)."""
        return input_fingerprint(uri, self.store)

    def output_dir(self, name: str) -> Path:
        """The local staging directory of output `name`, emptied on first use (a failed attempt leaves files)."""
        path = self.workdir / "outputs" / name
        if name not in self._staged:
            shutil.rmtree(path, ignore_errors=True)
            self._staged.add(name)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def output_complete(self, name: str) -> bool:
        return self.store.is_complete(self.key("outputs", name))

    def publish(self, name: str, extra: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Upload output `name` as an artifact (rank 0 only); the manifest goes last."""
        if not self.is_main:
            return None
        return self.store.publish_dir(
            self.output_dir(name),
            self.key("outputs", name),
            spec=spec_record(self.spec),
            inputs=self.spec.input_uris(),
            extra={"input_manifests": dict(self._input_digests), **(extra or {})},
        )

    def progress(self, iterable: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
        yield from tqdm(iterable, desc=desc, total=total, disable=not self.is_main, dynamic_ncols=True)

    def set_status(self, state: str, **fields: Any) -> None:
        if not self.is_main:
            return
        try:
            status = self.store.read_json(self.key("status.json"))
        except FileNotFoundError:
            status = {}
        status.update({"run_id": self.run_id, "stage": self.spec.stage, "state": state, "updated": now(), **fields})
        self.store.write_json(self.key("status.json"), status)


def fetch_input(uri: str, run_store: ArtifactStore) -> tuple[Path, str | None]:
    """Resolve an input URI to a local path, and the sha256 of its artifact's manifest (None for plain files).

    Artifacts are verified against their manifest; plain files are used as they are. Remote inputs land in the
    node cache, once per node whatever the number of processes asking.
    """
    store, key = locate(uri, run_store)
    artifact, inside = enclosing_artifact(store, key)
    if artifact is not None:
        digest = manifest_digest(store, artifact)
        root = store.fetch_dir(artifact)
        return (root / inside if inside else root), digest
    if uri.startswith("run://") or "/outputs/" in f"/{key}/":
        raise ArtifactError(f"{uri} is incomplete or missing: no manifest.json; run the stage that writes it first")
    if isinstance(store, DirStore):
        path = store.path(key)
        if not path.exists():
            raise UserError(f"input {uri} does not exist; check the path")
        return path, None
    return store.fetch_objects(key), None


def manifest_digest(store: ArtifactStore, artifact: str) -> str:
    return hashlib.sha256(store.read_bytes(join_key(artifact, MANIFEST))).hexdigest()


def input_digest(uri: str, run_store: ArtifactStore) -> str | None:
    """sha256 of the manifest of the artifact an input URI points into; None for plain files."""
    store, key = locate(uri, run_store)
    artifact, _ = enclosing_artifact(store, key)
    if artifact is None:
        return None
    return manifest_digest(store, artifact)


def input_fingerprint(uri: str, run_store: ArtifactStore) -> str:
    """What an input holds, known without downloading it: its artifact's manifest digest and the path inside,
    or its plain objects' sizes and versions (ETag, or mtime on disk). Cache keys are built from these, so no
    process re-hashes a 100 GB corpus to find out that it has not changed."""
    store, key = locate(uri, run_store)
    artifact, inside = enclosing_artifact(store, key)
    if artifact is not None:
        return f"{manifest_digest(store, artifact)}/{inside}"
    versions = store.object_versions(key)
    if not versions:
        raise UserError(f"input {uri} does not exist; check the path, or the bucket and key")
    return hashlib.sha256(json.dumps(sorted(versions.items())).encode()).hexdigest()


def changed_inputs(store: ArtifactStore, run_id: str, outputs: tuple[str, ...]) -> list[str]:
    """Inputs whose artifact changed since the run's outputs were made from them (a re-run upstream step)."""
    changed: list[str] = []
    for name in outputs:
        recorded = store.read_manifest(run_key(run_id, "outputs", name)).get("input_manifests", {})
        for uri, digest in recorded.items():
            try:
                current = input_digest(uri, store)
            except UserError:
                current = None
            if current != digest and uri not in changed:
                changed.append(uri)
    return changed


def enclosing_artifact(store: ArtifactStore, key: str) -> tuple[str | None, str]:
    """The artifact that holds `key` (itself or an ancestor with a manifest) and the path inside it."""
    parts = key.split("/") if key else []
    for end in range(len(parts), 0, -1):
        candidate = "/".join(parts[:end])
        if store.is_complete(candidate):
            return candidate, "/".join(parts[end:])
    return None, ""


def job_main(stage: str, run_stage: Callable[[RunContext], None], argv: list[str] | None = None) -> None:
    """The body of every jobs/<stage>.py: read the spec, skip if already done, run, record the outcome."""
    parser = argparse.ArgumentParser(prog=f"jobs/{stage}.py", description=f"Run the {stage} stage from a spec.")
    parser.add_argument("--spec", required=True, help="path to the resolved spec.json")
    parser.add_argument("--workdir", type=Path, default=None, help="local scratch directory")
    args = parser.parse_args(argv)
    try:
        spec = spec_from_json(json.loads(Path(args.spec).read_text(encoding="utf-8")))
    except (OSError, json.JSONDecodeError) as err:
        print(f"error: cannot read spec {args.spec}: {err}", file=sys.stderr)
        sys.exit(2)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    if spec.stage != stage and not (stage == "train" and spec.stage in ("pretrain", "sft")):
        print(f"error: {args.spec} is a {spec.stage} spec, not {stage}", file=sys.stderr)
        sys.exit(2)
    ctx = RunContext.create(spec, args.workdir)
    try:
        if outputs_done(ctx):
            print(f"{spec.run_id}: outputs already complete for this spec; nothing to do", flush=True)
            ctx.set_status("Succeeded", reused=True, finished=now())
            return
        ctx.set_status("Running", started=now(), host=socket.gethostname(), pid=os.getpid())
        run_stage(ctx)
        ctx.set_status("Succeeded", finished=now())
    except UserError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        ctx.set_status("Failed", reason="InvalidInput", message=str(err).splitlines()[0], finished=now())
        sys.exit(2)
    except Exception as err:
        traceback.print_exc()
        ctx.set_status("Failed", reason=type(err).__name__, message=str(err)[:500], finished=now())
        sys.exit(1)


def outputs_done(ctx: RunContext) -> bool:
    """True when every output is complete and was made by this same spec (a different spec is an error)."""
    names = type(ctx.spec).outputs
    if not names or not all(ctx.output_complete(n) for n in names):
        return False
    for name in names:
        made_by = ctx.store.read_manifest(ctx.key("outputs", name)).get("spec", {})
        if made_by != spec_record(ctx.spec):
            raise UserError(
                f"run {ctx.run_id} already has a complete {name!r} output made by a different spec; "
                "use a new --run-id, or delete the run first"
            )
    changed = changed_inputs(ctx.store, ctx.run_id, names)
    if changed:
        print(f"{ctx.run_id}: inputs changed since the outputs were made ({', '.join(changed)}); running again")
        return False
    return True


def pull_run(store: ArtifactStore, run_id: str, dest: Path) -> list[Path]:
    """Download every complete output of a run into dest/<name>/, verified; never writes outside `dest`."""
    names = store.list_dirs(run_key(run_id, "outputs"))
    complete = [n for n in names if store.is_complete(run_key(run_id, "outputs", n))]
    if not complete:
        raise UserError(f"run {run_id!r} has no complete outputs in {store.root_uri}")
    from zhllama.store import safe_local_path

    return [store.fetch_dir(run_key(run_id, "outputs", n), safe_local_path(dest, n)) for n in complete]
