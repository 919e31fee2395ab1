"""Load what the paths name: a tokenizer (HF files or a GGUF's own), and a causal LM for evaluation or generation
(an HF directory, a GGUF file, or a base plus LoRA adapters)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from zhllama.errors import UserError
from zhllama.models.adapter_vocab import adapter_vocab
from zhllama.models.gguf import hf_model_dir
from zhllama.models.paths import ModelFiles, locate_model, locate_tokenizer, tokenizer_of
from zhllama.models.sentencepiece_tokenizer import is_sentencepiece_directory, load_sentencepiece_tokenizer

if TYPE_CHECKING:
    from zhllama.run import RunContext
    from zhllama.spec.models import EvalSpec, GenerateSpec


def load_tokenizer(source: Path | ModelFiles, *, field: str = "tokenizer") -> PreTrainedTokenizerBase:
    """The tokenizer of an HF tokenizer directory, a model directory, or a GGUF file (or its directory): the fast
    tokenizer, or SentencePiece itself where tokenizer.json cannot express the model (sentencepiece_tokenizer.py)."""
    files = source if isinstance(source, ModelFiles) else locate_tokenizer(source, field=field)
    try:
        if files.gguf_file is None and is_sentencepiece_directory(files.directory):
            return load_sentencepiece_tokenizer(files.directory)
        if files.gguf_file is not None:
            return AutoTokenizer.from_pretrained(files.directory, gguf_file=files.gguf_file)
        return AutoTokenizer.from_pretrained(files.directory, local_files_only=True)
    except (OSError, ValueError) as err:
        raise UserError(f"{field} {files.gguf or files.directory}: cannot be loaded ({str(err).splitlines()[0]}); "
                        "give the tokenizer stage's output or an HF model directory") from None


def tokenizer_directory(path: Path, scratch: Path, *, field: str = "tokenizer") -> Path:
    """A directory of HF tokenizer files for `path`: a tokenizer directory as it is, or one saved (under
    `scratch`) from a GGUF's embedded tokenizer."""
    files = locate_tokenizer(path, field=field)
    if files.gguf_file is None:
        return files.directory
    saved = scratch / "gguf-tokenizer"
    load_tokenizer(files, field=field).save_pretrained(saved)
    return saved


def load_causal_lm(
    model: Path,
    adapters: list[Path],
    tokenizer: Path | None = None,
    device: str | None = None,
) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """Load `model` with `adapters` applied in order, in eval mode, on `device` (default: cuda if available).

    `model` is an HF directory, a `.gguf` file, or a directory holding one. The tokenizer comes from
    `tokenizer`, else from the last adapter that ships one (the SFT adapter carries the extended vocabulary),
    else from the model. The base's embeddings are resized to the rows each adapter was trained with before it
    loads (adapters trained on the extended vocabulary save full embed_tokens/lm_head of that size, padding
    included); the model returned has the tokenizer's rows.
    """
    files = locate_model(model, field="model", choose_with="gguf_file")
    tokenizer_files = locate_tokenizer(tokenizer) if tokenizer is not None else tokenizer_of(files, adapters)
    tok = load_tokenizer(tokenizer_files)

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    base: PreTrainedModel = AutoModelForCausalLM.from_pretrained(files.directory, gguf_file=files.gguf_file,
                                                                 dtype=dtype)
    lm = _apply_adapters(base, adapters, len(tok)) if adapters else base
    return lm.to(device).eval(), tok


def load_spec_model(ctx: RunContext, spec: EvalSpec | GenerateSpec) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """`load_causal_lm` on the spec's model, adapters and tokenizer, fetched through the run context; a GGUF model
    through the store's import cache, as the training stages load it (the pipeline's evals reuse their import)."""
    return load_causal_lm(
        hf_model_dir(ctx, spec.model, field="model", gguf_file=spec.gguf_file, choose_with="gguf_file"),
        [ctx.input(uri) for uri in spec.adapters],
        ctx.input(spec.tokenizer) if spec.tokenizer else None,
    )


def _apply_adapters(base: PreTrainedModel, adapters: list[Path], vocab_size: int) -> torch.nn.Module:
    """Each adapter is loaded at the rows it was trained with (its padding included); a model whose last adapter
    carries padding rows is cut to the tokenizer's rows, as the merge stage writes it, so no padding id is ever
    sampled or scored."""
    from peft import PeftModel

    model: torch.nn.Module = base
    rows = vocab_size
    for index, adapter in enumerate(adapters):
        if not (adapter / "adapter_config.json").is_file():
            raise UserError(f"adapters: {adapter} is not a PEFT adapter directory (no adapter_config.json); "
                            "pass a training stage's adapter output")
        vocab = adapter_vocab(adapter)
        if vocab is not None and vocab.tokens != vocab_size:
            raise UserError(f"adapters: {adapter} was trained with a tokenizer of {vocab.tokens} tokens but the "
                            f"tokenizer has {vocab_size}; pass the tokenizer that adapter was trained with")
        rows = vocab.rows if vocab is not None else vocab_size
        _resize_rows(cast(PreTrainedModel, model), rows)
        peft_model = PeftModel.from_pretrained(model, adapter)
        # PEFT cannot activate two adapters that both carry modules_to_save (embed_tokens/lm_head), so every
        # adapter but the last is folded into the in-memory weights: the same W + dW1 + dW2 the stages trained.
        # A PEFT model cannot be cut to the tokenizer's rows: the last is folded too where it carries padding.
        is_last = index == len(adapters) - 1
        model = peft_model if is_last and rows == vocab_size else peft_model.merge_and_unload()
    if rows != vocab_size:
        _resize_rows(cast(PreTrainedModel, model), vocab_size)
    return model


def _resize_rows(model: PreTrainedModel, rows: int) -> None:
    """embed_tokens and lm_head to `rows` rows (new rows are an adapter's to fill, cut rows are padding)."""
    # PEFT's merge_and_unload sets tie_word_embeddings=False where the folded adapter trained embed_tokens and
    # lm_head apart, so this resize does not tie them again.
    if cast(torch.nn.Embedding, model.get_input_embeddings()).num_embeddings != rows:
        model.resize_token_embeddings(rows)


def context_length(model: torch.nn.Module) -> int:
    """The most positions the model attends over (its config's max_position_embeddings)."""
    return int(getattr(model.config, "max_position_embeddings", 2048))


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of `text` as a model sees a document: the tokenizer's special tokens (BOS) included."""
    return list(tokenizer(text, add_special_tokens=True)["input_ids"])
