"""Checkpoints in the store, so a killed job continues exactly where it stopped.

Layout: <prefix>/step-<n>/rank-<r>/ is one artifact per rank. It holds what only that rank has: its RNG states,
and its engine share (DDP: rank 0 alone writes the trained weights and optimizer, every other rank holds the
same; ZeRO: each rank its own partition). Rank 0 publishes its manifest last, after every other rank's share
is complete, and its trainer_state.json names the world size: a step is complete when rank-0 and every rank
it names have a manifest. Only the newest `keep` are kept.

Ordering rules:
- A save writes locally (DeepSpeed's save is collective, and bounded by local disk speed), then uploads in a
  background thread while training goes on: no rank waits in a collective for an upload. The next save, and
  the end of training, wait for the previous upload first.
- On resume every rank fetches only the shares it loads, into the node cache: each object once per pod.
- Before training resumes, rank 0 removes steps newer than the one resumed (debris of the killed attempt), so a
  stale share can never complete a new step.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zhllama.errors import UserError
from zhllama.models.once import wait_for
from zhllama.run import Place
from zhllama.store import ArtifactStore, join_key
from zhllama.train.engine import Engine

STATE_FILE = "trainer_state.json"
RNG_FILE = "rng.pt"
STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass(frozen=True)
class TrainerState:
    step: int
    """Optimizer steps done."""
    samples: int
    """Global sample position of the next batch."""
    world_size: int
    vocab_rows: int
    tokenizer_size: int
    zero_stage: int


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),
                             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class Checkpoints:
    """The checkpoints of one run under `prefix` (runs/<id>/checkpoints) in the store."""

    def __init__(self, store: ArtifactStore, prefix: str, place: Place, scratch: Path, keep: int,
                 timeout_s: float) -> None:
        self.store = store
        self.prefix = prefix
        self.place = place
        self.scratch = scratch
        self.keep = keep
        self.timeout_s = timeout_s
        self._upload: threading.Thread | None = None
        self._upload_error: BaseException | None = None

    def _key(self, step: int, rank: int) -> str:
        return join_key(self.prefix, f"step-{step}", f"rank-{rank}")

    def steps(self) -> list[int]:
        """Steps with a checkpoint directory in the store (complete or not), oldest first."""
        found = (STEP_DIR.match(name) for name in self.store.list_dirs(self.prefix))
        return sorted(int(m.group(1)) for m in found if m)

    def is_complete(self, step: int) -> bool:
        if not self.store.is_complete(self._key(step, 0)):
            return False
        state = self.store.read_json(join_key(self._key(step, 0), STATE_FILE))
        return all(self.store.is_complete(self._key(step, r)) for r in range(state["world_size"]))

    def latest(self) -> int | None:
        complete = [s for s in self.steps() if self.is_complete(s)]
        return complete[-1] if complete else None

    # -- saving ----------------------------------------------------------------------------------------------

    def save(self, step: int, state: TrainerState, engine: Engine, extra_main: Path | None = None) -> None:
        """Write this rank's share locally, then upload it in the background (rank 0's manifest last)."""
        self.wait()
        local = self.scratch / f"save-step-{step}-rank-{self.place.rank}"
        shutil.rmtree(local, ignore_errors=True)
        local.mkdir(parents=True)
        engine.save(local)
        torch.save(rng_state(), local / RNG_FILE)
        if self.place.is_main:
            (local / STATE_FILE).write_text(json.dumps(asdict(state), indent=2) + "\n", encoding="utf-8")
            if extra_main is not None:
                shutil.copytree(extra_main, local / extra_main.name)
        self._upload = threading.Thread(target=self._publish, args=(step, local), name=f"upload-step-{step}",
                                        daemon=True)
        self._upload.start()

    def _publish(self, step: int, local: Path) -> None:
        try:
            if not self.place.is_main:
                self.store.publish_dir(local, self._key(step, self.place.rank), progress=False)
                return
            others = [self._key(step, r) for r in range(1, self.place.world_size)]
            self.store.publish_dir(
                local, self._key(step, 0), extra={"checkpoint_step": step}, progress=False,
                before_manifest=lambda: wait_for(lambda: all(self.store.is_complete(k) for k in others),
                                                 f"the other ranks' shares of checkpoint step-{step}",
                                                 self.timeout_s),
            )
            self._prune(step)
        except BaseException as err:  # re-raised in the training thread by wait()
            self._upload_error = err
        finally:
            shutil.rmtree(local, ignore_errors=True)

    def wait(self) -> None:
        """Block until the running upload is done; raise its error, if any."""
        if self._upload is not None:
            self._upload.join()
            self._upload = None
        if self._upload_error is not None:
            error, self._upload_error = self._upload_error, None
            raise error

    def _prune(self, newest: int) -> None:
        complete = [s for s in self.steps() if s <= newest and self.is_complete(s)]
        keep = set(complete[-self.keep :])
        for step in self.steps():
            if step < newest and step not in keep:
                self.store.delete_prefix(join_key(self.prefix, f"step-{step}"))

    # -- resuming --------------------------------------------------------------------------------------------

    def read_state(self, step: int) -> TrainerState:
        return TrainerState(**self.store.read_json(join_key(self._key(step, 0), STATE_FILE)))

    def check_world_size(self, state: TrainerState, engine: Engine) -> None:
        """Partitioned state resumes only at the world size that wrote it: refused before training starts."""
        if state.world_size != self.place.world_size and engine.partitioned:
            raise UserError(
                f"checkpoint step-{state.step} holds ZeRO-{state.zero_stage} partitions of {state.world_size} "
                f"ranks but this run has {self.place.world_size}: resume with {state.world_size} ranks "
                "(resources.nodes x nproc_per_node), or use a new run id to start over"
            )
        if state.world_size != self.place.world_size and self.place.is_main:
            print(f"resuming step-{state.step} of {state.world_size} ranks on {self.place.world_size}: the global "
                  "batch changes with the world size", flush=True)

    def load(self, step: int, engine: Engine) -> tuple[TrainerState, Path]:
        """Restore the engine and this rank's RNG states; returns the state and rank 0's share (node cache)."""
        state = self.read_state(step)
        self.check_world_size(state, engine)
        own = self.place.rank if self.place.rank < state.world_size else None
        needed = sorted(set(engine.shares_to_load(self.place.rank, state.world_size)) | {0} | (
            {own} if own is not None else set()))
        shares = {rank: self.store.fetch_dir(self._key(step, rank), progress=False) for rank in needed}
        engine.load(shares, self.scratch / f"load-step-{step}-rank-{self.place.rank}")
        if own is not None:
            restore_rng(torch.load(shares[own] / RNG_FILE, weights_only=False))
        else:  # a rank the saved run did not have (DDP at a larger world size): fresh, reproducible streams
            torch.manual_seed(1_000_003 * step + self.place.rank)
        if self.place.is_main:
            self._discard_after(step)
        return state, shares[0]

    def _discard_after(self, step: int) -> None:
        for newer in self.steps():
            if newer > step:
                self.store.delete_prefix(join_key(self.prefix, f"step-{newer}"))
