"""Kill anywhere: the tiny pretrain stage through the local backend on an S3 store, SIGKILLed (its whole process
tree, as a power cut would) at 10 random points, each in another attempt; every re-run starts on another machine
(its own state directory, scratch and node cache) once the killed attempt's lease has run out. The last attempt
is left to finish: the run must be Succeeded, every artifact whole, every step logged once.

The points are drawn from a seeded random.Random: the seed is printed and named in every assertion message, and
ZHLLAMA_KILL_SEED=<seed> replays the same plan. Where a point lands (which step, which object of an upload) is
timing and is printed as observed. Kinds of point:
  startup  a random delay after the submit (at most until the job's resume line): imports, inputs, the
           tokenized corpus, the resume itself
  step     a random step of training after the attempt's resume point
  upload   during a checkpoint's upload to S3: after a random number of its objects are up, before its manifest
           (from the server's own -vv log; the store listing afterwards confirms the manifest is absent)
  publish  during the final publish of the metrics and the adapter (also where an upload or step point has
           nothing left to hit after its attempt's resume point)
"""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from tests.e2e.s3_servers import BUCKET, S3Server, aws_env
from zhllama.backends.local import LocalBackend
from zhllama.run import read_record
from zhllama.spec import StageSpec, TrainSpec, resolve_spec
from zhllama.store import ArtifactStore, open_store

pytestmark = pytest.mark.slow

SEED_ENV = "ZHLLAMA_KILL_SEED"
DEFAULT_SEED = 1414
KILLS = 10
MAX_STEPS = 40
CHECKPOINT_EVERY = 4
RUN_ID = "anywhere"
STORE_PREFIX = "kill-anywhere"
RUN_PREFIX = f"{STORE_PREFIX}/runs/{RUN_ID}"
# A killed start-up (no beat yet) is Lost after lease + grace: short here, so the ten kills fit in minutes.
LEASE = {"ZHLLAMA_HEARTBEAT_S": "0.3", "ZHLLAMA_LEASE_S": "3", "ZHLLAMA_START_GRACE_S": "8"}
"""A killed attempt is seen Lost within seconds, not minutes."""
TRAINED = re.compile(r"^training:.*?\| *(\d+)/\d+ ")
START = re.compile(r"^(?:resuming from step (\d+)|starting at step 0: .*)$")
MOVED = re.compile(r"Moved \(server-side\) to: " + re.escape(f"{BUCKET}/{RUN_PREFIX}/") + r"(\S+)")
CREATED = re.compile(r"CREATE OBJECT: " + re.escape(f"{BUCKET} {RUN_PREFIX}/") + r"(\S+)")


class Tail:
    """The lines a growing log file gained since the last look (tqdm's \r-separated updates count as lines)."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.pending = path, path.stat().st_size if path.exists() else 0, ""
        # tqdm's bar is multi-byte UTF-8: a read may end inside a character, which the next read completes.
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def new_lines(self) -> list[str]:
        if not self.path.exists():
            return []
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            data = handle.read()
        self.offset += len(data)
        *complete, self.pending = re.split(r"[\r\n]", self.pending + self.decoder.decode(data))
        return complete


@dataclass
class Attempt:
    """One attempt as its machine sees it: the job's log and the S3 server's, read as they grow."""

    number: int
    state_dir: Path
    backend: LocalBackend
    log: Tail
    server_log: Tail
    submitted: float = field(default_factory=time.monotonic)
    start: str | None = None
    """The job's own line saying where training starts (resuming from step N / starting at step 0: why)."""
    trained: int = 0
    """The last step its progress bar showed."""
    uploaded: list[str] = field(default_factory=list)
    """Run keys of the objects the server completed since the submit, in order."""
    created: list[str] = field(default_factory=list)
    """Run keys of the objects the server began to receive since the submit, in order."""
    tail: list[str] = field(default_factory=list)

    def poll(self) -> Attempt:
        for line in self.log.new_lines():
            if self.start is None and START.match(line):
                self.start = line
            if found := TRAINED.match(line):
                self.trained = int(found.group(1))
            self.tail = [*self.tail[-40:], line]
        for line in self.server_log.new_lines():
            if found := MOVED.search(line):
                self.uploaded.append(found.group(1))
            elif found := CREATED.search(line):
                self.created.append(found.group(1))
        return self

    @property
    def pid(self) -> int:
        """The wrapper shell the backend started (process.json on this attempt's machine)."""
        started = json.loads((self.state_dir / RUN_ID / "process.json").read_text())
        assert started["attempt"] == self.number
        return int(started["pid"])

    def wait(self, ready: Callable[[Attempt], bool], what: str, context: str) -> None:
        pid, deadline = self.pid, time.monotonic() + 120
        while not ready(self.poll()):
            alive = psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
            assert alive and time.monotonic() < deadline, (
                f"{context}: attempt {self.number} ended or stalled waiting for {what}:\n" + "\n".join(self.tail))
            time.sleep(0.01)


