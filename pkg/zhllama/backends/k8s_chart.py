"""The chart side of the Kubernetes backend: chart values for a spec, rendering through Helm's Go SDK, presets.

One source of truth renders the objects: charts/zhllama. `ctl submit` turns a resolved spec into the chart
values a `helm install` user would write (stage, size, bits, s3, overrides) and renders the chart with them;
the chart computes the spec from files/presets.json, the resolved size presets generated here from
zhllama.spec. After rendering, ctl reads the spec back from the ConfigMap and refuses to go on if it differs
from the spec it resolved, so a stale presets file cannot silently run something else.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import helm_python
import yaml

from zhllama.errors import UserError
from zhllama.spec import PRESETS, STAGE_SPECS, StageSpec, resolve_spec, spec_from_json

CHART_ENV = "ZHLLAMA_CHART"
PRESETS_FILE = Path("files") / "presets.json"
SPEC_KEYS = ("stage", "size", "runId", "bits", "gpus", "overrides")
"""Chart values that carry the spec; they come from the spec, never from a values file."""
NOTES = "NOTES.txt"


def chart_dir() -> Path:
    """charts/zhllama of this checkout, or $ZHLLAMA_CHART."""
    configured = os.environ.get(CHART_ENV)
    path = Path(configured) if configured else Path(__file__).resolve().parents[3] / "charts" / "zhllama"
    if not (path / "Chart.yaml").is_file():
        raise UserError(f"no Helm chart at {path}: set {CHART_ENV}=/path/to/charts/zhllama")
    return path


def chart_presets() -> dict[str, Any]:
    """Every stage's resolved spec per size preset (run id left out): what files/presets.json must hold."""
    specs: dict[str, dict[str, Any]] = {}
    for size in PRESETS:
        specs[size] = {}
        for stage in STAGE_SPECS:
            if stage == "pipeline":  # a pipeline is driven by ctl, stage by stage; it has no objects of its own
                continue
            resolved = resolve_spec(stage, size=size, run_id="preset").model_dump(mode="json")
            del resolved["run_id"]
            specs[size][stage] = resolved
    return {
        "_generated_by": "ctl chart-presets (zhllama.backends.k8s_chart.write_chart_presets); do not edit",
        "specs": specs,
    }


def presets_json() -> str:
    return json.dumps(chart_presets(), indent=1, sort_keys=True) + "\n"


def write_chart_presets(chart: Path | None = None) -> Path:
    """Regenerate files/presets.json from zhllama.spec; returns the path written."""
    path = (chart or chart_dir()) / PRESETS_FILE
    path.write_text(presets_json(), encoding="utf-8")
    return path


def spec_values(spec: StageSpec) -> dict[str, Any]:
    """The chart values that make the chart compute exactly `spec` (the values a helm user would write)."""
    preset = json.loads((chart_dir() / PRESETS_FILE).read_text(encoding="utf-8"))["specs"][spec.size][spec.stage]
    resolved = spec.model_dump(mode="json")
    values: dict[str, Any] = {"stage": spec.stage, "size": spec.size, "runId": resolved.pop("run_id")}
    if "bits" in resolved:
        values["bits"] = resolved.pop("bits")
        preset = {k: v for k, v in preset.items() if k != "bits"}
    store = resolved["store"]
    if store.startswith("s3://"):
        bucket, _, prefix = store.removeprefix("s3://").partition("/")
        values["s3"] = {"bucket": bucket, "prefix": prefix}
        del resolved["store"]
    values["overrides"] = _changed(resolved, preset)
    return values


