"""Load a causal LM for evaluation or generation: an HF directory, a GGUF file, or a base plus LoRA adapters."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from zhllama.errors import UserError

if TYPE_CHECKING:
    from zhllama.runs import RunContext
    from zhllama.spec.models import EvalSpec, GenerateSpec

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


def load_causal_lm(
    model: Path,
    adapters: list[Path],
    tokenizer: Path | None = None,
    gguf_file: str | None = None,
    device: str | None = None,
) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """Load `model` with `adapters` applied in order, in eval mode, on `device` (default: cuda if available).

    `model` is an HF directory, a `.gguf` file, or a directory holding `gguf_file`. The tokenizer comes from
    `tokenizer`, else from the last adapter that ships one (the SFT adapter carries the extended vocabulary),
    else from the model. The base's embeddings are resized to the tokenizer's length before the adapters load,
    because adapters trained on the extended vocabulary save full embed_tokens/lm_head of that size.
    """
    model, gguf_file = _locate_weights(model, gguf_file)

    tokenizer_dir = tokenizer or _tokenizer_dir(model, adapters)
    tokenizer_gguf = gguf_file if tokenizer_dir == model else None
    tok = AutoTokenizer.from_pretrained(tokenizer_dir, gguf_file=tokenizer_gguf)

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    base: PreTrainedModel = AutoModelForCausalLM.from_pretrained(model, gguf_file=gguf_file, dtype=dtype)
    lm = _apply_adapters(base, adapters, len(tok)) if adapters else base
    return lm.to(device).eval(), tok


def load_spec_model(ctx: RunContext, spec: EvalSpec | GenerateSpec) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """`load_causal_lm` on the spec's model, adapters and tokenizer, fetched through the run context."""
    return load_causal_lm(
        ctx.input(spec.model),
        [ctx.input(uri) for uri in spec.adapters],
        ctx.input(spec.tokenizer) if spec.tokenizer else None,
        spec.gguf_file,
    )


def _locate_weights(model: Path, gguf_file: str | None) -> tuple[Path, str | None]:
    """(model directory, GGUF file name or None) for a model file, an HF directory or a GGUF artifact."""
    if model.is_file():
        if model.suffix != ".gguf":
            raise UserError(f"{model}: a model file must be .gguf; pass an HF model directory otherwise")
        return model.parent, model.name
    if not model.is_dir():
        raise UserError(f"{model}: model not found; pass an HF model directory or a .gguf file")
    if gguf_file is not None:
        if not (model / gguf_file).is_file():
            raise UserError(f"{model}: gguf_file {gguf_file!r} is not in the model directory")
        return model, gguf_file
    if (model / "config.json").is_file():
        return model, None
    ggufs = sorted(path.name for path in model.glob("*.gguf"))
    if len(ggufs) == 1:
        return model, ggufs[0]
    if ggufs:
        raise UserError(f"{model}: several GGUF files ({', '.join(ggufs)}); set gguf_file to the one to load")
    raise UserError(f"{model}: neither an HF model directory (no config.json) nor a GGUF artifact (no .gguf)")


def _tokenizer_dir(model: Path, adapters: list[Path]) -> Path:
    for adapter in reversed(adapters):
        if any((adapter / name).is_file() for name in TOKENIZER_FILES):
            return adapter
    return model


def _apply_adapters(base: PreTrainedModel, adapters: list[Path], vocab_size: int) -> torch.nn.Module:
    from peft import PeftModel

    embeddings = cast(torch.nn.Embedding, base.get_input_embeddings())
    if embeddings.num_embeddings != vocab_size:
        base.resize_token_embeddings(vocab_size)
    model: torch.nn.Module = base
    for index, adapter in enumerate(adapters):
        if not (adapter / "adapter_config.json").is_file():
            raise UserError(f"{adapter}: not a PEFT adapter directory (no adapter_config.json)")
        peft_model = PeftModel.from_pretrained(model, adapter)
        # PEFT cannot activate two adapters that both carry modules_to_save (embed_tokens/lm_head), so every
        # adapter but the last is folded into the in-memory weights: the same W + dW1 + dW2 the stages trained.
        is_last = index == len(adapters) - 1
        model = peft_model if is_last else peft_model.merge_and_unload()
    return model


def context_length(model: torch.nn.Module) -> int:
    """The most positions the model attends over (its config's max_position_embeddings)."""
    return int(getattr(model.config, "max_position_embeddings", 2048))


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device
