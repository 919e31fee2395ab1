"""The run contract every stage function gets: inputs by URI, outputs published as artifacts, status in the store."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tqdm import tqdm

from zhllama.run.inputs import fetch_input, input_fingerprint
from zhllama.run.layout import run_key
from zhllama.run.process import Place
from zhllama.run.record import RunState, spec_record, transition
from zhllama.spec import StageSpec
from zhllama.store import ArtifactStore, open_store

T = TypeVar("T")


@dataclass
class RunContext:
    spec: StageSpec
    store: ArtifactStore
    workdir: Path
    place: Place = field(default_factory=Place)
    """Which process of the job this is: the one rank object (training adds its device, not another rank)."""
    _inputs: dict[str, Path] = field(default_factory=dict)
    _staged: set[str] = field(default_factory=set)
    _input_digests: dict[str, str] = field(default_factory=dict)

    @classmethod
    def create(cls, spec: StageSpec, workdir: Path | None = None) -> RunContext:
        base = workdir or Path(os.environ.get("ZHLLAMA_WORKDIR", Path.home() / ".cache" / "zhllama" / "work"))
        run_dir = base / spec.run_id
        run_dir.mkdir(parents=True, exist_ok=True)
        return cls(spec=spec, store=open_store(spec.store), workdir=run_dir, place=Place.from_env())

    @property
    def run_id(self) -> str:
        return self.spec.run_id

    @property
    def is_main(self) -> bool:
        return self.place.is_main

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

    def set_status(self, state: RunState, reason: str = "", message: str = "", **facts: Any) -> None:
        """The job's own transitions (rank 0 speaks for the job)."""
        if self.is_main:
            transition(self.store, self.run_id, state, by="job", reason=reason, message=message, **facts)
