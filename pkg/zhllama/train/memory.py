"""The memory plan of a training run: bytes per GPU (on CPU: per training process), component by component.

Each term is what the training code holds (train/model.py, engine.py, loop.py), derived from the architecture and
the spec, and checked against measured peaks (tests/train/test_memory_plan.py, bench/scale_memory.py):

- frozen weights: the base's linear layers at `bits`: 16 in the compute dtype; 8 (LLM.int8) one int8 byte plus one
  fp32 scale per output row; 4 (NF4, double quantization) half a byte plus an 8-bit absmax per 64 weights plus an
  fp32 scale per 256 absmax. embed_tokens/lm_head are never quantized, and prepare_model_for_kbit_training casts
  everything not quantized (norms, embeddings, head) to fp32. ZeRO-3 partitions frozen 16-bit weights over ranks.
- frozen embed_tokens/lm_head: PEFT's modules_to_save keeps the frozen originals beside the trained copies.
- trained tensors (LoRA, embed_tokens/lm_head copies): PlainEngine (zero_stage 0, or bits 8/4) holds them in fp32
  with fp32 grads, two fp32 AdamW moments and, on more than one rank, DDP's gradient buckets (a second copy of the
  grads). DeepSpeed holds 16-bit params and partitions the fp32 master copy, the moments and the grads over the
  ranks (ZeRO-2), and the params too (ZeRO-3; tensors under 1e5 elements stay whole, as DeepSpeed keeps them).
- activations: what autograd saves per decoder layer per token (`_layer_bytes`, which names each tensor); with
  gradient checkpointing only each layer's input, plus one layer recomputed in the backward pass.
- logits: the loss upcasts them to fp32 and log_softmax saves its fp32 output; at the start of the backward pass
  that output, its incoming gradient and the gradient it returns coexist: 12 bytes per vocabulary row per token.
  A fused loss (fused_cross_entropy liger/chunked, train/forward.py) holds that for one slice of tokens at a time;
  Liger also keeps the gradients it computes in the forward pass (hidden states', trained head's) until the
  backward. auto is planned as off: the machine planning cannot tell whether the training image has liger-kernel.
- runtime: on CPU the measured resident set of a process that imported the training code and loaded two
  tokenizers of the run's size (train/runtime_probe.py); on GPU a reserve for what lives outside torch's allocator.
- load (CPU): from_pretrained maps the safetensors file and, when the dtype changes, converts every tensor; the
  plan's total is the larger of that phase and training.

Not modelled: allocator fragmentation. On CPU glibc keeps freed temporaries in its free lists (about 290 MiB at the
peak of the smol preset, 8 % of its resident set; tensors alone match the live heap within 2 %), so the CPU estimate
runs a few per cent under the measured resident set. On GPU the caching allocator's reserve is not counted either.
SFT batches are taken as block_size long (the worst case); shorter examples use less.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from zhllama.errors import UserError
from zhllama.spec import TrainSpec
from zhllama.train.architecture import KNOWN_ARCHITECTURES, Architecture
from zhllama.train.engine import auto_precision
from zhllama.train.forward import slice_tokens
from zhllama.train.runtime_probe import cpu_runtime_bytes, peak_rss_bytes

if TYPE_CHECKING:
    import torch

__all__ = ["GIB", "KNOWN_ARCHITECTURES", "Architecture", "MemoryPlan", "estimate_for_run", "measured_peak_bytes"]

GIB = 2**30
CUDA_RUNTIME_BYTES = GIB
"""GPU memory outside torch's caching allocator (not in max_memory_allocated): the CUDA context with cuBLAS/cuDNN
(about 0.5 GiB with lazy module loading) and NCCL's communicator buffers (a few MiB per channel and peer)."""
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)
REDUCE_BUCKET = 5e7  # reduce_bucket_size in engine.deepspeed_config
PREFETCH_BUCKET = 5e7  # DeepSpeed's stage3_prefetch_bucket_size default
MAX_LIVE_PARAMETERS = 1e9  # DeepSpeed's stage3_max_live_parameters default
PERSISTENCE_THRESHOLD = 1e5  # DeepSpeed's stage3_param_persistence_threshold default


@dataclass(frozen=True)
class _Regime:
    deepspeed: bool  # ZeRO-2/3 of a 16-bit base; otherwise PlainEngine (one process or DDP)
    zero: int
    compute: int  # bytes of the compute dtype
    autocast: bool  # PlainEngine in bf16/fp16: fp32 trained tensors, 16-bit matmuls
    cuda: bool
    world: int


