"""English forgetting with and without English replay in pretraining, printed as JSON lines.

  python bench/replay.py [--size smol] [--steps 60] [--max-chars 12000] [--keep DIR]
      Two `smol` pipelines through the real CLI in a temporary store, the same but for the pretraining data:
        with replay     People's Daily 0.9 + embedded://english-replay 0.1 (the preset)
        without replay  People's Daily alone
      Each runs `ctl run pipeline --local` with stages prepare and pretrain (`--steps` optimizer steps); the
      first also trains the tokenizer, and the second uses it (it is trained on Chinese only, so it is the same
      either way). Then `ctl run eval --local` scores the base model once and each pretrained adapter with the
      pipeline's eval-base / eval-pretrain wiring, on the preset's held-out text (Chinese and English), without
      the generation tasks. One JSON line per figure: English per-token and Chinese per-character perplexity
      before (the base model, the same for both) and after pretraining, with and without replay; then the
      changes side by side, the pretraining data each run streamed, and the wall time of each run.

About 10-15 minutes on 2 CPU cores with the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from zhllama.report.collect import read_artifact_file
from zhllama.run import run_key
from zhllama.spec import TrainSpec, resolve_spec
from zhllama.store import open_store


def ctl_command() -> list[str]:
    script = Path(sys.executable).parent / "ctl"
    if script.exists():
        return [str(script)]
    found = shutil.which("ctl")
    if found is None:
        raise SystemExit("ctl is not installed next to this Python; run with the project's .venv/bin/python")
    return [found]


def ctl(args: list[str], env: dict[str, str], log: Path) -> float:
    """Run one ctl command, its output into `log`; the seconds it took. Stops the bench when it fails."""
    started = time.monotonic()
    with log.open("w", encoding="utf-8") as out:
        done = subprocess.run([*ctl_command(), *args], stdout=out, stderr=subprocess.STDOUT, env=env, text=True)
    if done.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace")[-4000:]
        raise SystemExit(f"ctl {' '.join(args[:3])} failed (exit {done.returncode}); its log {log} ends:\n{tail}")
    return time.monotonic() - started


def sets(values: dict[str, Any]) -> list[str]:
    """--set key=value for each field, values as JSON (valid YAML)."""
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={json.dumps(value)}")]


def pipeline(size: str, store: str, pid: str, steps: int, data: list[dict[str, Any]] | None, tokenizer: str | None,
             env: dict[str, str], log: Path) -> float:
    """A pipeline of tokenizer (unless `tokenizer` is given) -> prepare -> pretrain."""
    pretrain: dict[str, Any] = {"max_steps": steps}
    prepare: dict[str, Any] = {}
    if data is not None:
        pretrain["data"] = prepare["data"] = data
    if tokenizer is not None:
        pretrain["tokenizer"] = prepare["tokenizer"] = tokenizer
    stages = ["prepare", "pretrain"] if tokenizer is not None else ["tokenizer", "prepare", "pretrain"]
    return ctl(["run", "pipeline", "--local", "--size", size, "--store", store, "--run-id", pid,
                *sets({"stages": stages, "overrides": {"pretrain": pretrain, "prepare": prepare}})], env, log)


def evaluate(size: str, store: str, run_id: str, base_model: str, adapter: str | None, tokenizer: str,
             max_chars: int, env: dict[str, str], log: Path) -> float:
    """The pipeline's eval-base (no adapter) or eval-pretrain wiring, held-out perplexity only."""
    values: dict[str, Any] = {"model": base_model, "tasks": [], "sample_prompts": [], "max_chars": max_chars}
    if adapter is None:
        values["instruction_model"] = True
    else:
        values.update(adapters=[adapter], tokenizer=tokenizer, instruction_model=False)
    return ctl(["run", "eval", "--local", "--size", size, "--store", store, "--run-id", run_id, *sets(values)],
               env, log)


def read_json(store_uri: str, artifact: str, name: str) -> dict[str, Any]:
    """A stage's small JSON output, verified against its manifest as the pipeline report reads it."""
    data: dict[str, Any] = json.loads(read_artifact_file(open_store(store_uri), artifact, name))
    return data


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record, ensure_ascii=False), flush=True)


def change(before: float, after: float) -> float:
    return round(100 * (after / before - 1), 2)


