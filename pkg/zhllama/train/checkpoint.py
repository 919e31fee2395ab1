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
- On resume every rank fetches only the shares it loads, into the node cache: each object once per pod, every
  byte checked against its manifest. A step some rank cannot use (corrupt, missing, unreadable) is skipped for
  the next older one, by every rank alike: a bad newest checkpoint costs the steps since the one before, never
  the run.
- Before training resumes, rank 0 removes steps newer than the one resumed (debris of the killed attempt, steps
  skipped as unusable; all of them on a fresh start), so a stale share can never complete a new step.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zhllama.errors import ArtifactError, UserError
from zhllama.models.once import wait_for
from zhllama.run import Place
from zhllama.store import ArtifactStore, join_key
from zhllama.train.distributed import barrier, from_every_rank, from_main
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

    def candidate_steps(self) -> list[int]:
        """Steps whose rank-0 manifest exists, newest first: the ones a resume tries, in that order."""
        return [step for step in reversed(self.steps()) if self.store.is_complete(self._key(step, 0))]

    def resume(self, engine: Engine, check: Callable[[TrainerState], None] = lambda state: None,
               ) -> tuple[TrainerState, Path] | None:
        """Load the newest step every rank can use: (its state, rank 0's share in the node cache); None for a
        fresh start. Rank 0 prints one line for each step skipped and one saying where training starts.

        A step is skipped when one of the shares some rank needs is corrupt, missing, incomplete or cannot be read
        by torch; `check` (and the world-size rule) raising is the user's error and stops the job instead. Every
        rank tries the same list (rank 0's) and they agree after each step, so all resume from the same one. The
        engine and RNG streams are touched only once the step is agreed: a skipped step leaves nothing behind.
        """
        steps: list[int] = from_main(self.candidate_steps() if self.place.is_main else None)
        skipped: list[str] = []
        for step in steps:
            problem, candidate = self._prepare(step, engine, check)
            problems = [p for p in from_every_rank(problem) if p is not None]
            if not problems:
                assert candidate is not None
                self._settle(step)
                self._say(f"resuming from step {step}")
                return self._apply(step, candidate, engine), candidate.shares[0]
            self._say(f"checkpoint step-{step} skipped: {problems[0]}")
            skipped.append(f"step {step}: {problems[0]}")
        self._settle(0)
        self._say("starting at step 0: " + (f"no valid checkpoint ({'; '.join(skipped)})" if skipped
                                            else "no checkpoint"))
        return None

    def _say(self, line: str) -> None:
        if self.place.is_main:
            print(line, flush=True)

    def _prepare(self, step: int, engine: Engine, check: Callable[[TrainerState], None],
                 ) -> tuple[str | None, Candidate | None]:
        """(None, the step's shares fetched and checked on this rank), or (why this rank cannot use it, None)."""
        try:
            return None, self._fetch(step, engine, check)
        except Unusable as err:
            return str(err), None

    def _fetch(self, step: int, engine: Engine, check: Callable[[TrainerState], None]) -> Candidate:
        main_share = self._fetch_share(step, 0)
        state = _state_in(main_share, self.store.uri(self._key(step, 0)))
        self.check_world_size(state, engine)
        check(state)
        own = self.place.rank if self.place.rank < state.world_size else None
        needed = set(engine.shares_to_load(self.place.rank, state.world_size)) | ({own} if own is not None else set())
        shares = {0: main_share, **{rank: self._fetch_share(step, rank) for rank in sorted(needed - {0})}}
        for rank, directory in shares.items():
            _check_loadable(directory, self.store.uri(self._key(step, rank)))
        # A rank the saved run did not have (DDP at a larger world size) gets fresh, reproducible streams.
        rng = torch.load(shares[own] / RNG_FILE, weights_only=False) if own is not None else None
        return Candidate(state, shares, rng)

    def _fetch_share(self, step: int, rank: int) -> Path:
        """The share in the node cache, every byte checked against its manifest; Unusable if it is not there whole."""
        key = self._key(step, rank)
        if not self.store.is_complete(key):
            raise Unusable(f"{self.store.uri(key)} has no manifest: the step was never completed")
        try:
            return self.store.fetch_dir(key, progress=False)
        except ArtifactError as err:
            # The store's advice ("re-run its stage") is what skipping the step does: the line keeps the facts.
            raise Unusable(str(err).split("; re-run", 1)[0]) from None
        except FileNotFoundError as err:
            raise Unusable(f"{self.store.uri(key)}: a file its manifest lists is missing ({err})") from None

    def _settle(self, step: int) -> None:
        """Rank 0 removes the steps newer than `step` (the killed attempt's debris, and every step just skipped);
        the barrier holds the other ranks until it is done, so no new share of those numbers is written before."""
        if self.place.is_main:
            self._discard_after(step)
        barrier()

    def _apply(self, step: int, candidate: Candidate, engine: Engine) -> TrainerState:
        engine.load(candidate.shares, self.scratch / f"load-step-{step}-rank-{self.place.rank}")
        if candidate.rng is not None:
            restore_rng(candidate.rng)
        else:
            torch.manual_seed(1_000_003 * step + self.place.rank)
        return candidate.state

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

    def _discard_after(self, step: int) -> None:
        for newer in self.steps():
            if newer > step:
                self.store.delete_prefix(join_key(self.prefix, f"step-{newer}"))


@dataclass(frozen=True)
class Candidate:
    """A checkpoint step as this rank would resume it: its shares fetched, verified and readable by torch."""

    state: TrainerState
    shares: dict[int, Path]
    """The shares this rank loads (rank 0's always), by rank, in the node cache."""
    rng: dict[str, Any] | None
    """This rank's saved RNG streams; None for a rank the saved run did not have."""


class Unusable(Exception):
    """Why a checkpoint step cannot be resumed on this rank (one line naming the file)."""


def _state_in(share: Path, uri: str) -> TrainerState:
    try:
        return TrainerState(**json.loads((share / STATE_FILE).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError) as err:
        raise Unusable(f"{uri}/{STATE_FILE} cannot be read ({type(err).__name__}: {err})") from None


def _check_loadable(share: Path, uri: str) -> None:
    """Every torch file of the share opens (mapped, not read into memory): a file written broken before its
    upload matches its manifest, and would otherwise fail inside engine.load, after the step was agreed."""
    for path in sorted(share.rglob("*.pt")):
        try:
            torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        except (MemoryError, torch.OutOfMemoryError):
            raise  # the machine's limit, not the file's fault: skipping would discard a good step
        except Exception as err:  # noqa: BLE001 - whatever torch raises on a broken file says why
            first = str(err).strip().split("\n", 1)[0]
            raise Unusable(f"{uri}/{path.relative_to(share)} cannot be loaded by torch "
                           f"({type(err).__name__}: {first})") from None
