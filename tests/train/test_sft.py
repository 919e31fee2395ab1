"""SFT through the same loop: prompts masked out of the loss, trained on base + the pretraining adapter."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoTokenizer

from tests.train.tiny import spec_for
from zhllama.data import IGNORE_INDEX, BlockData, DocumentEncoder, blocks_of_files, list_data_files
from zhllama.prompts import alpaca_prompt
from zhllama.train import sft_dataset, train


def test_sft_masks_prompts_and_trains_on_base_plus_pretraining_adapter(tiny: dict[str, Path], tmp_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny["zh_tokenizer"])
    encoder = DocumentEncoder(tokenizer.backend_tokenizer, tokenizer.eos_token_id)
    blocks = blocks_of_files(list_data_files([tiny["corpus"]]), encoder, 32, tmp_path / "blocks")
    pretrain = spec_for(tiny, max_steps=3)
    train(pretrain, base_model_dir=tiny["base"], tokenizer_dir=tiny["zh_tokenizer"],
          dataset=BlockData(blocks), output_dir=tmp_path / "pt", metrics_dir=tmp_path / "m")

    spec = spec_for(tiny, stage="sft", data=[f"file://{tiny['sft']}"], block_size=200, max_steps=12, lr=3e-3,
                    base_adapters=[f"file://{tmp_path / 'pt'}"])
    dataset, record = sft_dataset([tiny["sft"]], tokenizer, spec)
    assert record["sft"]["examples"] == 64 and record["sft"]["sequences"] == 64
    records = [json.loads(line) for line in tiny["sft"].read_text(encoding="utf-8").splitlines()]
    first = records[0]
    prompt = tokenizer.encode(alpaca_prompt(first["instruction"], first["input"]))
    ids, labels, _ = dataset[0]
    assert ids[: len(prompt)].tolist() == prompt
    assert (labels[: len(prompt)] == IGNORE_INDEX).all()
    assert labels[len(prompt) :].tolist() == ids[len(prompt) :].tolist()
    assert ids[-1] == tokenizer.eos_token_id
    for index, record in enumerate(records):  # only the response and its eos are targets
        ids, labels, _ = dataset[index]
        targets = ids[labels != IGNORE_INDEX].tolist()
        assert targets == tokenizer.encode(record["output"], add_special_tokens=False) + [tokenizer.eos_token_id]

    result = train(spec, base_model_dir=tiny["base"], tokenizer_dir=tiny["zh_tokenizer"], dataset=dataset,
                   base_adapter_dirs=[tmp_path / "pt"], output_dir=tmp_path / "sft", metrics_dir=tmp_path / "ms")
    losses = [json.loads(line)["loss"] for line in (tmp_path / "ms" / "metrics.jsonl").read_text().splitlines()]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    assert result.vocab["rows"] == 832 and result.vocab["new_rows"] == 0
    assert json.loads((tmp_path / "sft" / "zhllama_adapter.json").read_text())["stage"] == "sft"
