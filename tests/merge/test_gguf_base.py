"""A GGUF base (as the embedded SmolLM2 is) through pretraining, the merge and eval: imported once into the store's
cache, the import shared by the three stages, the merged model equal to the GGUF base with the adapter applied."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

import zhllama.models.gguf
from zhllama.merge import run_merge
from zhllama.models.loading import load_spec_model
from zhllama.quantize.export import export_gguf
from zhllama.run import RunContext
from zhllama.spec import EvalSpec, MergeSpec, TrainSpec
from zhllama.store import DirStore
from zhllama.train import run_pretrain
from zhllama.train.runtime_probe import write_synthetic_tokenizer

# transformers adds <|endoftext|> to a GGUF's tokenizer: 320 tokens, a multiple of pad_vocab_multiple, so the
# merge (which sizes the model by the tokenizer) takes the adapter's rows as they are.
VOCAB = 319
# Characters the synthetic byte-level tokenizer covers (bytes 0-32 are its alphabet), minus line breaks.
ALPHABET = [chr(c) for c in [*range(1, 9), *range(14, 28), 31, 32]]


def tiny_gguf(root: Path) -> Path:
    """A GGUF artifact directory: one F32 file of a random tied 2-layer LLaMA with a byte-level BPE tokenizer."""
    hf = root / "hf"
    write_synthetic_tokenizer(hf, VOCAB)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=True, eos_token_id=VOCAB - 1)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(hf)
    (root / "gguf").mkdir()
    export_gguf(hf, root / "gguf" / "tiny-F32.gguf", "F32")
    return root / "gguf"


def test_a_gguf_base_is_imported_once_for_pretraining_merge_and_eval(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    gguf = tiny_gguf(tmp_path)
    rng = random.Random(0)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join("".join(rng.choice(ALPHABET) for _ in range(60)) for _ in range(40)) + "\n",
                      encoding="utf-8")
    imported: list[Path] = []
    real_import = zhllama.models.gguf.import_gguf
    monkeypatch.setattr(zhllama.models.gguf, "import_gguf",
                        lambda source, out: (imported.append(source), real_import(source, out))[1])
    store = f"file://{tmp_path / 'store'}"

    pretrain = TrainSpec.model_validate({
        "run_id": "pt", "store": store, "base_model": f"file://{gguf}", "tokenizer": f"file://{gguf}",
        "data": [f"file://{corpus}"], "block_size": 16, "micro_batch_size": 2, "max_steps": 2, "log_every": 1,
        "checkpoint_every": 100, "warmup_ratio": 0.0, "pad_vocab_multiple": 64, "tokenize_workers": 1,
        "zero_stage": 0, "precision": "fp32"})
    run_pretrain(RunContext.create(pretrain, workdir=tmp_path / "work"))
    assert len(imported) == 1
    adapter = DirStore(tmp_path / "store").fetch_dir("runs/pt/outputs/adapter")
    assert (adapter / "tokenizer.json").is_file()  # the GGUF's tokenizer, saved as HF files beside the adapter

    merge = MergeSpec(run_id="merged", store=store, base_model=f"file://{gguf}", adapters=["run://pt/outputs/adapter"],
                      tokenizer="run://pt/outputs/adapter", dtype="float32", max_shard_size="100MB")
    run_merge(RunContext.create(merge, workdir=tmp_path / "work"))
    assert len(imported) == 1, "the merge re-imported the GGUF base instead of reusing the cached import"

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "store" / "runs" / "merged" / "outputs" / "model",
                                                  dtype=torch.float32).eval()
    evaluation = EvalSpec(run_id="ev", store=store, model=f"file://{gguf}", adapters=["run://pt/outputs/adapter"])
    reference, _ = load_spec_model(RunContext.create(evaluation, workdir=tmp_path / "work"), evaluation)
    assert len(imported) == 1, "eval re-imported the GGUF base instead of reusing the cached import"
    ids = torch.randint(0, VOCAB - 1, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, reference(input_ids=ids).logits,
                                   rtol=1e-4, atol=1e-4)
