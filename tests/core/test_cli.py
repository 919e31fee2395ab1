"""`ctl` as a user types it: the installed console script in a subprocess."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.core.standin import JOB

CTL = shutil.which("ctl") or str(Path(sys.executable).parent / "ctl")


def ctl(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CTL, *args], capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=cwd, timeout=120
    )


def test_dry_run_prints_the_resolved_spec() -> None:
    done = ctl(
        "run",
        "pretrain",
        "--local",
        "--size",
        "tiny",
        "--set",
        "lora.r=4",
        "--bits",
        "16",
        "--run-id",
        "dry",
        "--dry-run",
    )
    assert done.returncode == 0, done.stderr
    spec = yaml.safe_load(done.stdout)
    assert spec["run_id"] == "dry" and spec["lora"]["r"] == 4 and spec["lora"]["alpha"] == 32
    assert spec["store"] == "file://./artifacts"


def test_bad_flags_give_every_problem_and_exit_2() -> None:
    done = ctl("run", "sft", "--size", "tiny", "--set", "lora.r=0", "--set", "warmup_ratio=2", "--dry-run")
    assert done.returncode == 2
    assert "lora.r: Input should be greater than or equal to 1 (got 0)" in done.stderr
    assert "warmup_ratio: Input should be less than 1 (got 2)" in done.stderr
    assert "Traceback" not in done.stderr


def test_run_status_logs_ls_pull(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "tokenizer.py").write_text(JOB)
    env = {"ZHLLAMA_JOBS_DIR": str(jobs), "ZHLLAMA_STORE": f"file://{tmp_path / 'store'}"}
    done = ctl("run", "tokenizer", "--local", "--size", "tiny", "--run-id", "cli-run", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "working on cli-run" in done.stdout and "Succeeded" in done.stdout
    assert "Succeeded" in ctl("status", "cli-run", env=env).stdout
    assert "done" in ctl("logs", "cli-run", env=env).stdout
    assert "cli-run" in ctl("ls", env=env).stdout
    pulled = ctl("pull", "cli-run", str(tmp_path / "out"), env=env)
    assert pulled.returncode == 0, pulled.stderr
    assert (tmp_path / "out" / "tokenizer" / "tokenizer.json").read_text() == "{}"
    missing = ctl("status", "no-such-run", env=env)
    assert missing.returncode == 2 and "no run 'no-such-run'" in missing.stderr


@pytest.mark.parametrize("stage", ["tokenizer", "pretrain", "merge", "eval"])
def test_explain_documents_every_field(stage: str) -> None:
    done = ctl("explain", stage)
    assert done.returncode == 0
    assert "run_id" in done.stdout and "Root URI of the artifact store" in done.stdout


def test_cancel_of_a_run_that_does_not_exist_says_so_and_leaves_nothing(tmp_path: Path) -> None:
    state = tmp_path / "state"
    done = ctl("cancel", "nosuch", "--store", f"file://{tmp_path / 'store'}", env={"ZHLLAMA_STATE": str(state)})
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: no run 'nosuch' in ") and len(done.stderr.splitlines()) == 1
    assert not (state / "nosuch").exists()


def test_a_misspelt_pipeline_override_and_a_set_size_are_refused() -> None:
    done = ctl("run", "pipeline", "--size", "tiny", "--set", "overrides.tokenizr.vocab_size=5000",
               "--set", "size=7b", "--dry-run")
    assert done.returncode == 2, done.stdout
    assert "overrides: 'tokenizr' is not a pipeline stage" in done.stderr
    assert "size: '7b' cannot be set as a field; it comes from --size (here 'tiny')" in done.stderr


def test_explain_shows_the_chosen_presets_values() -> None:
    done = ctl("explain", "pretrain", "--size", "tiny")
    assert done.returncode == 0, done.stderr
    assert "block_size: 64  (preset tiny; default 512)" in done.stdout


def test_a_pipelines_report_can_be_pulled(tmp_path: Path) -> None:
    from zhllama.store import DirStore

    store = DirStore(tmp_path / "store")
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "report.md").write_text("# Report\n")
    store.publish_dir(tmp_path / "report", "runs/pl1/report")
    done = ctl("pull", "pl1", str(tmp_path / "dest"), "--store", f"file://{tmp_path / 'store'}")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "dest" / "report" / "report.md").read_text() == "# Report\n"


@pytest.mark.parametrize("command", [["ls"], ["status", "x"], ["logs", "x"], ["pull", "x", "DEST"],
                                     ["run", "tokenizer", "--size", "tiny", "--run-id", "x"]])
def test_an_unreachable_s3_endpoint_is_one_line_for_every_command(command: list[str], tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = [str(tmp_path / "dest") if a == "DEST" else a for a in command]
    done = ctl(*args, "--store", "s3://bucket/prefix", env={
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_REGION": "us-east-1", "ZHLLAMA_S3_RETRIES": "1"})
    assert done.returncode == 2, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert "Traceback" not in done.stderr and len(errors) == 1
    assert f"cannot reach the S3 endpoint http://127.0.0.1:{port}" in errors[0]
    assert "retry 1/1" in done.stderr  # the bounded retry is shown


@pytest.mark.parametrize("command", [["status", "../etc"], ["logs", "../etc"], ["pull", "../etc", "DEST"]])
def test_reading_a_bad_run_id_names_the_run_id_rule(command: list[str], tmp_path: Path) -> None:
    args = [str(tmp_path / "dest") if a == "DEST" else a for a in command]
    done = ctl(*args, "--store", f"file://{tmp_path / 'store'}")
    assert done.returncode == 2
    assert done.stderr == ("error: run id: '../etc' is not a valid run id: use lowercase letters, digits and '-', "
                           "start and end with a letter or digit, at most 52 characters\n")