def _regime(spec: TrainSpec, world_size: int, device_type: str) -> _Regime:
    cuda = device_type == "cuda"
    # Planned before any GPU is seen: auto's fp16 fallback (bf16 only emulated) costs the same 2 bytes as bf16.
    precision = spec.precision if spec.precision != "auto" else auto_precision(device_type, native_bf16=True)
    compute = 4 if precision == "fp32" else 2
    deepspeed = spec.zero_stage > 0 and spec.bits == 16
    return _Regime(deepspeed, spec.zero_stage if deepspeed else 0, compute, not deepspeed and compute == 2, cuda,
                   max(1, world_size))


def _frozen(spec: TrainSpec, arch: Architecture, rg: _Regime) -> tuple[int, int]:
    """(linear layers + norms, the frozen embed_tokens/lm_head) in bytes on one rank."""
    if spec.bits == 16:
        body, small = arch.body_params * rg.compute, rg.compute
    elif spec.bits == 8:
        rows = arch.layers * sum(out for _, out in arch.linears().values())
        body, small = arch.body_params + 4 * rows, 4
    else:
        body, small = math.ceil(arch.body_params * NF4_BYTES), 4
    embeddings = 2 * arch.embedding_params * small
    if rg.zero == 3:
        body, embeddings = body // rg.world, embeddings // rg.world
    return body + arch.norm_params * small, embeddings


def _lora_matrices(spec: TrainSpec, arch: Architecture) -> list[int]:
    """Elements of every LoRA matrix of one decoder layer (A: r x in, B: out x r)."""
    linears = arch.linears()
    return [n for m in spec.lora.target_modules if m in linears for n in (spec.lora.r * linears[m][0],
                                                                         spec.lora.r * linears[m][1])]