def bench(args: argparse.Namespace, scratch: Path) -> None:
    """Both pipelines and the three evals in a store under `scratch`, then their figures."""
    store = f"file://{scratch / 'store'}"
    env = {**os.environ, "ZHLLAMA_STATE": str(scratch / "state"), "ZHLLAMA_WORKDIR": str(scratch / "work")}
    logs = scratch / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    preset = resolve_spec("pretrain", size=args.size, run_id="replay-preset", values={"store": store})
    assert isinstance(preset, TrainSpec)
    # Without replay: the preset's first source (People's Daily) alone.
    chinese, *replayed = preset.data
    if not replayed or "english" not in " ".join(source.uri for source in replayed):
        raise SystemExit(f"the {args.size} preset pretrains on {[s.uri for s in preset.data]}: no English replay")
    chinese_only = [{"uri": chinese.uri, "weight": 1.0}]
    tag = secrets.token_hex(3)
    runs = {True: f"replay-{tag}-with", False: f"replay-{tag}-without"}
    base_eval = f"replay-{tag}-eval-base"
    tokenizer = f"run://{runs[True]}-tokenizer/outputs/tokenizer"
    common = {"size": args.size, "steps": args.steps, "max_chars": args.max_chars, "block_size": preset.block_size,
              "micro_batch_size": preset.micro_batch_size, "grad_accum_steps": preset.grad_accum_steps}

    seconds = {
        "pipeline with replay": pipeline(args.size, store, runs[True], args.steps, None, None, env,
                                         logs / "with.log"),
        "pipeline without replay": pipeline(args.size, store, runs[False], args.steps, chinese_only, tokenizer, env,
                                            logs / "without.log"),
        "eval base": evaluate(args.size, store, base_eval, preset.base_model, None, tokenizer, args.max_chars, env,
                              logs / "eval-base.log"),
    }
    for replay, pid in runs.items():
        name = "with" if replay else "without"
        seconds[f"eval pretrained {name} replay"] = evaluate(
            args.size, store, f"{pid}-eval-pretrain", preset.base_model, f"run://{pid}-pretrain/outputs/adapter",
            tokenizer, args.max_chars, env, logs / f"eval-{name}.log")
    emit_figures(store, runs, base_eval, common, seconds)


def emit_figures(store: str, runs: dict[bool, str], base_eval: str, common: dict[str, Any],
                 seconds: dict[str, float]) -> None:
    """The finished runs' figures from their reports in the store: perplexity per held-out text before and after
    pretraining, its change with and without replay, the data each pretraining streamed, and the wall times."""
    base = read_json(store, run_key(base_eval, "outputs/eval"), "report.json")
    figures: dict[str, dict[str, Any]] = {}
    for replay, pid in runs.items():
        after = read_json(store, run_key(f"{pid}-eval-pretrain", "outputs/eval"), "report.json")
        for model, report in (("base", base), ("pretrained", after)):
            for uri, record in report["perplexity"]["sources"].items():
                language = record.get("language", "")
                metric = "ppl_per_token" if language == "en" else "ppl_per_char"
                figure = figures.setdefault(uri, {"language": language, "metric": metric})
                figure[f"{model} {replay}"] = record[metric]
                emit({"bench": "replay.ppl", "replay": replay, "model": model, "heldout": uri,
                      "language": language, "metric": metric, "value": round(record[metric], 4),
                      "tokens": record["tokens"], "characters": record["characters"], **common})
    for uri, figure in figures.items():
        base_ppl = figure["base True"]
        emit({"bench": "replay.change", "heldout": uri, "language": figure["language"], "metric": figure["metric"],
              "base": round(base_ppl, 4), "with_replay": round(figure["pretrained True"], 4),
              "without_replay": round(figure["pretrained False"], 4),
              "change_pct_with_replay": change(base_ppl, figure["pretrained True"]),
              "change_pct_without_replay": change(base_ppl, figure["pretrained False"]), **common})
    for replay, pid in runs.items():
        dataset = read_json(store, run_key(f"{pid}-prepare", "outputs/dataset"), "dataset.json")
        for source in dataset["sources"]:
            emit({"bench": "replay.data", "replay": replay, "uri": source["uri"], "weight": source["weight"],
                  "blocks": source.get("blocks"), "tokens": source.get("tokens"),
                  "documents": source.get("documents")})
    for what, took in seconds.items():
        emit({"bench": "replay.time", "run": what, "seconds": round(took, 1)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="smol", help="Size preset (tiny: a seconds-long check of the bench itself).")
    parser.add_argument("--steps", type=int, default=60, help="Pretraining optimizer steps of each run.")
    parser.add_argument("--max-chars", type=int, default=12000,
                        help="Held-out characters scored per text (the smol preset's eval: 6000).")
    parser.add_argument("--keep", type=Path, help="Keep the store, logs and run state here instead of a temp dir.")
    args = parser.parse_args()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        bench(args, args.keep)
        return
    with tempfile.TemporaryDirectory(prefix="zhllama-bench-replay-") as tmp:
        bench(args, Path(tmp))


if __name__ == "__main__":
    main()