def _changed(resolved: Mapping[str, Any], preset: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of `resolved` that differ from `preset`, nested like the spec (lists are replaced whole)."""
    changed: dict[str, Any] = {}
    for key, value in resolved.items():
        base = preset.get(key)
        if isinstance(value, dict) and isinstance(base, dict):
            inner = _changed(value, base)
            if inner:
                changed[key] = inner
        elif value != base or key not in preset:
            changed[key] = value
    return changed


def chart_values(spec: StageSpec, cluster_values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Cluster settings (a values file's content: images, s3 endpoint, scheduling, ...) plus the spec's values."""
    cluster = dict(cluster_values or {})
    clashing = sorted(set(cluster) & set(SPEC_KEYS))
    if clashing:
        raise UserError(
            f"chart values {', '.join(clashing)}: these come from the spec; pass them as ctl flags or --set "
            "spec fields, not in the values file"
        )
    values = _merge(cluster, spec_values(spec))
    return values


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def store_from_values(paths: Sequence[str | Path]) -> str | None:
    """The store the values files' `s3.bucket`/`s3.prefix` give (files merged as the backend merges them), or None
    when none sets a bucket; an unset prefix is the chart's default."""
    merged: dict[str, Any] = {}
    for path in paths:
        merged = _merge(merged, load_values_file(Path(path)))
    s3 = merged.get("s3") or {}
    if not isinstance(s3, Mapping) or not s3.get("bucket"):
        return None
    default = yaml.safe_load((chart_dir() / "values.yaml").read_text(encoding="utf-8"))["s3"]["prefix"]
    prefix = str(s3.get("prefix", default) or "").strip("/")
    return f"s3://{s3['bucket']}/{prefix}" if prefix else f"s3://{s3['bucket']}"


def check_cluster_store(spec: StageSpec) -> None:
    """A cluster run's store must outlive its pods: refuse file:// (the pod's own disk)."""
    if spec.store.startswith("file://"):
        raise UserError(
            f"store: {spec.store} is the pod's own disk and is lost with it; pass --store s3://bucket/prefix, "
            "set ZHLLAMA_STORE, or set s3.bucket in a --values file"
        )


def load_values_file(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"{path}: cannot read chart values ({err})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: chart values must be a mapping")
    return data


def render(values: Mapping[str, Any], *, release: str, namespace: str) -> list[tuple[str, dict[str, Any]]]:
    """Render the chart offline: (template path, object) in template order, as `helm template` would.

    Bad values raise UserError with Helm's message (the schema's or the chart's `fail`).
    """
    with helm_python.Chart.load(str(chart_dir())) as chart:
        try:
            chart.validate_schema(dict(values))
            rendered = chart.render(dict(values), name=release, namespace=namespace, is_install=True)
        except helm_python.HelmError as err:
            raise UserError(f"chart values: {_helm_message(err)}") from None
    objects: list[tuple[str, dict[str, Any]]] = []
    for template in sorted(rendered):
        if template.endswith(NOTES):
            continue
        for document in yaml.safe_load_all(rendered[template]):
            if document:
                objects.append((template, document))
    return objects


def render_notes(values: Mapping[str, Any], *, release: str, namespace: str) -> str:
    with helm_python.Chart.load(str(chart_dir())) as chart:
        rendered = chart.render(dict(values), name=release, namespace=namespace, is_install=True)
    return next((text for name, text in rendered.items() if name.endswith(NOTES)), "")


def _helm_message(err: Exception) -> str:
    """Helm's message without the template stack ("execution error at (...): the message")."""
    message = str(err).strip()
    if "execution error at" in message:
        message = message.rsplit("): ", 1)[-1]
    return " ".join(message.split())


class _ManifestDumper(yaml.SafeDumper):
    """Multi-line strings (the spec.json in the ConfigMap) as `|` blocks, readable as helm prints them."""


_ManifestDumper.add_representer(
    str,
    lambda dumper, text: dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None),
)


def to_yaml(objects: list[tuple[str, dict[str, Any]]]) -> str:
    """The manifests as `helm template` prints them."""
    return "".join(
        f"---\n# Source: {template}\n{yaml.dump(obj, Dumper=_ManifestDumper, sort_keys=False)}"
        for template, obj in objects
    )


def rendered_spec(objects: list[tuple[str, dict[str, Any]]]) -> StageSpec:
    """The spec the chart put into the run's ConfigMap."""
    for _, obj in objects:
        if obj.get("kind") == "ConfigMap" and "spec.json" in obj.get("data", {}):
            return spec_from_json(json.loads(obj["data"]["spec.json"]))
    raise UserError("the chart rendered no spec ConfigMap: charts/zhllama is broken")


def check_rendered_spec(spec: StageSpec, objects: list[tuple[str, dict[str, Any]]]) -> None:
    chart_spec = rendered_spec(objects)
    if chart_spec != spec:
        ours, theirs = spec.model_dump(mode="json"), chart_spec.model_dump(mode="json")
        fields = sorted(k for k in ours if ours[k] != theirs.get(k))
        raise UserError(
            f"charts/zhllama computes a different spec (fields: {', '.join(fields)}): its presets are stale; "
            "run `ctl chart-presets` to regenerate charts/zhllama/files/presets.json"
        )
