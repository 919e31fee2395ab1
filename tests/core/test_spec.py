from pathlib import Path

import pytest

from zhllama.errors import SpecError
from zhllama.spec import PRESETS, TrainSpec, resolve_spec


def test_presets_carry_the_papers_recipe() -> None:
    spec = resolve_spec("pretrain", size="7b", run_id="r7")
    assert isinstance(spec, TrainSpec)
    assert (spec.lora.r, spec.lora.alpha, spec.lora.dropout) == (8, 32, 0.05)
    assert spec.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert spec.lora.modules_to_save == ["embed_tokens", "lm_head"]
    assert (spec.lr, spec.lr_scheduler, spec.warmup_ratio, spec.weight_decay, spec.max_grad_norm) == (
        2e-4,
        "cosine",
        0.05,
        0.01,
        1.0,
    )
    assert spec.block_size == 512 and spec.zero_stage == 2


@pytest.mark.parametrize(("size", "bits", "gpus"), [("7b", 16, 16), ("13b", 16, 32), ("33b", 8, 48), ("65b", 4, 64)])
def test_cluster_sizes_default_bits_and_gpus(size: str, bits: int, gpus: int) -> None:
    spec = resolve_spec("pretrain", size=size, run_id="r")
    assert isinstance(spec, TrainSpec)
    assert spec.bits == bits
    assert spec.resources.nodes * spec.resources.gpus_per_node == gpus
    assert spec.micro_batch_size * spec.grad_accum_steps * gpus in range(900, 1100)


def test_every_stage_resolves_for_every_size() -> None:
    for size in PRESETS:
        for stage in ("tokenizer", "pretrain", "sft", "merge", "quantize", "eval", "generate", "pipeline"):
            assert resolve_spec(stage, size=size, run_id="x").size == size


def test_set_overrides_nested_fields_and_yaml_values() -> None:
    spec = resolve_spec(
        "sft",
        size="tiny",
        run_id="x",
        sets=["lora.r=16", "lora.target_modules=[q_proj,v_proj]", "bits=8", "packing=true"],
    )
    assert isinstance(spec, TrainSpec)
    assert spec.lora.r == 16 and spec.lora.target_modules == ["q_proj", "v_proj"]
    assert spec.bits == 8 and spec.packing is True


def test_validation_lists_every_problem_with_file_and_line(tmp_path: Path) -> None:
    spec_file = tmp_path / "pretrain.yaml"
    spec_file.write_text("block_size: 512\nlr: -1\nlora:\n  r: 0\n  alpah: 3\nbits: 3\n", encoding="utf-8")
    with pytest.raises(SpecError) as caught:
        resolve_spec("pretrain", size="tiny", run_id="x", file=spec_file, sets=["max_steps=zero", "novalue"])
    problems = caught.value.problems
    text = "\n".join(problems)
    assert len(problems) == 6, text
    assert f"lr: Input should be greater than 0 (got -1) [{spec_file}:2]" in problems
    assert any(p.startswith("lora.r:") and p.endswith(f"[{spec_file}:4]") for p in problems)
    assert any(p.startswith("lora.alpah: unknown field") and p.endswith(f"[{spec_file}:5]") for p in problems)
    assert any(p.startswith("bits:") and f"{spec_file}:6" in p for p in problems)
    assert any(p.startswith("max_steps:") for p in problems)
    assert any("--set 'novalue'" in p for p in problems)


def test_run_id_must_name_kubernetes_objects() -> None:
    with pytest.raises(SpecError, match="run_id: 'Bad_ID' is not a valid run id"):
        resolve_spec("merge", size="tiny", run_id="Bad_ID")


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: 1\nlora: [unclosed\n", encoding="utf-8")
    with pytest.raises(SpecError, match=rf"{bad}:\d+: not valid YAML"):
        resolve_spec("pretrain", file=bad, run_id="x")
