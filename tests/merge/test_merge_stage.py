"""run_merge through the real run contract: file:// inputs, a directory store, the published artifact."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from zhllama.merge import run_merge
from zhllama.run import RunContext
from zhllama.spec import resolve_spec


def test_run_merge_publishes_the_merged_model(recipe: Callable[[bool], dict], tmp_path: Path) -> None:
    made = recipe(False)
    spec = resolve_spec(
        "merge",
        size="tiny",
        values={
            "base_model": f"file://{made['base']}",
            "adapters": [f"file://{path}" for path in made["adapters"]],
            "tokenizer": f"file://{made['tokenizer']}",
            "store": f"file://{tmp_path / 'store'}",
            "max_shard_size": "100KB",
            "dtype": "float32",
        },
    )
    run_merge(RunContext.create(spec, workdir=tmp_path / "work"))

    artifact = tmp_path / "store" / "runs" / spec.run_id / "outputs" / "model"
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert "merge.json" in json.dumps(manifest) and "config.json" in json.dumps(manifest)
    merged = AutoModelForCausalLM.from_pretrained(artifact, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = merged(input_ids=made["inputs"]).logits
    assert torch.allclose(logits, made["logits"], atol=1e-4, rtol=0)
