"""How one optimizer step runs: plain PyTorch (one process or DDP) for zero_stage 0, DeepSpeed ZeRO-2/3 otherwise.

Both engines take the same param groups and schedule, expose the same four operations (micro-batch
forward/backward, optimizer step, save, load) and keep losses and norms as tensors so nothing waits on the device
between logging steps.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch
from torch.optim.lr_scheduler import LambdaLR

from zhllama.errors import UserError
from zhllama.models.dtypes import torch_dtype
from zhllama.spec import TrainSpec
from zhllama.train.distributed import DistEnv
from zhllama.train.forward import FusedLoss, training_forward

DEEPSPEED_TAG = "deepspeed"
ENGINE_FILE = "engine.pt"


FP16_LOSS_SCALING = {"loss_scale": 0, "initial_scale_power": 16, "loss_scale_window": 100, "hysteresis": 2,
                     "min_loss_scale": 1}
"""Dynamic fp16 loss scaling as Chinese-LLaMA-Alpaca's ds_zero2_no_offload.json sets it: the resized embeddings
overflow fp16 in the first steps, and a scale that regrows only every 1000 clean steps stays collapsed. The
reference's floor, 1e-10, meant none: the DeepSpeed of its day truncated it to the integer 0. DeepSpeed 0.19 takes
only a positive integer there (it refuses 1e-10 and 0), so DeepSpeed's floor is 1; the plain engine's GradScaler has
no floor at all."""


def auto_precision(device_type: str, native_bf16: bool) -> str:
    """bf16 where the GPU computes it natively, fp16 (with loss scaling) on one that only emulates it (V100, T4),
    fp32 on CPU."""
    if device_type != "cuda":
        return "fp32"
    return "bf16" if native_bf16 else "fp16"


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision `precision` means on `device`; fp16 on CPU is refused."""
    if precision == "auto":
        # torch counts bf16 emulation as support unless told not to: V100/T4 would train 16-bit at fp32 speed.
        native = device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
        return auto_precision(device.type, native)
    if precision == "fp16" and device.type != "cuda":
        raise UserError("precision=fp16 needs a GPU; use precision=fp32 (or auto) on CPU")
    return precision


def lr_lambda(spec: TrainSpec, delay: int = 0) -> Callable[[int], float]:
    """Linear warmup, then cosine/linear decay to 0 or constant, over steps delay..max_steps.

    A group with a `delay` (LoRA after `embedding_only_steps`) stays at 0 until then and gets a schedule of its own
    over the steps it trains: warmup_ratio of them warming up, as the reference's separate stage-2 run had, instead
    of jumping from 0 to nearly its peak.
    """
    span = spec.max_steps - delay
    warmup = int(span * spec.warmup_ratio)

    def factor(step: int) -> float:
        if step < delay:
            return 0.0
        step -= delay
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if spec.lr_scheduler == "constant":
            return 1.0
        progress = (step - warmup) / max(1, span - warmup)
        if spec.lr_scheduler == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def param_groups(model: torch.nn.Module) -> list[dict[str, Any]]:
    """Fully trained modules (embeddings, head) and LoRA weights as two groups, so LoRA can wait for them."""
    full: list[torch.nn.Parameter] = []
    lora: list[torch.nn.Parameter] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (full if "modules_to_save" in name else lora).append(param)
    groups = [{"params": full, "name": "modules_to_save"}, {"params": lora, "name": "lora"}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: torch.nn.Module, spec: TrainSpec) -> tuple[torch.optim.Optimizer, LambdaLR]:
    """AdamW over the trained parameters and its schedule; LoRA's group waits `embedding_only_steps`."""
    groups = param_groups(model)
    optimizer = torch.optim.AdamW(
        groups, lr=spec.lr, weight_decay=spec.weight_decay, betas=(0.9, 0.999), eps=1e-8,
        fused=True,  # one kernel for all tensors, on CPU as on GPU
    )
    lambdas = [lr_lambda(spec, spec.embedding_only_steps if g["name"] == "lora" else 0) for g in groups]
    return optimizer, LambdaLR(optimizer, lambdas)


class OptimizerStep(NamedTuple):
    grad_norm: torch.Tensor
    """Before clipping; inf/nan on an overflow."""
    skipped: torch.Tensor
    """True when fp16 loss scaling found an overflow and skipped the update (the scale halves instead)."""


