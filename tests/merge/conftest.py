"""The Alpaca-Plus recipe on a tiny LLaMA: base, pretraining LoRA, SFT LoRA, and the PEFT model's logits."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from transformers import LlamaForCausalLM

from tests.merge.merge_fixtures import EXTENDED_VOCAB, save_base, save_tokenizer, train_adapter


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory) -> Callable[[bool], dict[str, object]]:
    """Base + pretraining adapter + SFT adapter on an extended vocabulary, and the PEFT model's logits."""
    built: dict[bool, dict[str, object]] = {}

    def build(tied: bool) -> dict[str, object]:
        if tied in built:
            return built[tied]
        root = tmp_path_factory.mktemp("tied" if tied else "untied")
        base = save_base(root / "base", tied)
        tokenizer = save_tokenizer(root / "tokenizer", EXTENDED_VOCAB)
        model = LlamaForCausalLM.from_pretrained(base, dtype=torch.float32)
        model.resize_token_embeddings(EXTENDED_VOCAB, mean_resizing=False)
        pretrained = train_adapter(model, root / "pt-lora", rank=4, seed=1).merge_and_unload()
        sft = train_adapter(pretrained, root / "sft-lora", rank=8, seed=2, rslora=True).eval()
        inputs = torch.randint(0, EXTENDED_VOCAB, (2, 24), generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            logits = sft(input_ids=inputs).logits
        built[tied] = {
            "base": base,
            "tokenizer": tokenizer,
            "adapters": [root / "pt-lora", root / "sft-lora"],
            "inputs": inputs,
            "logits": logits,
            "root": root,
        }
        return built[tied]

    return build
