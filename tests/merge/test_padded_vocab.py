"""Adapters trained with pad_vocab_multiple on a tokenizer whose size is not a multiple of it: the merge drops the
padding rows, and the merged model (exactly the tokenizer's rows) computes what base + adapters compute over every
real token; eval/generate's loader builds the same model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from tests.train.tiny import spec_for
from zhllama.data import BlockData, DocumentEncoder, blocks_of_files, list_data_files
from zhllama.errors import UserError
from zhllama.merge import merge_lora
from zhllama.models.loading import load_causal_lm
from zhllama.train import sft_dataset, train

MULTIPLE = 64


@pytest.fixture(scope="module")
def padded(tiny: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny zh tokenizer plus an added token or two (a size that is not a multiple of 64), and a pretraining
    adapter trained on it with pad_vocab_multiple=64."""
    root = tmp_path_factory.mktemp("padded")
    tokenizer = AutoTokenizer.from_pretrained(tiny["zh_tokenizer"])
    added = ["龘靐"] if (len(tokenizer) + 1) % MULTIPLE else ["龘靐", "爩鱻"]
    assert tokenizer.add_tokens(added) == len(added)
    assert len(tokenizer) % MULTIPLE != 0
    tokenizer.save_pretrained(root / "tokenizer")
    encoder = DocumentEncoder(tokenizer.backend_tokenizer, tokenizer.eos_token_id)
    blocks = blocks_of_files(list_data_files([tiny["small_corpus"]]), encoder, 32, root / "blocks")
    spec = spec_for(tiny, tokenizer=f"file://{root / 'tokenizer'}", data=[f"file://{tiny['small_corpus']}"],
                    max_steps=3, pad_vocab_multiple=MULTIPLE)
    train(spec, base_model_dir=tiny["base"], tokenizer_dir=root / "tokenizer", dataset=BlockData(blocks),
          output_dir=root / "pt", metrics_dir=root / "pt-metrics")
    return {"root": root, "tokenizer": root / "tokenizer", "pt": root / "pt"}


def real_ids(tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """Text with the added token, and random ids over the whole tokenizer (the last id included)."""
    text = tokenizer("龘靐人民日报龘靐")["input_ids"]
    rest = torch.randint(0, len(tokenizer), (24,), generator=torch.Generator().manual_seed(0)).tolist()
    return torch.tensor([text + rest + [len(tokenizer) - 1]])


def peft_logits(base: Path, adapters: list[Path], ids: torch.Tensor) -> torch.Tensor:
    """Base + adapters as PEFT builds them at the adapters' own rows (padding included), earlier ones folded."""
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model.resize_token_embeddings(json.loads((adapters[0] / "zhllama_adapter.json").read_text())["rows"])
    for adapter in adapters[:-1]:
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    with torch.no_grad():
        return PeftModel.from_pretrained(model, adapters[-1]).eval()(input_ids=ids).logits


def check_merged(padded: dict[str, Path], base: Path, adapters: list[Path], out: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(padded["tokenizer"])
    rows = json.loads((adapters[-1] / "zhllama_adapter.json").read_text())["rows"]
    assert rows % MULTIPLE == 0 and rows > len(tokenizer)  # the adapters do carry padding rows

    summary = merge_lora(base, adapters, adapters[-1], out, max_shard_bytes=10**9, dtype="float32")
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert summary["vocab_size"] == len(tokenizer)
    assert merged.get_input_embeddings().num_embeddings == merged.get_output_embeddings().out_features
    assert merged.get_input_embeddings().num_embeddings == len(tokenizer)

    ids = real_ids(tokenizer)
    expected = peft_logits(base, adapters, ids)
    assert expected.shape[-1] == rows
    with torch.no_grad():
        logits = merged(input_ids=ids).logits
        loaded, loaded_tokenizer = load_causal_lm(base, adapters, device="cpu")
        from_loader = loaded(input_ids=ids).logits
    assert len(loaded_tokenizer) == len(tokenizer)
    torch.testing.assert_close(logits, expected[..., : len(tokenizer)], rtol=0, atol=1e-4)
    torch.testing.assert_close(from_loader, logits, rtol=0, atol=1e-4)


def test_merge_drops_the_padding_rows_of_a_pretraining_adapter(tiny: dict[str, Path], padded: dict[str, Path],
                                                               tmp_path: Path) -> None:
    check_merged(padded, tiny["base"], [padded["pt"]], tmp_path / "merged")


def test_padding_is_only_what_the_record_says(tiny: dict[str, Path], padded: dict[str, Path], tmp_path: Path) -> None:
    """The rows past another tokenizer's are not padding: the tokenizer without the added token is refused."""
    rows = json.loads((padded["pt"] / "zhllama_adapter.json").read_text())["rows"]
    smaller, trained = (len(AutoTokenizer.from_pretrained(tiny["zh_tokenizer"])),
                        len(AutoTokenizer.from_pretrained(padded["tokenizer"])))
    assert smaller < trained < rows
    out = tmp_path / "merged"
    with pytest.raises(UserError, match=f"has {rows} rows but the tokenizer .* has {smaller} tokens"):
        merge_lora(tiny["base"], [padded["pt"]], tiny["zh_tokenizer"], out, max_shard_bytes=10**9, dtype="float32")
    with pytest.raises(UserError, match=f"a tokenizer of {trained} tokens but the tokenizer has {smaller};"):
        load_causal_lm(tiny["base"], [padded["pt"]], tokenizer=tiny["zh_tokenizer"], device="cpu")
    assert not out.exists()


def test_sft_on_a_padded_adapter_with_another_multiple_merges_too(tiny: dict[str, Path], padded: dict[str, Path],
                                                                  tmp_path: Path) -> None:
    """SFT keeps the pretraining adapter's padding rows (never an input id) whatever its own pad_vocab_multiple."""
    tokenizer = AutoTokenizer.from_pretrained(padded["tokenizer"])
    spec = spec_for(tiny, stage="sft", tokenizer=f"file://{padded['tokenizer']}", data=[f"file://{tiny['sft']}"],
                    block_size=200, max_steps=2, pad_vocab_multiple=1, base_adapters=[f"file://{padded['pt']}"])
    dataset, _ = sft_dataset([tiny["sft"]], tokenizer, spec)
    result = train(spec, base_model_dir=tiny["base"], tokenizer_dir=padded["tokenizer"], dataset=dataset,
                   base_adapter_dirs=[padded["pt"]], output_dir=tmp_path / "sft", metrics_dir=tmp_path / "ms")
    assert result.vocab["tokenizer_size"] == len(tokenizer) and result.vocab["new_rows"] == 0
    check_merged(padded, tiny["base"], [padded["pt"], tmp_path / "sft"], tmp_path / "merged")
