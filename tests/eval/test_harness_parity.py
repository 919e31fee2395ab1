"""`ctl run eval` on the tiny CMMLU set equals a direct `lm_eval run --model hf` on the same model and data,
question by question: SmolLM2-135M, the embedded base, imported from its GGUF once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.eval.eval_fixtures import EXAM_DIR
from zhllama.embedded.models import smollm2_gguf
from zhllama.eval.exams import read_exam_dir, task_config, write_task_file
from zhllama.eval.harness import TaskDefinitions
from zhllama.models.gguf import import_gguf

pytestmark = pytest.mark.slow
BATCH = 8


def direct_lm_eval(model_dir: Path, task_files: list[Path], out: Path) -> dict[str, list[dict]]:
    """The harness's own CLI on the HF directory; its samples per task, by doc_id."""
    command = [str(Path(sys.executable).parent / "lm_eval"), "run", "--model", "hf",
               "--model_args", f"pretrained={model_dir},dtype=float32", "--tasks", *map(str, task_files),
               "--num_fewshot", "0", "--batch_size", str(BATCH), "--log_samples", "--output_path", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    samples = {}
    for task_file in task_files:
        task = task_file.stem
        [found] = out.rglob(f"samples_{task}_*.jsonl")
        rows = [json.loads(line) for line in found.read_text(encoding="utf-8").splitlines()]
        samples[task] = sorted(rows, key=lambda row: row["doc_id"])
    return samples


def test_ctl_eval_equals_a_direct_lm_eval_run_per_question(tmp_path: Path) -> None:
    model_dir = tmp_path / "smollm2"
    import_gguf(smollm2_gguf(), model_dir)
    store = tmp_path / "store"
    sets = [f"model=file://{model_dir}", f'exams=["file://{EXAM_DIR}"]', "shots=[0]", "heldout=[]", "tasks=[]",
            "sample_prompts=[]", f"exam_batch_size={BATCH}"]
    ours = subprocess.run(
        [sys.executable, "-m", "zhllama.cli.main", "run", "eval", "--local", "--run-id", "parity", "--store",
         f"file://{store}", *(arg for value in sets for arg in ("--set", value))],
        capture_output=True, text=True, timeout=900)
    assert ours.returncode == 0, ours.stdout[-3000:] + ours.stderr[-3000:]
    eval_dir = store / "runs" / "parity" / "outputs" / "eval"
    questions = [json.loads(line) for line in (eval_dir / "questions.jsonl").read_text(encoding="utf-8").splitlines()]
    report = json.loads((eval_dir / "report.json").read_text(encoding="utf-8"))

    # The same tasks, read from the same CSVs: the harness's definitions with only the data location changed.
    definitions = TaskDefinitions()
    subjects = read_exam_dir(EXAM_DIR, definitions.names)
    task_dir = tmp_path / "tasks"
    task_dir.mkdir()
    task_files = [write_task_file(task_config(s, definitions.definition(s.task)), task_dir) for s in subjects]
    theirs = direct_lm_eval(model_dir, task_files, tmp_path / "lm_eval_out")

    assert sorted(theirs) == ["cmmlu_agronomy", "cmmlu_chinese_history"]
    for task, samples in theirs.items():
        mine = [q for q in questions if q["task"] == task]
        assert [q["doc_id"] for q in mine] == [s["doc_id"] for s in samples]
        for question, sample in zip(mine, samples, strict=True):
            loglikelihoods = [float(response[0]) for response in sample["filtered_resps"]]
            assert question["loglikelihoods"] == pytest.approx(loglikelihoods, abs=1e-4), (task, sample["doc_id"])
            assert question["correct"] == bool(sample["acc"]), (task, sample["doc_id"])
            assert question["prediction"] == "ABCD"[loglikelihoods.index(max(loglikelihoods))]
        accuracy = sum(sample["acc"] for sample in samples) / len(samples)
        assert report["exams"][0]["subjects"][task]["accuracy"] == pytest.approx(accuracy)
        print(f"{task}: accuracy {accuracy:.4f} in both, {len(samples)} questions")