def _training_state(spec: TrainSpec, arch: Architecture, rg: _Regime) -> dict[str, int]:
    full = arch.embedding_params * sum(m in spec.lora.modules_to_save for m in ("embed_tokens", "lm_head"))
    lora = _lora_matrices(spec, arch)
    trained = full + arch.layers * sum(lora)
    if not rg.deepspeed:
        return {"trainable_params": 4 * trained, "master_weights": 0, "gradients": 4 * trained,
                "optimizer_states": 8 * trained, "comm_buffers": 4 * trained if rg.world > 1 else 0,
                "step_transient": 0}
    n = rg.world
    params = rg.compute * trained
    if rg.zero == 3:
        whole = arch.layers * sum(x for x in lora if x < PERSISTENCE_THRESHOLD)
        params = rg.compute * (whole + (trained - whole) // n)
    return {"trainable_params": params, "master_weights": 4 * trained // n, "gradients": rg.compute * trained // n,
            "optimizer_states": 8 * trained // n,
            "comm_buffers": int(REDUCE_BUCKET * rg.compute * (2 if rg.cuda else 1)),  # overlap_comm double-buffers
            "step_transient": 4 * trained // n}  # the fp32 gradient partition of the optimizer step


def _logits(spec: TrainSpec, arch: Architecture, rg: _Regime, tokens: int) -> int:
    """The loss's peak beyond the activations: the logits' 12 bytes per row per token, fused or not."""
    if spec.fused_cross_entropy not in ("liger", "chunked"):
        return 12 * arch.vocab_rows * tokens
    one_slice = 12 * arch.vocab_rows * slice_tokens(tokens, arch.vocab_rows, arch.hidden)
    if spec.fused_cross_entropy == "chunked":
        return one_slice
    trained = 4 if not rg.deepspeed else rg.compute  # the dtype of the hidden states and of the trained head
    head = arch.embedding_params if "lm_head" in spec.lora.modules_to_save else 0
    return one_slice + trained * (tokens * arch.hidden + head)


def _layer_bytes(spec: TrainSpec, arch: Architecture, rg: _Regime) -> tuple[int, int]:
    """Bytes autograd saves in one decoder layer: (per token, per layer independent of tokens).

    The residual stream is fp32 under PlainEngine (embed_tokens is trained in fp32), 16-bit under DeepSpeed.
    """
    linears, c, r = arch.linears(), rg.compute, spec.lora.r
    q_dim, kv_dim = linears["q_proj"][1], linears["k_proj"][1]
    mlp = 4 if spec.bits != 16 else c  # bitsandbytes layers return their input's dtype: fp32
    # The dropout mask: bool on GPU; on CPU a tensor of the dropout input's dtype (PEFT casts x to the LoRA dtype).
    mask = 0 if spec.lora.dropout == 0 else 1 if rg.cuda else (c if rg.deepspeed else 4)
    # A padding mask (SFT batches) makes transformers' sdpa repeat k and v to every head.
    kv_saved = kv_dim if spec.stage == "pretrain" else q_dim
    per_token = 2 * (4 * arch.hidden + 4)  # two RMSNorms: the fp32 input and the rsqrt
    per_token += c * (2 * q_dim + 2 * kv_saved) + 4 * arch.heads  # sdpa: q, k, v, output; fp32 logsumexp
    per_token += 3 * mlp * arch.intermediate  # SiLU input, SiLU output, up_proj output
    targets = [m for m in spec.lora.target_modules if m in linears]
    per_token += sum((mask + c) * linears[m][0] + c * r for m in targets)  # mask, lora_A input and output
    if spec.bits == 8:  # MatMul8bitLt keeps its input: both norm outputs (fp32), attention output, MLP product
        per_token += 8 * arch.hidden + c * q_dim + 4 * arch.intermediate
    per_layer = c * sum(_lora_matrices(spec, arch)) if rg.autocast else 0  # autocast's 16-bit LoRA weights
    return per_token, per_layer


def _activations(spec: TrainSpec, arch: Architecture, rg: _Regime, checkpointing: bool) -> int:
    tokens = spec.micro_batch_size * spec.block_size
    per_token, per_layer = _layer_bytes(spec, arch, rg)
    layer = per_token * tokens + per_layer
    # The final norm (input, rsqrt), lm_head's input, rotary cos/sin, input ids and labels.
    head = tokens * (4 * arch.hidden + 4 + rg.compute * arch.hidden + 8 * arch.head_dim + 16)
    if not checkpointing:
        return arch.layers * layer + head
    residual = rg.compute if rg.deepspeed else 4
    return arch.layers * residual * arch.hidden * tokens + layer + head


def _limit_bytes(spec: TrainSpec, device_type: str) -> int:
    """One GPU's memory; on CPU the pod's memory per training process."""
    if device_type == "cuda":
        return int(spec.resources.gpu_memory_gib * GIB)
    return parse_quantity(spec.resources.memory) // spec.resources.procs_per_node


def parse_quantity(quantity: str) -> int:
    """Bytes of a Kubernetes memory quantity (16Gi, 500M, 1e9)."""
    units = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30,
             "Ti": 2**40}
    found = re.fullmatch(r"\s*([0-9.eE+]+)\s*([kMGT]i?|)\s*", quantity)
    if not found or found.group(2) not in units:
        raise UserError(f"resources.memory: {quantity!r} is not a Kubernetes quantity (e.g. 16Gi)")
    return int(float(found.group(1)) * units[found.group(2)])


LABELS = {
    "runtime": "runtime",
    "frozen_weights": "frozen weights",
    "frozen_embeddings": "frozen embed_tokens/lm_head (PEFT keeps the originals)",
    "trainable_params": "trained params (LoRA + embed_tokens/lm_head copies)",
    "master_weights": "fp32 master weights (DeepSpeed)",
    "gradients": "gradients",
    "optimizer_states": "AdamW moments (2 x fp32)",
    "comm_buffers": "gradient buckets (DDP / DeepSpeed)",
    "activations": "activations",
    "logits": "logits (fp32 loss: output + gradients)",
    "autocast_copies": "autocast 16-bit copy of lm_head",
    "zero3_gathered": "ZeRO-3 gathered weights",
}


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes per GPU (CPU: per process) of one training run; `total_bytes` is the peak."""

    device_type: str
    world_size: int
    runtime: int
    frozen_weights: int
    frozen_embeddings: int
    trainable_params: int
    master_weights: int
    gradients: int
    optimizer_states: int
    comm_buffers: int
    activations_full: int
    activations_checkpointed: int
    logits: int
    autocast_copies: int
    zero3_gathered: int
    step_transient: int
    load_peak: int
    limit_bytes: int
    gradient_checkpointing: bool
    gradients_held: bool
    """Gradients live through forward and backward (accumulation over micro-batches, DeepSpeed's partitions)."""
    spec: TrainSpec = field(compare=False, repr=False)
    arch: Architecture = field(compare=False, repr=False)

    @property
    def activations(self) -> int:
        return self.activations_checkpointed if self.gradient_checkpointing else self.activations_full

    @property
    def train_peak(self) -> int:
        held = (self.frozen_weights + self.frozen_embeddings + self.trainable_params + self.master_weights
                + self.optimizer_states + self.comm_buffers + (self.gradients if self.gradients_held else 0))
        backward = self.activations + self.logits + self.autocast_copies + self.zero3_gathered
        step = self.step_transient + (0 if self.gradients_held else self.gradients)
        return self.runtime + held + max(backward, step)

    @property
    def allocator_bytes(self) -> int:
        """The training peak without the runtime: what torch.cuda.max_memory_allocated measures on a GPU."""
        return self.train_peak - self.runtime

    @property
    def total_bytes(self) -> int:
        return max(self.train_peak, self.load_peak)

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.limit_bytes

    def as_dict(self) -> dict[str, Any]:
        parts = {name: getattr(self, name) for name in LABELS}
        return {"architecture": self.arch.name, "device_type": self.device_type, "world_size": self.world_size,
                **parts, "activations_full": self.activations_full,
                "activations_checkpointed": self.activations_checkpointed, "step_transient": self.step_transient,
                "load_peak": self.load_peak, "train_peak": self.train_peak, "total_bytes": self.total_bytes,
                "limit_bytes": self.limit_bytes, "fits": self.fits,
                "gradient_checkpointing": self.gradient_checkpointing}

    def lines(self) -> list[str]:
        spec, cuda = self.spec, self.device_type == "cuda"
        engine = f"DeepSpeed ZeRO-{spec.zero_stage}" if spec.zero_stage and spec.bits == 16 else "PyTorch/DDP"
        lines = [f"memory plan per {'GPU' if cuda else 'training process (CPU)'}: {self.arch.name}, "
                 f"{self.arch.vocab_rows} vocabulary rows, bits {spec.bits}, {engine}, {self.world_size} rank(s), "
                 f"micro-batch {spec.micro_batch_size} x {spec.block_size} tokens"]
        detail = {
            "runtime": " (CUDA context, NCCL buffers)" if cuda else " (measured: imports, tokenizers, torch)",
            "frozen_weights": {16: f" ({8 * _regime(spec, 1, self.device_type).compute}-bit)", 8: " (LLM.int8)",
                               4: " (NF4, double quant)"}[spec.bits],
            "activations": f" (checkpointing {'on' if spec.gradient_checkpointing else 'off'}; off "
                           f"{_gib(self.activations_full)}, on {_gib(self.activations_checkpointed)})",
        }
        for name, label in LABELS.items():
            value = getattr(self, name)
            if value or name in detail:
                lines.append(f"  {label + detail.get(name, ''):<68} {_gib(value):>9} GiB")
        if self.load_peak:
            lines.append(f"  {'peak while loading the base (mapped file + converted copy)':<68} "
                         f"{_gib(self.load_peak):>9} GiB")
        verdict = "fits" if self.fits else "does NOT fit"
        lines.append(f"  {'total (peak)':<68} {_gib(self.total_bytes):>9} GiB of {_gib(self.limit_bytes)}: {verdict}")
        return lines

    def advice(self) -> str:
        """One line: the settings that make the run fit, each with its estimate ('' when it fits)."""
        if self.fits:
            return ""
        spec = self.spec
        candidates: dict[str, dict[str, Any]] = {}
        if not spec.gradient_checkpointing:
            candidates["gradient_checkpointing=true"] = {"gradient_checkpointing": True}
        if spec.micro_batch_size > 1:
            micro, accum = self._smaller_micro_batch()
            kept = "keeps" if micro * accum == spec.micro_batch_size * spec.grad_accum_steps else "about keeps"
            candidates[f"micro_batch_size={micro} (grad_accum_steps={accum} {kept} the global batch)"] = {
                "micro_batch_size": micro, "grad_accum_steps": accum}
        if spec.fused_cross_entropy in ("auto", "off") and not (spec.zero_stage == 3 and spec.bits == 16):
            candidates["fused_cross_entropy=chunked"] = {"fused_cross_entropy": "chunked"}
        if spec.bits == 16 and spec.zero_stage < 3 and self.world_size > 1:
            candidates["zero_stage=3"] = {"zero_stage": 3}
        plans = {name: self._with(**update) for name, update in candidates.items()}
        fitting = [f"{name} (estimate {_gib(p.total_bytes)} GiB)" for name, p in plans.items() if p.fits]
        if fitting:
            return "set " + ", or ".join(fitting)
        if "zero_stage=3" in candidates:  # a chunked loss reads the head whole, which ZeRO-3 partitions
            candidates.pop("fused_cross_entropy=chunked", None)
        together = {k: v for update in candidates.values() for k, v in update.items()}
        combined = self._with(**together)
        names = " and ".join(name.split(" ")[0] for name in candidates)
        if together and combined.fits:
            return f"set {names} together (estimate {_gib(combined.total_bytes)} GiB)"
        fewer = {16: "load the base in fewer bits (bits=8 or bits=4) or ", 8: "load the base in 4 bits (bits=4) or "}
        limit = "GPU memory (resources.gpu_memory_gib)" if self.device_type == "cuda" else "memory (resources.memory)"
        return (f"even with {names or 'these settings'} the plan needs {_gib(combined.total_bytes)} GiB: "
                f"{fewer.get(spec.bits, '')}use more {limit}")

    def _smaller_micro_batch(self) -> tuple[int, int]:
        """The largest micro-batch that fits (preferring one that divides the per-rank batch), and its accumulation;
        1 when none fits."""
        per_rank = self.spec.micro_batch_size * self.spec.grad_accum_steps
        fitting = [m for m in range(self.spec.micro_batch_size - 1, 0, -1)
                   if self._with(micro_batch_size=m, grad_accum_steps=max(1, round(per_rank / m))).fits]
        micro = next((m for m in fitting if per_rank % m == 0), fitting[0] if fitting else 1)
        return micro, max(1, round(per_rank / micro))

    def _with(self, **update: Any) -> MemoryPlan:
        return estimate_for_run(self.spec.model_copy(update=update), self.arch, self.world_size, self.device_type,
                                runtime_bytes=self.runtime)


def _gib(value: int) -> str:
    return f"{value / GIB:.3f}" if value < GIB else f"{value / GIB:.2f}"


def estimate_for_run(spec: TrainSpec, arch: Architecture, world_size: int, device_type: str, *,
                     runtime_bytes: int | None = None) -> MemoryPlan:
    """The memory plan of `spec` on `arch` (vocab_rows already resized) over `world_size` ranks of `device_type`.

    On CPU the runtime baseline is measured in a subprocess (a few seconds, once per process) unless given.
    """
    rg = _regime(spec, world_size, device_type)
    if runtime_bytes is None:
        runtime_bytes = CUDA_RUNTIME_BYTES if rg.cuda else cpu_runtime_bytes(arch.vocab_rows)
    frozen, embeddings = _frozen(spec, arch, rg)
    state = _training_state(spec, arch, rg)
    tokens = spec.micro_batch_size * spec.block_size
    head_fp32 = "lm_head" in spec.lora.modules_to_save or spec.bits != 16
    gathered = 0
    if rg.zero == 3:
        lora_layer = sum(_lora_matrices(spec, arch))
        largest = max(arch.embedding_params, arch.layer_params + lora_layer)
        gathered = int(rg.compute * min(MAX_LIVE_PARAMETERS, largest + PREFETCH_BUCKET))
    load = 0
    if not rg.cuda:  # from_pretrained maps the file and converts each tensor when the dtype differs
        params = arch.checkpoint_params
        load = runtime_bytes + params * arch.checkpoint_bytes + (params * rg.compute
                                                                 if rg.compute != arch.checkpoint_bytes else 0)
    return MemoryPlan(
        device_type=device_type, world_size=rg.world, runtime=runtime_bytes, frozen_weights=frozen,
        frozen_embeddings=embeddings, **state,
        activations_full=_activations(spec, arch, rg, False),
        activations_checkpointed=_activations(spec, arch, rg, True),
        logits=_logits(spec, arch, rg, tokens),
        autocast_copies=rg.compute * arch.embedding_params if rg.autocast and head_fp32 else 0,
        zero3_gathered=gathered, load_peak=load, limit_bytes=_limit_bytes(spec, device_type),
        gradient_checkpointing=spec.gradient_checkpointing,
        gradients_held=rg.deepspeed or spec.grad_accum_steps > 1, spec=spec, arch=arch,
    )


def measured_peak_bytes(device: torch.device) -> int:
    """The peak to compare with a plan: torch.cuda.max_memory_allocated on a GPU (compare `allocator_bytes`), the
    process's peak resident set on CPU (compare `total_bytes`; VmHWM on Linux, else ru_maxrss: see peak_rss_bytes)."""
    if device.type == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated(device))
    return peak_rss_bytes()