class Engine(Protocol):
    model: torch.nn.Module
    partitioned: bool
    """True when each rank's checkpoint share is a partition (ZeRO), so only the same world size can load it."""

    def forward_backward(self, batch: dict[str, torch.Tensor], last_micro_step: bool) -> torch.Tensor: ...

    def step(self) -> OptimizerStep:
        """The optimizer step after the accumulated micro-batches (skipped on an fp16 overflow)."""
        ...

    def current_lr(self) -> float: ...

    def save(self, directory: Path) -> None:
        """What only this rank holds of the training state (weights being trained, optimizer, schedule)."""
        ...

    def shares_to_load(self, rank: int, saved_world_size: int) -> list[int]:
        """The saved ranks whose shares `rank` reads on resume."""
        ...

    def load(self, shares: dict[int, Path], scratch: Path) -> None:
        """Restore from the shares `shares_to_load` named (saved rank -> local directory)."""
        ...


class PlainEngine:
    """One process, or DDP over several: fp32 master weights, autocast for bf16/fp16, a loss scaler for fp16."""

    partitioned = False

    def __init__(self, model: torch.nn.Module, spec: TrainSpec, env: DistEnv, precision: str,
                 fused_loss: FusedLoss = "off") -> None:
        self.model = model
        self.spec = spec
        self.device = env.device
        self.is_main = env.place.is_main
        for param in model.parameters():
            if param.requires_grad and param.dtype != torch.float32:
                param.data = param.data.float()
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.optimizer, self.scheduler = build_optimizer(model, spec)
        self.forward_model = training_forward(model, fused_loss)
        if env.place.world_size > 1:
            self.forward_model = torch.nn.parallel.DistributedDataParallel(
                self.forward_model, device_ids=[env.device.index] if env.device.type == "cuda" else None
            )
        self.autocast_dtype = torch_dtype(precision) if precision != "fp32" else None
        self.scaler = torch.amp.GradScaler(
            env.device.type, enabled=precision == "fp16", init_scale=2.0 ** FP16_LOSS_SCALING["initial_scale_power"],
            growth_interval=int(FP16_LOSS_SCALING["loss_scale_window"]),
        )

    def forward_backward(self, batch: dict[str, torch.Tensor], last_micro_step: bool) -> torch.Tensor:
        no_sync = getattr(self.forward_model, "no_sync", None)  # DDP: all-reduce only on the last micro-batch
        sync = nullcontext() if last_micro_step or no_sync is None else no_sync()
        autocast = torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype else nullcontext()
        with sync:
            with autocast:
                loss = self.forward_model(**batch).loss
            self.scaler.scale(loss / self.spec.grad_accum_steps).backward()
        return loss.detach()

    def step(self) -> OptimizerStep:
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.trainable, self.spec.max_grad_norm)
        # The scaler skips the update exactly when an unscaled gradient is inf/nan, which makes the norm so: read
        # that from the norm on the device instead of syncing for the scaler's own flag.
        skipped = ~torch.isfinite(norm) if self.scaler.is_enabled() else torch.zeros((), dtype=torch.bool)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return OptimizerStep(norm, skipped)

    def current_lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def save(self, directory: Path) -> None:
        # Every DDP rank holds the same state: rank 0's copy is the checkpoint, the others write nothing.
        if not self.is_main:
            return
        directory.mkdir(parents=True, exist_ok=True)
        trained = {n: p.detach().cpu() for n, p in self.model.named_parameters() if p.requires_grad}
        torch.save(
            {"trained": trained, "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
             "scaler": self.scaler.state_dict()},
            directory / ENGINE_FILE,
        )

    def shares_to_load(self, rank: int, saved_world_size: int) -> list[int]:
        return [0]

    def load(self, shares: dict[int, Path], scratch: Path) -> None:
        state = torch.load(shares[0] / ENGINE_FILE, map_location=self.device, weights_only=False)
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, value in state["trained"].items():
                params[name].copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])


