from __future__ import annotations

import json
from pathlib import Path

from tests.tokenizer.conftest import HELDOUT_LINES
from zhllama.run import RunContext
from zhllama.spec import resolve_spec
from zhllama.tokenizer import run_tokenizer


def test_run_tokenizer_publishes_the_directory(tmp_path: Path, tiny_sp_base: Path, zh_corpus: Path) -> None:
    corpus_dir = tmp_path / "corpus"
    corpus_dir.mkdir()
    (corpus_dir / "part-0.txt").write_text(zh_corpus.read_text(encoding="utf-8"), encoding="utf-8")
    spec = resolve_spec("tokenizer", size="tiny", values={
        "store": f"file://{tmp_path / 'store'}",
        "base_tokenizer": f"file://{tiny_sp_base}",
        "corpus": [f"file://{corpus_dir}"],
        "heldout": [],
        "heldout_lines": HELDOUT_LINES,
        "vocab_size": 4000,
        "num_threads": 1,
    })
    ctx = RunContext.create(spec, workdir=tmp_path / "work")
    run_tokenizer(ctx)
    published = tmp_path / "store" / "runs" / spec.run_id / "outputs" / "tokenizer"
    manifest = json.loads((published / "manifest.json").read_text(encoding="utf-8"))
    assert {"tokenizer.json", "tokenizer.model", "tokenizer_config.json", "report.json"} <= set(manifest["files"])
    report = json.loads((published / "report.json").read_text(encoding="utf-8"))
    assert report["heldout"]["lines"] == HELDOUT_LINES and report["checks"][0]["ok"]