def kill_tree(pid: int) -> None:
    """Freeze the wrapper, torchrun and its workers first (SIGSTOP: nothing forks or writes after), then SIGKILL
    them all: the wrapper dies too, so no exit code is recorded and nothing is uploaded after the kill."""
    root = psutil.Process(pid)
    frozen: list[psutil.Process] = []
    while True:
        new = [p for p in [root, *root.children(recursive=True)] if p not in frozen]
        if not new:
            break
        for process in new:
            try:
                process.suspend()
            except psutil.NoSuchProcess:
                continue
            frozen.append(process)
    for process in frozen:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(frozen, timeout=30)


def kill_plan(rng: random.Random) -> list[tuple[str, float]]:
    """KILLS points (kind, a draw in [0, 1) that places it), at least one during a checkpoint upload (early, while
    checkpoints are left to upload) and one during the final publish."""
    kinds = [rng.choice(("startup", "step", "step", "upload", "upload")) for _ in range(KILLS)]
    kinds[rng.randrange(0, 3)] = "upload"
    kinds[rng.randrange(3, KILLS)] = "publish"
    return [(kind, rng.random()) for kind in kinds]


def resume_point(attempt: Attempt, context: str) -> int:
    """The step the attempt's log says it starts from (every attempt says so, whatever it found)."""
    attempt.wait(lambda a: a.start is not None, "its resume line", context)
    found = START.match(attempt.start or "")
    assert found is not None
    return int(found.group(1) or 0)


def kill_at(attempt: Attempt, kind: str, draw: float, store: ArtifactStore, context: str) -> str:
    """Wait for the point, kill the attempt there; what it was doing when it died."""
    if kind == "startup":
        delay = 0.5 + 4.5 * draw  # or less: at the latest the resume line, so it lands before training, however fast
        attempt.wait(lambda a: time.monotonic() >= a.submitted + delay or a.start is not None, "the delay", context)
        kill_tree(attempt.pid)
        attempt.poll()
        return f"startup, {delay:.1f}s after the submit ({attempt.start or 'before its resume line'}; " \
               f"trained to step {attempt.trained})"
    start = resume_point(attempt, context)
    if kind == "upload" and start + CHECKPOINT_EVERY < MAX_STEPS:
        return kill_in_upload(attempt, start + CHECKPOINT_EVERY, 1 + int(draw * 3), store, context)
    last = MAX_STEPS - 2  # the step a kill may aim at: it lands a step or so later, still before the publish
    if kind == "upload" or (kind == "step" and start >= last):
        kind = f"{kind} -> publish"  # no checkpoint (or step) left after this resume point: the publish is
    if kind.endswith("publish"):
        attempt.wait(lambda a: any(key.startswith("metrics/") for key in a.created), "the final publish", context)
        kill_tree(attempt.pid)
        adapter = store.is_complete(f"runs/{RUN_ID}/outputs/adapter")
        assert not adapter, f"{context}: killed too late, the adapter was complete"
        return f"{kind}, from step {start}: at the metrics' first PUT (the adapter not complete)"
    target = start + 1 + int(draw * (last - start))
    attempt.wait(lambda a: a.trained >= target, f"step {target}", context)
    kill_tree(attempt.pid)
    return f"step, from step {start}: aimed at step {target}, log at step {attempt.poll().trained}"


def kill_in_upload(attempt: Attempt, step: int, objects: int, store: ArtifactStore, context: str) -> str:
    prefix = f"checkpoints/step-{step}/"

    def uploaded(a: Attempt) -> int:
        return sum(key.startswith(prefix) for key in a.uploaded)

    attempt.wait(lambda a: uploaded(a) >= objects, f"{objects} objects of checkpoint step-{step}", context)
    kill_tree(attempt.pid)
    share = f"runs/{RUN_ID}/{prefix}rank-0"
    present = len(store.list_keys(share))
    complete = store.is_complete(share)
    return f"upload of step-{step}: killed after {uploaded(attempt.poll())} objects up ({present} in the " \
           f"listing, manifest {'present: missed the window' if complete else 'absent'})"