def deepspeed_config(spec: TrainSpec, world_size: int, precision: str, on_gpu: bool) -> dict[str, Any]:
    """The DeepSpeed config generated from the spec (ZeRO stage, batch, clipping, precision)."""
    zero: dict[str, Any] = {"stage": spec.zero_stage, "contiguous_gradients": True, "overlap_comm": on_gpu,
                            "reduce_bucket_size": 5e7}
    if spec.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = False
    return {
        "train_micro_batch_size_per_gpu": spec.micro_batch_size,
        "gradient_accumulation_steps": spec.grad_accum_steps,
        "train_batch_size": spec.micro_batch_size * spec.grad_accum_steps * world_size,
        "gradient_clipping": spec.max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", **FP16_LOSS_SCALING},
        # A plain torch AdamW: DeepSpeed's fused CPU/GPU Adam ops would need compiling on every machine.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


class DeepSpeedEngine:
    """ZeRO-2/3 through DeepSpeed, with the same torch AdamW and schedule as the plain engine."""

    partitioned = True

    def __init__(self, model: torch.nn.Module, spec: TrainSpec, env: DistEnv, precision: str,
                 fused_loss: FusedLoss = "off") -> None:
        import deepspeed

        self.model = model
        self.spec = spec
        self.config = deepspeed_config(spec, env.place.world_size, precision, env.device.type == "cuda")
        optimizer, scheduler = build_optimizer(model, spec)
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=training_forward(model, fused_loss), optimizer=optimizer, lr_scheduler=scheduler, config=self.config,
            dist_init_required=False,
        )

    def forward_backward(self, batch: dict[str, torch.Tensor], last_micro_step: bool) -> torch.Tensor:
        loss = self.engine(**batch).loss
        self.engine.backward(loss)
        if not last_micro_step:
            self.engine.step()  # DeepSpeed only accumulates here; the real step happens at the boundary
        return loss.detach()

    def step(self) -> OptimizerStep:
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return OptimizerStep(norm if isinstance(norm, torch.Tensor) else torch.tensor(float(norm or 0.0)),
                             torch.tensor(not self.engine.was_step_applied()))

    def current_lr(self) -> float:
        return float(self.engine.get_lr()[0])

    def save(self, directory: Path) -> None:
        self.engine.save_checkpoint(str(directory), tag=DEEPSPEED_TAG, exclude_frozen_parameters=True,
                                    save_latest=False)

    def shares_to_load(self, rank: int, saved_world_size: int) -> list[int]:
        # DeepSpeed's ZeRO loader reads every rank's partition file (it re-partitions the fp32 master weights).
        return list(range(saved_world_size))

    def load(self, shares: dict[int, Path], scratch: Path) -> None:
        # DeepSpeed wants every share in one directory: link them there from the node cache.
        shutil.rmtree(scratch, ignore_errors=True)
        target = scratch / DEEPSPEED_TAG
        target.mkdir(parents=True)
        for directory in shares.values():
            for file in (directory / DEEPSPEED_TAG).iterdir():
                link = target / file.name
                if not link.exists():
                    link.symlink_to(file.resolve())
        path, _ = self.engine.load_checkpoint(str(scratch), tag=DEEPSPEED_TAG, load_module_strict=False)
        if path is None:
            raise UserError(f"checkpoint shares {sorted(shares)}: DeepSpeed found no state in them; delete them")


def build_engine(model: torch.nn.Module, spec: TrainSpec, env: DistEnv, precision: str,
                 fused_loss: FusedLoss = "off") -> Engine:
    """DeepSpeed for ZeRO-2/3 of a 16-bit base; plain PyTorch (DDP across ranks) otherwise.

    A bitsandbytes-quantized base stays on its device as loaded: ZeRO would re-cast and partition its weights,
    so 8/4-bit runs replicate the frozen base per rank (DDP) and only the small trained tensors are reduced.
    Either runs its forward pass through `training_forward(model, fused_loss)`; `engine.model` stays `model`, which
    is what saves and loads.
    """
    if spec.zero_stage == 0 or spec.bits != 16:
        if spec.zero_stage and env.place.is_main:
            print(f"bits={spec.bits}: training with DDP; zero_stage={spec.zero_stage} applies to 16-bit bases only",
                  flush=True)
        return PlainEngine(model, spec, env, precision, fused_loss)
    return DeepSpeedEngine(model, spec, env, precision, fused_loss)
