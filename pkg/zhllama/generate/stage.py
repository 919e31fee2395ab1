"""The generate stage: answer each prompt of the spec with the paper's decoding, into generations.jsonl."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch

from zhllama.errors import UserError
from zhllama.generate.decoding import decoding_settings, generate
from zhllama.models.loading import load_spec_model
from zhllama.prompts import alpaca_prompt
from zhllama.records import JSON_LINES_SUFFIXES, TEXT_SUFFIXES, list_files, read_json_lines, read_lines, string_fields
from zhllama.spec.models import GenerateSpec

if TYPE_CHECKING:
    from zhllama.run import RunContext


def read_prompts(path: Path) -> list[tuple[str, str]]:
    """(instruction, input) pairs: JSONL with `instruction` (and optional `input`), or one prompt per line."""
    prompts: list[tuple[str, str]] = []
    for file in list_files([path], TEXT_SUFFIXES, "prompts_file"):
        if file.suffix not in JSON_LINES_SUFFIXES:
            prompts += [(text, "") for _, text in read_lines(file)]
            continue
        for where, record in read_json_lines(file):
            (instruction,) = string_fields(record, where, "instruction")
            prompts.append((instruction, str(record.get("input") or "")))
    return prompts


def run_generate(ctx: RunContext) -> None:
    """Answer each prompt with the paper's decoding settings, streaming to stdout, into generations.jsonl."""
    spec = cast(GenerateSpec, ctx.spec)
    prompts = [(prompt, "") for prompt in spec.prompts]
    if spec.prompts_file:
        prompts += read_prompts(ctx.input(spec.prompts_file))
    if not prompts:
        raise UserError("generate: no prompts; set `prompts` or `prompts_file`")
    model, tokenizer = load_spec_model(ctx, spec)
    settings = decoding_settings(spec)
    torch.manual_seed(spec.seed)
    out_dir = ctx.output_dir("generations")
    with (out_dir / "generations.jsonl").open("w", encoding="utf-8") as records:
        for number, (instruction, extra) in enumerate(prompts, start=1):
            plain = f"{instruction}\n{extra}" if extra else instruction
            prompt = alpaca_prompt(instruction, extra) if spec.instruction_model else plain
            sys.stdout.write(f"\n[{number}/{len(prompts)}] {instruction}\n")
            output = generate(model, tokenizer, prompt, settings, out=sys.stdout)
            record = {"instruction": instruction, "input": extra, "prompt": prompt, "output": output}
            records.write(json.dumps(record, ensure_ascii=False) + "\n")
    (out_dir / "generation_config.json").write_text(json.dumps(asdict(settings), indent=2) + "\n", encoding="utf-8")
    ctx.publish("generations")
