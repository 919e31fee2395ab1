"""The memory plan of a resolved spec, as `ctl` prints it (`--dry-run`) and enforces it (`ctl submit`).

The architecture comes from the size table (memory.KNOWN_ARCHITECTURES) when the spec trains the preset's own
base; the vocabulary is the base's when the spec trains with the base's own tokenizer, else the extended one.
"""

from __future__ import annotations

from zhllama.errors import UserError
from zhllama.models.adapter_vocab import padded_size
from zhllama.spec import TrainSpec
from zhllama.spec.presets import preset_values
from zhllama.train.memory import GIB, KNOWN_ARCHITECTURES, Architecture, MemoryPlan, estimate_for_run


def architecture_for(spec: TrainSpec) -> Architecture | None:
    """The known architecture of the spec's base, resized as this spec resizes it; None when it is not known."""
    arch = KNOWN_ARCHITECTURES.get(spec.size)
    base = preset_values(spec.size, spec.stage).get("base_model", TrainSpec.model_fields["base_model"].default)
    if arch is None or spec.base_model != base:
        return None
    rows = arch.base_vocab if spec.tokenizer == spec.base_model else arch.vocab_rows
    return arch.with_vocab(padded_size(rows, spec.pad_vocab_multiple))


def device_type_for(spec: TrainSpec) -> str:
    return "cuda" if spec.resources.gpus_per_node > 0 else "cpu"


def plan_for_spec(spec: TrainSpec, *, runtime_bytes: int | None = None) -> MemoryPlan | None:
    arch = architecture_for(spec)
    if arch is None:
        return None
    return estimate_for_run(spec, arch, spec.resources.world_size, device_type_for(spec), runtime_bytes=runtime_bytes)


def plan_lines(spec: TrainSpec) -> list[str]:
    """The plan as a table, or one line saying why there is none."""
    plan = plan_for_spec(spec)
    if plan is None:
        return [f"memory plan: base_model {spec.base_model} is not the {spec.size} preset's base, so its "
                f"architecture is unknown (known: {', '.join(KNOWN_ARCHITECTURES)}); no estimate"]
    lines = plan.lines()
    if not plan.fits:
        lines.append(f"  fix: {plan.advice()}")
    return lines


def check_plan(spec: TrainSpec) -> None:
    """Refuse, in one line naming the estimate, the limit and the fix, a run whose plan does not fit."""
    plan = plan_for_spec(spec)
    if plan is None or plan.fits:
        return
    where, limit = (("GPU", "resources.gpu_memory_gib") if plan.device_type == "cuda"
                    else ("training process", "resources.memory per process"))
    raise UserError(
        f"memory plan: {spec.stage} {spec.size} needs an estimated {plan.total_bytes / GIB:.1f} GiB per {where} "
        f"but {limit} gives {plan.limit_bytes / GIB:.1f} GiB; {plan.advice()}"
    )
