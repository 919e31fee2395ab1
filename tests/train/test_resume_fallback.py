"""A damaged newest checkpoint costs the steps since the one before it, never the run (issue 14, item 3).

In process first (every kind of damage, the fresh start when nothing is usable), then as a job killed after its
step-8 checkpoint, on the directory store and on S3, and across two ranks of which only one finds the damage.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.train.jobs import job_command, job_env, kill_job, run_job, write_spec
from tests.train.tiny import spec_for
from zhllama.data import BlockData
from zhllama.store import ArtifactStore, DirStore, join_key, open_store
from zhllama.train import Checkpoints, TrainResult, process_env, train

PREFIX = "runs/t/checkpoints"


def flip_byte(store: ArtifactStore, key: str) -> None:
    """One byte of the object inverted in place: its manifest still lists the old sha256."""
    data = bytearray(store.read_bytes(key))
    data[len(data) // 2] ^= 0xFF
    store.write_bytes(key, bytes(data))


def break_before_upload(store: ArtifactStore, share: str, tmp_path: Path) -> None:
    """The share republished with engine.pt cut in half: a file written broken, whose manifest matches it."""
    local = store.fetch_dir(share, tmp_path / "broken", progress=False)
    engine = local / "engine.pt"
    engine.write_bytes(engine.read_bytes()[: engine.stat().st_size // 2])
    (local / "manifest.json").unlink()
    store.publish_dir(local, share, extra={"checkpoint_step": 8}, progress=False)


def train_once(tiny: dict[str, Path], blocks: BlockData, tmp_path: Path, name: str) -> TrainResult:
    """Nine steps with checkpoints at 4 and 8, as one attempt of run `t` would (its own scratch and outputs)."""
    checkpoints = Checkpoints(DirStore(tmp_path / "store"), PREFIX, process_env().place, tmp_path / name / "scratch",
                              keep=2, timeout_s=60)
    return train(spec_for(tiny, max_steps=9, checkpoint_every=4), base_model_dir=tiny["base"],
                 tokenizer_dir=tiny["zh_tokenizer"], dataset=blocks, output_dir=tmp_path / name / "adapter",
                 metrics_dir=tmp_path / name / "metrics", checkpoints=checkpoints)  # the name a checkpoint keeps


def logged_steps(metrics_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (metrics_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("damage", ["flipped-byte", "missing-file", "broken-before-upload"])
def test_a_damaged_newest_step_is_skipped_for_the_one_before(
    tiny: dict[str, Path], blocks: BlockData, tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    store = DirStore(tmp_path / "store")
    train_once(tiny, blocks, tmp_path, "first")
    share = join_key(PREFIX, "step-8", "rank-0")
    if damage == "flipped-byte":
        flip_byte(store, join_key(share, "engine.pt"))
        why = re.escape(f"{store.uri(share)}/engine.pt is corrupt: its sha256 differs from the manifest") + "$"
    elif damage == "missing-file":
        (tmp_path / "store" / share / "rng.pt").unlink()
        why = re.escape(f"{store.uri(share)}/rng.pt is listed in the manifest but missing") + "$"
    else:
        break_before_upload(store, share, tmp_path)
        why = re.escape(f"{store.uri(share)}/engine.pt cannot be loaded by torch (") + r"\w+: .+\)$"
    capsys.readouterr()

    result = train_once(tiny, blocks, tmp_path, "again")
    lines = capsys.readouterr().out.splitlines()
    skipped = [line for line in lines if line.startswith("checkpoint step-")]
    print("\n".join(skipped + [line for line in lines if line.startswith("resuming")]))
    assert len(skipped) == 1 and re.fullmatch("checkpoint step-8 skipped: " + why, skipped[0]), skipped
    assert "resuming from step 4" in lines
    assert result.resumed_from == 4 and result.steps == 9
    assert logged_steps(tmp_path / "again" / "metrics") == list(range(1, 10))
    store.verify(share, full=True)  # the skipped step was deleted, and step 8 written again whole


def test_with_no_usable_step_training_starts_at_step_0_and_says_why(
    tiny: dict[str, Path], blocks: BlockData, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = DirStore(tmp_path / "store")
    train_once(tiny, blocks, tmp_path, "first")
    for step in (4, 8):
        flip_byte(store, join_key(PREFIX, f"step-{step}", "rank-0", "engine.pt"))
    capsys.readouterr()

    result = train_once(tiny, blocks, tmp_path, "again")
    lines = capsys.readouterr().out.splitlines()
    start = next(line for line in lines if line.startswith("starting at step 0"))
    print(start)
    bad = [f"{store.uri(join_key(PREFIX, f'step-{step}', 'rank-0'))}/engine.pt is corrupt" for step in (8, 4)]
    assert start.startswith(f"starting at step 0: no valid checkpoint (step 8: {bad[0]}")
    assert f"; step 4: {bad[1]}" in start and start.endswith(")")
    assert result.resumed_from is None and logged_steps(tmp_path / "again" / "metrics") == list(range(1, 10))
    for step in (4, 8):
        store.verify(join_key(PREFIX, f"step-{step}", "rank-0"), full=True)


def test_a_fresh_run_says_it_starts_at_step_0(
    tiny: dict[str, Path], blocks: BlockData, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train_once(tiny, blocks, tmp_path, "first")
    assert "starting at step 0: no checkpoint" in capsys.readouterr().out.splitlines()


# --- as a job: killed after its step-8 checkpoint --------------------------------------------------------------


def killed_after_step_8(spec: Path, root: Path, store: ArtifactStore, run_id: str, nproc: int = 1) -> int:
    """Start the job, SIGKILL it once step 8 is complete; the newest complete step (8, or one more if it raced)."""
    checkpoints = f"runs/{run_id}/checkpoints"
    process = subprocess.Popen(job_command(spec, root, nproc), env=job_env(), start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while not store.is_complete(f"{checkpoints}/step-8/rank-0"):
        assert process.poll() is None and time.monotonic() < deadline, "the job ended before its step-8 checkpoint"
        time.sleep(0.02)
    kill_job(process)
    assert not store.is_complete(f"runs/{run_id}/outputs/adapter"), "killed too late: the run had finished"
    return max(step for step in range(4, 41, 4) if store.is_complete(f"{checkpoints}/step-{step}/rank-0"))


def stage_metrics(store: ArtifactStore, run_id: str) -> list[dict[str, Any]]:
    key = f"runs/{run_id}/metrics"
    store.verify(key, full=True)
    return [json.loads(line) for line in store.read_bytes(f"{key}/metrics.jsonl").decode().splitlines()]


@pytest.fixture(params=["directory", "s3"])
def store_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "directory":
        return f"file://{tmp_path / 'store'}"
    bucket: str = request.getfixturevalue("s3_env")  # boto3's environment, for this process and the job's
    return f"{bucket}/fallback-{uuid.uuid4().hex[:8]}"


@pytest.mark.slow
def test_a_killed_job_whose_newest_checkpoint_is_corrupt_resumes_from_the_one_before(
    tiny: dict[str, Path], tmp_path: Path, store_uri: str
) -> None:
    spec = write_spec(tiny, tmp_path, "fallback", store=store_uri, zero_stage=0, max_steps=40, checkpoint_every=4)
    store = open_store(store_uri)
    newest = killed_after_step_8(spec, tmp_path, store, "fallback")
    engine = f"runs/fallback/checkpoints/step-{newest}/rank-0/engine.pt"
    flip_byte(store, engine)

    result = run_job(spec, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    print("\n".join(line for line in lines if line.startswith(("checkpoint step-", "resuming"))))
    assert f"checkpoint step-{newest} skipped: {store.uri(engine)} is corrupt: its sha256 differs from the " \
           "manifest" in lines
    assert f"resuming from step {newest - 4}" in lines
    assert [r["step"] for r in stage_metrics(store, "fallback")] == list(range(1, 41))
    record = store.read_json("runs/fallback/outputs/adapter/zhllama_adapter.json")
    assert record["resumed_from_step"] == newest - 4 and record["steps"] == 40
    for step in (36, 32):
        store.verify(f"runs/fallback/checkpoints/step-{step}/rank-0", full=True)


@pytest.mark.slow
def test_ranks_agree_on_the_older_step_when_only_one_finds_its_share_corrupt(
    tiny: dict[str, Path], tmp_path: Path
) -> None:
    """DDP: rank 0 loads rank 0's share and its own, rank 1 its own RNG streams. Only rank 1 sees the damage."""
    spec = write_spec(tiny, tmp_path, "agree", zero_stage=0, max_steps=40, checkpoint_every=4)
    store = DirStore(tmp_path / "store")
    newest = killed_after_step_8(spec, tmp_path, store, "agree", nproc=2)
    flip_byte(store, f"runs/agree/checkpoints/step-{newest}/rank-1/rng.pt")

    result = run_job(spec, tmp_path, nproc=2)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    print("\n".join(line for line in lines if line.startswith(("checkpoint step-", "resuming"))))
    rank1 = store.uri(f"runs/agree/checkpoints/step-{newest}/rank-1")
    assert f"checkpoint step-{newest} skipped: {rank1}/rng.pt is corrupt: its sha256 differs from the manifest" \
        in lines
    assert lines.count(f"resuming from step {newest - 4}") == 1  # rank 0 speaks for both
    assert [r["step"] for r in stage_metrics(store, "agree")] == list(range(1, 41))
    assert store.read_json("runs/agree/outputs/adapter/zhllama_adapter.json")["resumed_from_step"] == newest - 4
