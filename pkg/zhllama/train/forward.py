"""The training forward pass: the loss, fused or the model's own, and torch.compile of the decoder layers.

With a vocabulary of 50k rows the fp32 logits of a micro-batch outweigh every other activation. A fused loss never
holds them whole: it runs the decoder for the last hidden states, then the head and cross-entropy a slice of tokens
at a time, either in Liger kernel's fused linear + cross-entropy (CUDA) or in PyTorch (`chunked`, each slice under
activation checkpointing so the backward pass recomputes its logits). Both reduce as the model's own loss does:
labels shifted by one, the mean over the targets that are not IGNORE_INDEX.

The fused loss lives in a module's forward (`LossForward`) because DDP and DeepSpeed synchronise gradients only
through the forward of the module they wrap; the engines wrap it and keep the PeftModel for saving and loading.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, cast

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from zhllama.data.sft import IGNORE_INDEX
from zhllama.errors import UserError
from zhllama.spec import TrainSpec

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel

FusedLoss = Literal["liger", "chunked", "off"]


def resolve_fused_cross_entropy(spec: TrainSpec, device: torch.device) -> FusedLoss:
    """The loss `spec.fused_cross_entropy` means on `device`: auto is liger on CUDA where liger-kernel imports
    (and the head is not ZeRO-3 partitioned), else off; an explicit liger that cannot run is refused."""
    wanted = spec.fused_cross_entropy
    if wanted == "auto":
        partitioned_head = spec.zero_stage == 3 and spec.bits == 16
        return "liger" if device.type == "cuda" and not partitioned_head and _liger_importable() else "off"
    if wanted == "liger":
        if device.type != "cuda":
            raise UserError("fused_cross_entropy=liger needs a CUDA GPU (Liger's kernels are triton); use "
                            "fused_cross_entropy=chunked (or auto) on CPU")
        if not _liger_importable():
            raise UserError("fused_cross_entropy=liger needs the liger-kernel package: pip install liger-kernel, or "
                            "use fused_cross_entropy=chunked")
    return wanted


def _liger_importable() -> bool:
    try:
        import liger_kernel.transformers.fused_linear_cross_entropy  # noqa: F401
    except ImportError:  # not installed, or without a triton to run on
        return False
    return True


def slice_tokens(tokens: int, vocab_rows: int, hidden: int) -> int:
    """Tokens per slice of a fused loss: as Liger sizes its chunks, so that one slice's logits are about as large as
    the hidden states of the whole micro-batch."""
    return max(1, math.ceil(tokens / math.ceil(vocab_rows / hidden)))


def shifted_targets(labels: torch.Tensor) -> torch.Tensor:
    """Each position's target: the next token's label; the last position has none. Flattened, as the logits are."""
    return F.pad(labels[..., 1:], (0, 1), value=IGNORE_INDEX).reshape(-1)


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                          bias: torch.Tensor | None = None, slice_size: int | None = None) -> torch.Tensor:
    """Mean cross-entropy of head(hidden) against the shifted labels, one slice of tokens at a time.

    Each slice's logits are computed (under autocast when it is on), upcast and reduced to a sum under activation
    checkpointing: nothing of them is kept for the backward pass, which computes them again slice by slice.
    """
    flat = hidden.reshape(-1, hidden.shape[-1])
    targets = shifted_targets(labels)
    size = slice_size or slice_tokens(len(flat), weight.shape[0], weight.shape[1])
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    # split, not indexing: its backward writes the slices' gradients into one tensor instead of a full-size one
    # per slice.
    for part, part_targets in zip(flat.split(size), targets.split(size), strict=True):
        total = total + checkpoint(_summed_cross_entropy, part, weight, bias, part_targets, use_reentrant=False)
    return total / (targets != IGNORE_INDEX).sum()


def _summed_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                          targets: torch.Tensor) -> torch.Tensor:
    logits = F.linear(hidden, weight, bias).float()  # the model's own loss upcasts too
    return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")


def liger_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                        bias: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy of head(hidden) against the shifted labels in Liger's fused kernel (CUDA only)."""
    from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss

    fused = LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE_INDEX, reduction="mean")
    return cast(torch.Tensor, fused(weight, hidden.reshape(-1, hidden.shape[-1]), shifted_targets(labels), bias))


def active_head(head: torch.nn.Module) -> torch.nn.Linear:
    """The linear layer the model's head runs: PEFT's trained copy of lm_head (modules_to_save), not the frozen
    original it keeps beside it; the head itself when PEFT does not wrap it."""
    from peft.utils.other import ModulesToSaveWrapper  # lazily: the memory plan (ctl) imports this module

    if not isinstance(head, ModulesToSaveWrapper):
        return cast(torch.nn.Linear, head)
    # The rule of ModulesToSaveWrapper.forward: the active adapter's copy, the original when adapters are off.
    adapters = head.active_adapters
    if head.disable_adapters or not adapters or adapters[0] not in head.modules_to_save:
        return cast(torch.nn.Linear, head.original_module)
    return cast(torch.nn.Linear, head.modules_to_save[adapters[0]])


class LossOutput(NamedTuple):
    """What the engines read of a forward pass, as of the model's own output (a NamedTuple, which DDP traverses)."""

    loss: torch.Tensor


class LossForward(torch.nn.Module):
    """A PeftModel's forward with the head and loss fused: `forward(**batch).loss` as the model's own returns it."""

    def __init__(self, model: torch.nn.Module, method: Literal["liger", "chunked"]) -> None:
        super().__init__()
        # The PeftModel's only child, under the PeftModel's own name for it: parameter and state_dict names are the
        # PeftModel's, so what DeepSpeed saves of this module is what it saves of the PeftModel.
        self.base_model = cast(torch.nn.Module, model.base_model)
        self.fused_loss = liger_cross_entropy if method == "liger" else chunked_cross_entropy

    def forward(self, labels: torch.Tensor, **inputs: Any) -> LossOutput:
        causal_lm = cast("PreTrainedModel", self.base_model.model)  # the model LoRA was injected into
        # No KV cache: training never reads it back.
        hidden = causal_lm.get_decoder()(**inputs, use_cache=False).last_hidden_state
        head = active_head(causal_lm.get_output_embeddings())
        return LossOutput(self.fused_loss(hidden, head.weight, labels, head.bias))


def training_forward(model: torch.nn.Module, fused_loss: FusedLoss) -> torch.nn.Module:
    """The module whose forward an engine runs (and DDP/DeepSpeed wrap): the model itself when the loss is off."""
    return model if fused_loss == "off" else LossForward(model, fused_loss)


def compile_decoder_layers(model: PeftModel) -> int:
    """torch.compile each decoder layer in place (as torchtune does): one layer's graph serves them all, module and
    parameter names stay as they were, and the head and loss stay eager. Returns how many layers were compiled."""
    causal_lm = cast("PreTrainedModel", model.get_base_model())
    layers = cast(torch.nn.ModuleList, causal_lm.get_decoder().layers)
    for layer in layers:
        layer.compile()
    return len(layers)