def start_attempt(number: int, spec: StageSpec, server: S3Server, machines: Path,
                  monkeypatch: pytest.MonkeyPatch, context: str) -> Attempt:
    """Attempt `number` on a machine of its own, once the previous attempt is seen Lost from there."""
    home = machines / f"machine-{number}"
    for var, sub in (("ZHLLAMA_WORKDIR", "work"), ("ZHLLAMA_CACHE", "cache")):
        monkeypatch.setenv(var, str(home / sub))
    backend = LocalBackend(spec.store, state_dir=home / "state")
    if number > 1:
        deadline = time.monotonic() + 60
        while not (status := backend.status(RUN_ID)).finished:
            assert time.monotonic() < deadline, f"{context}: attempt {number - 1} never seen Lost: {status}"
            time.sleep(0.2)
        assert status.state == "Failed" and status.reason == "Lost", f"{context}: {status}"
    server_log = Tail(server.log_path)
    status = backend.submit(spec)
    record = read_record(backend.store, RUN_ID)
    assert record.attempt == number, f"{context}: submit gave {status}, attempt {record.attempt}"
    return Attempt(number, home / "state", backend, Tail(home / "state" / RUN_ID / f"attempt-{number}.log"),
                   server_log)


def check_the_run(store: ArtifactStore, batch: int, context: str) -> None:
    """Succeeded; every artifact under the run verifies byte for byte; no checkpoint step is half there; each step
    logged once, at the data position it trained from; the adapter says it trained every step."""
    record = read_record(store, RUN_ID)
    assert record.state == "Succeeded" and record.attempt == KILLS + 1, f"{context}: {record}"
    keys = store.list_keys(f"runs/{RUN_ID}")
    artifacts = [key.removesuffix("/manifest.json") for key in keys if key.endswith("/manifest.json")]
    for artifact in artifacts:
        store.verify(artifact, full=True)
    steps = store.list_dirs(f"runs/{RUN_ID}/checkpoints")
    assert steps and all(store.is_complete(f"runs/{RUN_ID}/checkpoints/{s}/rank-0") for s in steps), \
        f"{context}: checkpoint debris left: {steps}"
    assert {f"runs/{RUN_ID}/outputs/adapter", f"runs/{RUN_ID}/metrics"} <= set(artifacts), f"{context}: {artifacts}"
    lines = store.read_bytes(f"runs/{RUN_ID}/metrics/metrics.jsonl").decode().splitlines()
    metrics = [json.loads(line) for line in lines]
    assert [m["step"] for m in metrics] == list(range(1, MAX_STEPS + 1)), f"{context}: {[m['step'] for m in metrics]}"
    assert all(m["samples"] == m["step"] * batch for m in metrics), f"{context}: a step trained on the wrong batch"
    adapter = store.read_json(f"runs/{RUN_ID}/outputs/adapter/zhllama_adapter.json")
    assert adapter["steps"] == MAX_STEPS and store.read_manifest(f"runs/{RUN_ID}/outputs/adapter")["steps"] == \
        MAX_STEPS, f"{context}: {adapter['steps']}"


def test_pretrain_killed_anywhere_ten_times_finishes_whole(
    tiny: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed = int(os.environ.get(SEED_ENV, DEFAULT_SEED))
    context = f"seed {seed} ({SEED_ENV}={seed} replays it)"
    print(f"\nkill-anywhere: {context}")
    (tmp_path / "s3" / BUCKET).mkdir(parents=True)
    server = S3Server.start(tmp_path / "s3", tmp_path / "rclone.log")
    for var, value in {**LEASE, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
        monkeypatch.setenv(var, value)
    spec = resolve_spec("pretrain", size="tiny", run_id=RUN_ID, values={
        "store": f"s3://{BUCKET}/{STORE_PREFIX}", "base_model": f"file://{tiny['base']}",
        "tokenizer": f"file://{tiny['zh_tokenizer']}", "data": [f"file://{tiny['corpus']}"],
        "max_steps": MAX_STEPS, "checkpoint_every": CHECKPOINT_EVERY, "pad_vocab_multiple": 64,
        "tokenize_workers": 1})
    assert isinstance(spec, TrainSpec)
    started = time.monotonic()
    try:
        with aws_env(server.endpoint):
            store = open_store(spec.store)
            kills: list[str] = []
            for number, (kind, draw) in enumerate(kill_plan(random.Random(seed)), 1):
                attempt = start_attempt(number, spec, server, tmp_path, monkeypatch, context)
                where = kill_at(attempt, kind, draw, store, f"{context}, kill {number} ({kind})")
                print(f"kill {number:2} at {time.monotonic() - started:5.1f}s: {where}", flush=True)
                kills.append(where)
            last = start_attempt(KILLS + 1, spec, server, tmp_path, monkeypatch, context)
            final = last.backend.wait(RUN_ID)
            print(f"attempt {KILLS + 1}: {final.state} at {time.monotonic() - started:.1f}s, {last.poll().start}")
            assert any("manifest absent" in where for where in kills), f"{context}: no kill landed in an upload"
            check_the_run(store, spec.micro_batch_size * spec.grad_accum_steps, context)
    finally:
        server.stop()
