"""Packed SFT: examples joined into one sequence still see only themselves, with every attention implementation;
and the attention implementation a run uses is resolved once, refused where it cannot run, and recorded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer
from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids

from tests.train.tiny import spec_for
from zhllama.data import (
    IGNORE_INDEX,
    Sample,
    SftReport,
    build_sft_sequences,
    collate,
    pack_sequences,
    read_sft_examples,
)
from zhllama.errors import UserError
from zhllama.train import build_model, process_env, sft_dataset, train
from zhllama.train.model import resolve_attn_implementation


def _give_lora_a_part(model: torch.nn.Module) -> None:
    """LoRA's B matrices start at zero; random ones make the adapters change the logits being compared."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_a_packed_example_sees_only_itself(tiny: dict[str, Path], attention: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny["zh_tokenizer"])
    spec = spec_for(tiny, stage="sft", data=[f"file://{tiny['sft']}"], attn_implementation=attention)
    model, _ = build_model(spec, tiny["base"], tokenizer, [], process_env(), "fp32")
    assert model.config._attn_implementation == attention
    _give_lora_a_part(model)
    model.eval()
    examples, _ = read_sft_examples([tiny["sft"]])
    eos, pad = int(tokenizer.eos_token_id), int(tokenizer.pad_token_id)
    alone = build_sft_sequences(examples[:5], tokenizer, eos, 400, packing=False, report=SftReport())
    packed = build_sft_sequences(examples[:5], tokenizer, eos, 400, packing=True, report=SftReport())
    assert len(packed) < len(alone) and len({len(row.input_ids) for row in packed}) > 1  # joined, and padded

    with torch.no_grad():
        packed_logits = model(**collate(packed, pad)).logits
        joined_logits = model(**collate([Sample(row.input_ids, row.labels) for row in packed], pad)).logits
        number, worst, joined_worst = 0, 0.0, 0.0
        for row, sequence in enumerate(packed):
            assert sequence.position_ids is not None
            for start in np.flatnonzero(sequence.position_ids == 0):
                example = alone[number]
                own = model(**collate([example], pad)).logits[0]
                end = start + len(example.input_ids)
                assert np.array_equal(sequence.input_ids[start:end], example.input_ids)
                worst = max(worst, float((packed_logits[row, start:end] - own).abs().max()))
                joined_worst = max(joined_worst, float((joined_logits[row, start:end] - own).abs().max()))
                number += 1
        assert number == len(alone)
        assert worst < 1e-5, worst
        # The check can fail: the same rows with one causal mask and running positions (the old batches) differ.
        assert joined_worst > 1e-2, joined_worst
        # The same targets, so the same mean loss as the examples side by side.
        packed_loss = model(**collate(packed, pad)).loss
        alone_loss = model(**collate(alone, pad)).loss
        assert abs(float(packed_loss - alone_loss)) < 1e-5


def test_packed_batches_carry_the_segments_flash_attention_reads() -> None:
    rows = pack_sequences([([5, 6, 7], [IGNORE_INDEX, 6, 7]), ([8, 9], [IGNORE_INDEX, 9]), ([4] * 4, [4] * 4)], 5)
    items = [Sample(*(np.asarray(values, dtype=np.int64) for values in row)) for row in rows]
    batch = collate(items, pad_id=0)
    assert "attention_mask" not in batch  # it would override the segments
    positions = batch["position_ids"]
    assert positions[0].tolist() == [*range(3), *range(2)]
    assert positions[1, :4].tolist() == list(range(4)) and batch["labels"][1, 4] == IGNORE_INDEX
    (cu_q, cu_k), (max_q, max_k) = prepare_fa_kwargs_from_position_ids(positions)  # transformers' own reading
    assert torch.equal(batch["cu_seq_lens_q"], cu_q) and torch.equal(batch["cu_seq_lens_k"], cu_k)
    assert int(batch["max_length_q"]) == int(max_q) and int(batch["max_length_k"]) == int(max_k)
    padding_start = positions.shape[1] + 4
    assert padding_start in batch["cu_seq_lens_q"].tolist()  # the padding joins no example


def test_packed_sft_trains_and_the_adapter_names_its_attention(tiny: dict[str, Path], tmp_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny["zh_tokenizer"])
    spec = spec_for(tiny, stage="sft", data=[f"file://{tiny['sft']}"], block_size=400, packing=True,
                    micro_batch_size=2, max_steps=10, lr=3e-3, attn_implementation="eager")
    dataset, record = sft_dataset([tiny["sft"]], tokenizer, spec)
    assert record["sft"]["sequences"] < record["sft"]["examples"]
    train(spec, base_model_dir=tiny["base"], tokenizer_dir=tiny["zh_tokenizer"], dataset=dataset,
          output_dir=tmp_path / "sft", metrics_dir=tmp_path / "m")
    losses = [json.loads(line)["loss"] for line in (tmp_path / "m" / "metrics.jsonl").read_text().splitlines()]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    adapter = json.loads((tmp_path / "sft" / "zhllama_adapter.json").read_text())
    assert adapter["attn_implementation"] == "eager"


def test_attention_is_sdpa_on_cpu_and_flash_attention_is_refused(tiny: dict[str, Path]) -> None:
    cpu = torch.device("cpu")
    assert resolve_attn_implementation("auto", cpu, "fp32") == "sdpa"
    assert resolve_attn_implementation("eager", cpu, "fp32") == "eager"
    with pytest.raises(UserError, match=r"^attn_implementation=flash_attention_2 needs a CUDA GPU; use "
                                        r"attn_implementation=sdpa") as err:
        resolve_attn_implementation("flash_attention_2", cpu, "fp32")
    assert "\n" not in str(err.value)
    spec = spec_for(tiny, attn_implementation="flash_attention_2")
    with pytest.raises(UserError, match=r"^attn_implementation=flash_attention_2 needs a CUDA GPU"):
        build_model(spec, tiny["base"], AutoTokenizer.from_pretrained(tiny["zh_tokenizer"]), [], process_env(),
                    "fp32")
