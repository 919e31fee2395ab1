"""The model a training stage starts from: base weights (an HF directory), merged adapters, resized vocabulary, LoRA.

New vocabulary rows start as the mean of the base rows of the piece's sub-tokens (as the BASE tokenizer splits the
piece), so the first steps see sensible logits instead of random rows (random rows overflowed fp16 at the start).
Embeddings and head are untied before wrapping: both are trained in full and saved as separate tensors.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Literal, cast

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import is_flash_attn_2_available

from zhllama.errors import UserError
from zhllama.models.adapter_vocab import adapter_vocab, padded_size
from zhllama.models.sentencepiece_tokenizer import SentencePieceTokenizer
from zhllama.spec import LoraSpec

InitMethod = Literal["subtoken_mean", "mean", "random"]


def check_quantization_supported(bits: int) -> None:
    """Refuse --bits 8/4 where bitsandbytes cannot run, before anything is loaded."""
    if bits == 16:
        return
    if not torch.cuda.is_available():
        raise UserError(f"bits={bits} needs a CUDA GPU (bitsandbytes); this machine has none: use bits=16")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError(f"bits={bits} needs the bitsandbytes package: pip install bitsandbytes, or use bits=16")


def resolve_attn_implementation(choice: str, device: torch.device, precision: str) -> str:
    """The attention `attn_implementation` means for a run at `precision` on `device`: auto is flash-attention 2
    where it runs (an sm80+ CUDA GPU, the flash-attn package, 16-bit precision), else sdpa; an explicit
    flash_attention_2 that cannot run is refused."""
    missing = _flash_attention_missing(device, precision)
    if choice == "auto":
        return "sdpa" if missing else "flash_attention_2"
    if choice == "flash_attention_2" and missing:
        raise UserError(f"attn_implementation=flash_attention_2 needs {missing}; use attn_implementation=sdpa "
                        "(or auto)")
    return choice


def _flash_attention_missing(device: torch.device, precision: str) -> str | None:
    """What flash-attention 2 lacks on `device` at `precision`; None when it can run."""
    if device.type != "cuda":
        return "a CUDA GPU"
    if torch.cuda.get_device_capability(device) < (8, 0):
        return "an Ampere or newer GPU (sm80+)"
    if not is_flash_attn_2_available():  # the check from_pretrained makes
        return "the flash-attn package (pip install flash-attn --no-build-isolation)"
    if precision == "fp32":
        return "precision bf16 or fp16 (its kernels take no fp32)"
    return None


def load_base(model_dir: Path, dtype: torch.dtype, bits: int, device: torch.device, *,
              attn_implementation: str = "sdpa") -> PreTrainedModel:
    """The frozen base; with bits 8/4 the linear layers are quantized and embeddings/head stay full precision.

    `attn_implementation` is what `resolve_attn_implementation` chose (the recipe's build_model resolves it).
    """
    kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": True, "attn_implementation": attn_implementation}
    if bits in (8, 4):
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_8bit=bits == 8, load_in_4bit=bits == 4, bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype,
            llm_int8_skip_modules=["embed_tokens", "lm_head"],
        )
        kwargs["device_map"] = {"": device}
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    except OSError as err:
        raise UserError(
            f"base model {model_dir}: {str(err).splitlines()[0]}; give an HF directory or a GGUF file"
        ) from None
    if bits in (8, 4):
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    # Training never reads a KV cache back, and with one transformers would not cut packed examples apart (it
    # derives their mask from position_ids only without a cache).
    model.config.use_cache = False
    model.requires_grad_(False)
    return model


def zero3_loading(ds_config: dict[str, Any]) -> Any:
    """transformers' HfDeepSpeedConfig for the engine's ZeRO-3 config: while the caller holds it, from_pretrained
    builds the model under deepspeed.zero.Init and loads the weights module by module into the shards (rank 0 reads
    the checkpoint; each module is gathered only while its values are copied in).

    Keep the returned object referenced until deepspeed.initialize has run (transformers only keeps a weakref).
    """
    import deepspeed
    import torch.distributed as dist
    from transformers.integrations.deepspeed import HfDeepSpeedConfig

    # zero.Init reads the world size from deepspeed.comm: wrap the process group torchrun's ranks already started.
    deepspeed.init_distributed(dist_backend=dist.get_backend(), dist_init_required=False)
    return HfDeepSpeedConfig(ds_config)


def is_partitioned(tensor: torch.Tensor) -> bool:
    """A ZeRO-3 parameter: the rank holds only its shard (`ds_tensor`); the tensor itself is empty until gathered."""
    return hasattr(tensor, "ds_id")


def is_zero3_model(model: torch.nn.Module) -> bool:
    """Built under zero.Init (a just-resized embedding may be whole for a moment: ask the other weights)."""
    return any(is_partitioned(p) for p in model.parameters())


def full_shape(param: torch.Tensor) -> torch.Size:
    return cast(torch.Size, getattr(param, "ds_shape")) if is_partitioned(param) else param.shape  # noqa: B009


def frozen_elements(model: torch.nn.Module) -> tuple[int, int]:
    """Elements of the frozen weights this rank holds (its shard of a partitioned one) and in the whole model."""
    local = total = 0
    for param in model.parameters():
        if param.requires_grad:
            continue
        partitioned = is_partitioned(param)
        # DeepSpeed adds these attributes to the parameters it partitions (torch's types do not know them).
        local += getattr(param, "ds_tensor").numel() if partitioned else param.numel()  # noqa: B009
        total += int(getattr(param, "ds_numel")) if partitioned else param.numel()  # noqa: B009
    return local, total


def move_unpartitioned(model: torch.nn.Module, device: torch.device) -> None:
    """ZeRO-3: move what is whole on every rank (LoRA weights, trained copies, buffers); shards stay where
    zero.Init put them (the local device)."""
    with torch.no_grad():
        for tensor in (*model.parameters(), *model.buffers()):
            if not is_partitioned(tensor):
                tensor.data = tensor.data.to(device)


def _ds_config() -> dict[str, Any]:
    """The DeepSpeed config zero3_loading registered with transformers."""
    from transformers.integrations.deepspeed import deepspeed_config

    config = deepspeed_config()
    if config is None:
        raise RuntimeError("a ZeRO-3 partitioned model without a live zero3_loading config")
    return cast(dict[str, Any], config)


def _zero_init() -> Any:
    """deepspeed.zero.Init with the config zero3_loading registered: modules built inside are partitioned."""
    import deepspeed

    return deepspeed.zero.Init(config_dict_or_path=_ds_config())


def untie_embeddings(model: PreTrainedModel) -> bool:
    """Give lm_head its own copy of the tied embedding matrix so both train and save apart; True if it was tied."""
    head, embed = output_embeddings(model), input_embeddings(model)
    if is_partitioned(embed.weight):
        # Every partitioned tensor is empty here (data_ptr 0): a tied head is the embedding's own parameter.
        tied = head.weight is embed.weight
        if tied:
            with _zero_init():
                new_head = torch.nn.Linear(head.in_features, head.out_features, bias=False, dtype=embed.weight.dtype)
            # Same shape on the same ranks: the new weight is split exactly as the embedding, so each rank copies
            # its own shard and nothing is gathered.
            with torch.no_grad():
                getattr(new_head.weight, "ds_tensor").copy_(getattr(embed.weight, "ds_tensor"))  # noqa: B009
            new_head.weight.requires_grad_(embed.weight.requires_grad)
            if head.bias is not None:
                new_head.bias = head.bias
            model.set_output_embeddings(new_head)
    else:
        tied = head.weight.data_ptr() == embed.weight.data_ptr()
        if tied:
            head.weight = torch.nn.Parameter(embed.weight.detach().clone(),
                                             requires_grad=embed.weight.requires_grad)
    model.config.tie_word_embeddings = False
    if hasattr(model.config, "get_text_config"):
        model.config.get_text_config().tie_word_embeddings = False
    return tied


def input_embeddings(model: PreTrainedModel) -> torch.nn.Embedding:
    return cast(torch.nn.Embedding, model.get_input_embeddings())


def output_embeddings(model: PreTrainedModel) -> torch.nn.Linear:
    return cast(torch.nn.Linear, model.get_output_embeddings())


def check_extends(base: PreTrainedTokenizerBase, new: PreTrainedTokenizerBase) -> None:
    """The new vocabulary must keep every base piece at its id (the first ids ARE the base vocabulary)."""
    new_vocab = new.get_vocab()
    for piece, index in base.get_vocab().items():
        if new_vocab.get(piece) != index:
            raise UserError(
                f"tokenizer: it does not extend the base model's vocabulary (base piece {piece!r} has id {index}, "
                f"the tokenizer gives {new_vocab.get(piece)}); build it from this base with the tokenizer stage"
            )


def _subtoken_ids(base: PreTrainedTokenizerBase, new: PreTrainedTokenizerBase, index: int, base_rows: int) -> list[int]:
    """Ids of the base pieces the base tokenizer's model splits new piece `index` into ([] for special tokens)."""
    if index in new.all_special_ids or index in new.added_tokens_decoder:
        return []
    piece = new.convert_ids_to_tokens(index)
    if isinstance(base, SentencePieceTokenizer):
        ids = _sentencepiece_split(base, str(piece))
    else:
        # The tokenization model works on pieces in the vocabulary's own alphabet (▁ or byte-level), so the split
        # is the one the base would make of that text, without normalizer or pre-tokenizer side effects.
        ids = [token.id for token in base.backend_tokenizer.model.tokenize(piece)]
    unk = base.unk_token_id
    return [i for i in ids if i < base_rows and i != unk]


def _sentencepiece_split(base: SentencePieceTokenizer, piece: str) -> list[int]:
    """The base's SentencePiece split of a new piece's text: a leading ▁ comes from the dummy prefix, as when the
    piece starts a word; a piece inside a word loses the ▁ piece the prefix adds before it."""
    text = piece.replace("▁", " ")
    ids: list[int] = base.sp_model.encode(text[1:] if piece.startswith("▁") else text)
    space = base.sp_model.piece_to_id("▁")
    return ids[1:] if not piece.startswith("▁") and ids[:1] == [space] else ids


def new_row_values(
    weight: torch.Tensor,
    base_rows: int,
    subtokens: list[list[int]],
    method: InitMethod,
    generator: torch.Generator,
    std: float,
) -> torch.Tensor:
    """Values for the rows after `base_rows` (one per entry of `subtokens`)."""
    base = weight[:base_rows].float()
    mean = base.mean(dim=0)
    rows = mean.expand(len(subtokens), -1).clone()
    if method == "random":
        rows = torch.randn(rows.shape, generator=generator) * std
    elif method == "subtoken_mean":
        for row, ids in enumerate(subtokens):
            if ids:
                rows[row] = base[ids].mean(dim=0)
    return rows.to(weight.dtype)


def resize_vocabulary(
    model: PreTrainedModel,
    base_tokenizer: PreTrainedTokenizerBase | None,
    tokenizer: PreTrainedTokenizerBase,
    method: InitMethod,
    pad_multiple: int,
    seed: int,
) -> dict[str, Any]:
    """Resize embed_tokens and lm_head (untied) to the tokenizer and initialise the new rows; returns a record."""
    base_rows = full_shape(input_embeddings(model).weight)[0]
    rows = padded_size(max(len(tokenizer), base_rows), pad_multiple)
    record: dict[str, Any] = {"base_rows": base_rows, "rows": rows, "tokenizer_size": len(tokenizer),
                              "init_new_rows": method, "new_rows": rows - base_rows}
    if rows == base_rows:
        return record
    if method == "subtoken_mean" and base_tokenizer is None:
        raise UserError("init_new_rows=subtoken_mean needs the base model's tokenizer files beside its weights; "
                        "add them, or set init_new_rows=mean")
    if base_tokenizer is not None:
        check_extends(base_tokenizer, tokenizer)
    subtokens = [
        _subtoken_ids(base_tokenizer, tokenizer, i, base_rows) if base_tokenizer is not None and i < len(tokenizer)
        else []
        for i in range(base_rows, rows)
    ]
    record["rows_from_subtokens"] = sum(1 for ids in subtokens if ids)
    std = float(getattr(model.config, "initializer_range", 0.02))
    generator = torch.Generator().manual_seed(seed)
    if is_zero3_model(model):
        _resize_partitioned(model, rows, base_rows, subtokens, method, generator, std)
        return record
    old = [input_embeddings(model).weight.detach(), output_embeddings(model).weight.detach()]
    model.resize_token_embeddings(rows, mean_resizing=False)
    resized = (input_embeddings(model).weight, output_embeddings(model).weight)
    for weight, previous in zip(resized, old, strict=True):
        with torch.no_grad():
            weight[base_rows:] = new_row_values(previous, base_rows, subtokens, method, generator, std)
    model.config.vocab_size = rows
    return record


def _resize_partitioned(
    model: PreTrainedModel,
    rows: int,
    base_rows: int,
    subtokens: list[list[int]],
    method: InitMethod,
    generator: torch.Generator,
    std: float,
) -> None:
    """resize_vocabulary under ZeRO-3, one matrix at a time (embedding, then head; nothing else is gathered).

    transformers (5.x) gathers each old matrix, builds the new one whole on every rank and copies the base rows in;
    the new rows are filled from those base rows and the matrix is partitioned again before the next is touched.
    """
    import deepspeed

    model.resize_token_embeddings(rows, mean_resizing=False)
    for module in (input_embeddings(model), output_embeddings(model)):
        weight = module.weight
        # Every rank computes the same rows (same generator state); a partitioned matrix keeps rank 0's.
        with deepspeed.zero.GatheredParameters([weight], modifier_rank=0), torch.no_grad():
            weight.data[base_rows:] = new_row_values(weight.data, base_rows, subtokens, method, generator, std)
        if not is_partitioned(weight):
            deepspeed.zero.Init(module=module, config_dict_or_path=_ds_config())
    model.config.vocab_size = rows


def merge_adapters(model: PreTrainedModel, adapter_dirs: list[Path], tokenizer_size: int) -> PreTrainedModel:
    """Merge trained adapters into the base in order (SFT trains on base + the pretraining adapter).

    Each is loaded at the rows it was trained with, padding included: padding rows are never an input id, and
    this run's resize_vocabulary pads from there to its own pad_vocab_multiple.
    """
    for adapter_dir in adapter_dirs:
        vocab = adapter_vocab(adapter_dir)
        if vocab is not None and vocab.tokens != tokenizer_size:
            raise UserError(
                f"base_adapters: {adapter_dir} was trained with a tokenizer of {vocab.tokens} tokens "
                f"({vocab.rows} rows) but this tokenizer has {tokenizer_size}; use the tokenizer that adapter was "
                "trained with"
            )
        if vocab is not None and full_shape(input_embeddings(model).weight)[0] != vocab.rows:
            model.resize_token_embeddings(vocab.rows, mean_resizing=False)
            model.config.vocab_size = vocab.rows
        if is_zero3_model(model):
            model = _merge_partitioned(PeftModel.from_pretrained(model, adapter_dir))
        else:
            model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    return model


def _merge_partitioned(peft_model: PeftModel) -> PreTrainedModel:
    """merge_and_unload under ZeRO-3: each LoRA layer's base weight is gathered alone, merged and re-partitioned.

    The adapter's embed_tokens/lm_head come back as PEFT's whole copies (it gathers each original to copy it, as it
    does for modules_to_save in add_lora); they are partitioned again right after the unload.
    """
    import deepspeed
    from peft.tuners.lora import LoraLayer

    for module in peft_model.modules():
        if isinstance(module, LoraLayer):
            base = module.get_base_layer()
            # Every rank merges the same delta into the gathered weight; rank 0's result is scattered back.
            with deepspeed.zero.GatheredParameters([base.weight], modifier_rank=0):
                module.merge()
    model = cast(PreTrainedModel, peft_model.unload())
    for trained in (input_embeddings(model), output_embeddings(model)):
        if any(not is_partitioned(p) for p in trained.parameters()):
            deepspeed.zero.Init(module=trained, config_dict_or_path=_ds_config())
    return model


def add_lora(model: PreTrainedModel, lora: LoraSpec, gradient_checkpointing: bool) -> PeftModel:
    """Wrap with LoRA on the target modules; modules_to_save (embeddings and head) are trained in full."""
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    missing = [m for m in lora.target_modules if not any(n.endswith(f".{m}") for n, _ in model.named_modules())]
    if missing:
        raise UserError(f"lora.target_modules: {', '.join(missing)} not found in the model; check the names")
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,  # type: ignore[arg-type]  # PEFT scales by alpha / r; a float works
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        modules_to_save=list(lora.modules_to_save),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)
