"""Build a spec: model defaults <- size preset <- YAML file (-f) <- --set overrides, then validate all at once.

Every validation problem is reported together, each naming the field and, for values that came from a YAML
file, the file and line they were written on.
"""

from __future__ import annotations

import datetime
import secrets
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from zhllama.errors import SpecError
from zhllama.spec.base import Resources, StageSpec
from zhllama.spec.models import STAGE_SPECS
from zhllama.spec.presets import PRESETS, deep_merge, preset_values


def new_run_id(stage: str) -> str:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{stage}-{stamp}-{secrets.token_hex(2)}"


def resolve_spec(
    stage: str,
    *,
    size: str = "smol",
    run_id: str | None = None,
    file: Path | None = None,
    sets: list[str] | tuple[str, ...] = (),
    values: dict[str, Any] | None = None,
    gpus: int | None = None,
) -> StageSpec:
    """The validated spec for `stage`: defaults, then the `size` preset, then `file`, `values` and `sets`;
    `gpus` (a total, `--gpus`) is laid out over the resulting GPUs per node last."""
    problems: list[str] = []
    if stage not in STAGE_SPECS:
        raise SpecError([f"stage: unknown stage {stage!r}; choose one of {', '.join(STAGE_SPECS)}"])
    if size not in PRESETS:
        raise SpecError([f"size: unknown size {size!r}; choose one of {', '.join(PRESETS)}"])

    merged: dict[str, Any] = {"stage": stage, "size": size, **preset_values(size, stage)}
    lines: dict[tuple[str, ...], str] = {}
    if file is not None:
        from_file, lines = load_yaml_with_lines(file)
        merged = deep_merge(merged, from_file)
    if values:
        merged = deep_merge(merged, values)
    for assignment in sets:
        try:
            merged = deep_merge(merged, parse_set(assignment))
        except ValueError as err:
            problems.append(str(err))
    if gpus is not None:
        per_node = merged.get("resources", {}).get("gpus_per_node", Resources.model_fields["gpus_per_node"].default)
        try:
            merged = deep_merge(merged, {"resources": gpu_layout(gpus, int(per_node))})
        except ValueError as err:
            problems.append(str(err))
    for key, given, flag in (("stage", stage, "the command's STAGE argument"), ("size", size, "--size")):
        if merged.get(key, given) != given:
            problems.append(f"{key}: {merged[key]!r} cannot be set as a field; it comes from {flag} (here {given!r})"
                            + (f" [{lines[(key,)]}]" if (key,) in lines else ""))
    merged["stage"] = stage
    merged["size"] = size
    merged.setdefault("run_id", run_id or new_run_id(stage))
    if run_id:
        merged["run_id"] = run_id

    spec_class = STAGE_SPECS[stage]
    try:
        spec = spec_class.model_validate(merged)
    except ValidationError as err:
        problems.extend(_describe(err, lines))
        spec = None
    if problems or spec is None:
        raise SpecError(problems, source=f"{stage} spec" + (f" ({file})" if file else ""))
    return spec


def gpu_layout(total: int, per_node: int) -> dict[str, int]:
    """`--gpus N` is the total: N <= one node's GPUs gives one pod, more fills whole nodes (48 = 6 pods x 8)."""
    if total <= 0:
        raise ValueError(f"gpus: {total}: give a positive number of GPUs")
    if per_node == 0 or total <= per_node:
        return {"nodes": 1, "gpus_per_node": total}
    if total % per_node:
        raise ValueError(
            f"gpus: {total} is not a multiple of the {per_node} GPUs per node; use e.g. "
            f"{(total // per_node + 1) * per_node}, or --set resources.gpus_per_node=..."
        )
    return {"nodes": total // per_node}


def spec_from_json(data: dict[str, Any]) -> StageSpec:
    """A spec read back from spec.json (already resolved: no preset is applied again)."""
    stage = data.get("stage")
    if stage not in STAGE_SPECS:
        raise SpecError([f"stage: unknown stage {stage!r}"], source="spec.json")
    try:
        return STAGE_SPECS[stage].model_validate(data)
    except ValidationError as err:
        raise SpecError(_describe(err, {}), source="spec.json") from None


def parse_set(assignment: str) -> dict[str, Any]:
    """`lora.r=16` -> {"lora": {"r": 16}}; the value is read as YAML, so lists and numbers work."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--set {assignment!r}: write key=value, e.g. --set lora.r=16")
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    nested: dict[str, Any] = {}
    cursor = nested
    parts = key.strip().split(".")
    for part in parts[:-1]:
        cursor = cursor.setdefault(part, {})
    cursor[parts[-1]] = value
    return nested


def load_yaml_with_lines(path: Path) -> tuple[dict[str, Any], dict[tuple[str, ...], str]]:
    """The mapping in a YAML file, and where each key path was written ("file:line")."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise SpecError([f"cannot read spec file: {err.strerror}"], source=str(path)) from None
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise SpecError([f"{where}: not valid YAML ({getattr(err, 'problem', err)})"], source=str(path)) from None
    if not isinstance(data, dict):
        raise SpecError([f"{path}:1: the spec file must be a mapping of field: value"], source=str(path))
    lines: dict[tuple[str, ...], str] = {}

    def walk(node: yaml.Node, prefix: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key_path = prefix + (str(key_node.value),)
                lines[key_path] = f"{path}:{key_node.start_mark.line + 1}"
                walk(value_node, key_path)

    if root is not None:
        walk(root, ())
    return data, lines


def _describe(err: ValidationError, lines: dict[tuple[str, ...], str]) -> list[str]:
    problems = []
    for item in err.errors():
        loc = tuple(str(part) for part in item["loc"])
        field = ".".join(loc) or "spec"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field (check the spelling; `ctl explain <stage>` lists the fields)"
        elif "input" in item and item["type"] not in ("missing",):
            message = f"{message} (got {item['input']!r})"
        where = _nearest_line(loc, lines)
        problems.append(f"{field}: {message}" + (f" [{where}]" if where else ""))
    return problems


def _nearest_line(loc: tuple[str, ...], lines: dict[tuple[str, ...], str]) -> str | None:
    for end in range(len(loc), 0, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None
