"""PEFT LoRA adapter directories: what they change in the base, read without loading their weights."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from zhllama.errors import UserError

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
EMBED = "model.embed_tokens.weight"
LM_HEAD = "lm_head.weight"
FULL_MODULES = (EMBED, LM_HEAD)


@dataclass(frozen=True)
class LoraDelta:
    """One low-rank update: base weight += scale * B @ A."""

    a_key: str
    b_key: str
    a_shape: tuple[int, ...]
    b_shape: tuple[int, ...]
    scale: float

    @property
    def weight_shape(self) -> tuple[int, int]:
        return self.b_shape[0], self.a_shape[1]


@dataclass(frozen=True)
class Adapter:
    """A LoRA adapter: low-rank deltas and full replacement tensors (modules_to_save), keyed by base tensor name."""

    path: Path
    weights: Path
    deltas: dict[str, LoraDelta]
    replacements: dict[str, tuple[str, tuple[int, ...]]]
    """Base tensor name -> (adapter key, shape) of a fully trained copy (embed_tokens, lm_head)."""

    def delta(self, name: str) -> torch.Tensor:
        """scale * B @ A for base tensor `name`, in float32."""
        lora = self.deltas[name]
        with safe_open(str(self.weights), framework="pt") as handle:
            a = handle.get_tensor(lora.a_key).float()
            b = handle.get_tensor(lora.b_key).float()
        return (b @ a) * lora.scale

    def replacement(self, name: str) -> torch.Tensor:
        with safe_open(str(self.weights), framework="pt") as handle:
            return handle.get_tensor(self.replacements[name][0])


def read_adapter(path: Path) -> Adapter:
    """Read an adapter's config and tensor shapes; refuse what this merge cannot apply exactly."""
    config_file, weights = path / CONFIG_NAME, path / WEIGHTS_NAME
    for required in (config_file, weights):
        if not required.is_file():
            hint = (
                " (.bin adapters: re-save with safe_serialization=True)"
                if (path / "adapter_model.bin").exists()
                else ""
            )
            raise UserError(f"adapter {path}: missing {required.name}; pass a PEFT LoRA adapter directory{hint}")
    config = json.loads(config_file.read_text())
    if config.get("peft_type") != "LORA":
        raise UserError(f"adapter {path}: peft_type is {config.get('peft_type')!r}; only LORA adapters can be merged")
    for flag in ("use_dora", "fan_in_fan_out"):
        if config.get(flag):
            raise UserError(f"adapter {path}: {flag}=true is not supported by the merge; train with {flag}=false")
    if config.get("bias", "none") != "none":
        raise UserError(f"adapter {path}: bias={config['bias']!r} is not supported; train with bias='none'")

    with safe_open(str(weights), framework="pt") as handle:
        shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118

    deltas: dict[str, LoraDelta] = {}
    replacements: dict[str, tuple[str, tuple[int, ...]]] = {}
    for key, shape in shapes.items():
        name = key.removeprefix(PEFT_PREFIX)
        if name.endswith(".lora_A.weight"):
            module = name.removesuffix(".lora_A.weight")
            b_key = f"{PEFT_PREFIX}{module}.lora_B.weight"
            if b_key not in shapes:
                raise UserError(f"adapter {path}: {key} has no matching lora_B tensor; the adapter file is incomplete")
            deltas[f"{module}.weight"] = LoraDelta(key, b_key, shape, shapes[b_key], _scale(config, module, path))
        elif name.endswith((".lora_B.weight", ".original_module.weight")):
            # PEFT also saves the untrained original of a resized embedding: not part of the update
            continue
        elif name.replace(".modules_to_save.weight", ".weight") in FULL_MODULES:
            # a resized embedding is saved both as `<module>.weight` and `<module>.modules_to_save.weight`
            replacements.setdefault(name.replace(".modules_to_save.weight", ".weight"), (key, shape))
        else:
            raise UserError(
                f"adapter {path}: cannot merge tensor {key}; only LoRA A/B of linear layers and full "
                "embed_tokens/lm_head copies (modules_to_save) are supported"
            )
    for name, lora in deltas.items():
        rank = lora.a_shape[0]
        if len(lora.a_shape) != 2 or len(lora.b_shape) != 2 or lora.b_shape[1] != rank:
            raise UserError(f"adapter {path}: {name}: lora_A {lora.a_shape} and lora_B {lora.b_shape} do not pair up")
    return Adapter(path, weights, deltas, replacements)


def _scale(config: dict[str, object], module: str, path: Path) -> float:
    """PEFT's scaling for one module: alpha / r, or alpha / sqrt(r) with rsLoRA; per-module patterns win."""
    rank = _pattern_value(config.get("rank_pattern") or {}, module, config.get("r"))
    alpha = _pattern_value(config.get("alpha_pattern") or {}, module, config.get("lora_alpha"))
    if not isinstance(rank, int | float) or not isinstance(alpha, int | float) or rank <= 0:
        raise UserError(f"adapter {path}: r and lora_alpha in {CONFIG_NAME} must be positive numbers")
    return float(alpha) / (math.sqrt(rank) if config.get("use_rslora") else float(rank))


def _pattern_value(patterns: object, module: str, default: object) -> object:
    # the same rule PEFT uses to pick a rank_pattern/alpha_pattern entry: the key matches a dotted suffix
    if isinstance(patterns, dict):
        for pattern, value in patterns.items():
            if re.match(rf"(.*\.)?({pattern})$", module):
                return value
    return default
