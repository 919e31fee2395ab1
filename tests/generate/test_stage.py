"""The generate stage: prompts from the spec and a prompts file, answers and the decoding settings published."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from zhllama.errors import UserError
from zhllama.generate import read_prompts, run_generate
from zhllama.run import RunContext
from zhllama.spec.models import GenerateSpec


def test_read_prompts(tmp_path: Path) -> None:
    lines = tmp_path / "prompts.txt"
    lines.write_text("写一首诗\n\n介绍北京\n", encoding="utf-8")
    assert read_prompts(lines) == [("写一首诗", ""), ("介绍北京", "")]
    records = tmp_path / "prompts.jsonl"
    records.write_text(
        json.dumps({"instruction": "翻译", "input": "我爱你"}, ensure_ascii=False) + '\n{"text": 1}\n',
        encoding="utf-8",
    )
    with pytest.raises(UserError, match=r"prompts\.jsonl:2: each JSONL line needs a string field `instruction`"):
        read_prompts(records)


def test_run_generate_writes_generations(tmp_path: Path, tiny_model_dir: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"instruction": "翻译", "input": "秦朝"}\n', encoding="utf-8")
    spec = GenerateSpec(
        run_id="gen-test",
        store=f"file://{tmp_path}/store",
        model=f"file://{tiny_model_dir}",
        prompts=["介绍唐朝"],
        prompts_file=f"file://{prompts}",
        max_new_tokens=6,
    )
    ctx = RunContext.create(spec, workdir=tmp_path / "work")
    run_generate(ctx)
    assert ctx.output_complete("generations")
    lines = (ctx.output_dir("generations") / "generations.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["instruction"] for r in records] == ["介绍唐朝", "翻译"]
    assert records[1]["prompt"].endswith("### Instruction:\n翻译\n秦朝\n\n### Response:\n")
    assert all(r["output"] for r in records)
    config = json.loads((ctx.output_dir("generations") / "generation_config.json").read_text())
    assert config == {"temperature": 0.2, "top_k": 40, "top_p": 0.9, "repetition_penalty": 1.1, "max_new_tokens": 6}
