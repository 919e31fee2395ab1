"""Checkpoints in the store, so a killed job continues exactly where it stopped.

Layout: <prefix>/step-<n>/rank-<r>/ is one artifact per rank (its engine share and its RNG states). Rank 0
publishes its part last, after every other rank has published, and its trainer_state.json names the world size:
a step is complete when rank-0 and every rank it names have a manifest. Only the newest `keep` are kept.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zhllama.store import ArtifactStore, join_key
from zhllama.train.distributed import DistEnv, barrier
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

    def __init__(self, store: ArtifactStore, prefix: str, env: DistEnv, scratch: Path, keep: int) -> None:
        self.store = store
        self.prefix = prefix
        self.env = env
        self.scratch = scratch
        self.keep = keep

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

    def save(self, step: int, state: TrainerState, engine: Engine, extra_main: Path | None = None) -> None:
        """Every rank writes and publishes its share; rank 0 publishes last, then prunes old checkpoints."""
        local = self.scratch / f"save-rank-{self.env.rank}"
        shutil.rmtree(local, ignore_errors=True)
        local.mkdir(parents=True)
        engine.save(local)
        torch.save(rng_state(), local / RNG_FILE)
        if self.env.is_main:
            (local / STATE_FILE).write_text(json.dumps(asdict(state), indent=2) + "\n", encoding="utf-8")
            if extra_main is not None:
                shutil.copytree(extra_main, local / extra_main.name)
        barrier(self.env)  # DeepSpeed's save is collective; every share exists before anyone publishes
        if not self.env.is_main:
            self.store.publish_dir(local, self._key(step, self.env.rank), progress=False)
        barrier(self.env)
        if self.env.is_main:
            self.store.publish_dir(local, self._key(step, 0), extra={"checkpoint_step": step}, progress=False)
            self._prune(step)
        barrier(self.env)
        shutil.rmtree(local, ignore_errors=True)

    def _prune(self, newest: int) -> None:
        complete = [s for s in self.steps() if s <= newest and self.is_complete(s)]
        keep = set(complete[-self.keep :])
        for step in self.steps():
            if step < newest and step not in keep:
                self.store.delete_prefix(join_key(self.prefix, f"step-{step}"))

    def read_state(self, step: int) -> TrainerState:
        return TrainerState(**self.store.read_json(join_key(self._key(step, 0), STATE_FILE)))

    def load(self, step: int, engine: Engine) -> tuple[TrainerState, Path]:
        """Restore the engine (from every rank's share) and this rank's RNG states; also rank 0's local share."""
        state = self.read_state(step)
        local = self.scratch / f"load-step-{step}-rank-{self.env.rank}"
        shutil.rmtree(local, ignore_errors=True)
        shares = [
            self.store.fetch_dir(self._key(step, rank), local / f"rank-{rank}", progress=False)
            for rank in range(state.world_size)
        ]
        engine.load(shares)
        own = shares[self.env.rank] if self.env.rank < len(shares) else shares[0]
        restore_rng(torch.load(own / RNG_FILE, weights_only=False))
        return state, shares[0]
