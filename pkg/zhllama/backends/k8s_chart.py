"""The chart side of the Kubernetes backend: the chart values for a spec, and rendering through Helm's Go SDK.

One source of truth renders the objects: charts/zhllama. The spec is resolved once, in Python; the chart takes
it as the value `spec` (copied into the run's ConfigMap unchanged) plus `launch`, what Python derives from it to
start the pods (distributed or not, indexed or not and its completions, the stage's script, pods, processes per
pod). `ctl values` prints these
values for a plain `helm install`, and `ctl submit` renders the chart with the same values, so both create the
same objects and the chart holds no rule about runs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import helm_python
import yaml

from zhllama.errors import UserError
from zhllama.spec import DISTRIBUTED_STAGES, INDEXED_STAGES, PipelineSpec, PrepareSpec, StageSpec
from zhllama.spec.presets import deep_merge

CHART_ENV = "ZHLLAMA_CHART"
SPEC_KEYS = ("spec", "launch")
"""Chart values that only Python computes (from the spec); a values file never sets them."""
STORE_KEYS = ("bucket", "prefix")
"""`s3` keys of a `ctl submit --values` file that ctl turns into the spec's store; the chart does not take them."""
DEFAULT_S3_PREFIX = "zhllama"
IMAGE_JOBS_DIR = "/app/jobs"
"""Where images/*.Dockerfile put jobs/ (their ZHLLAMA_JOBS_DIR)."""
NOTES = "NOTES.txt"


def chart_dir() -> Path:
    """charts/zhllama of this checkout, or $ZHLLAMA_CHART."""
    configured = os.environ.get(CHART_ENV)
    path = Path(configured) if configured else Path(__file__).resolve().parents[3] / "charts" / "zhllama"
    if not (path / "Chart.yaml").is_file():
        raise UserError(f"no Helm chart at {path}: set {CHART_ENV}=/path/to/charts/zhllama")
    return path


def resolved_values(spec: StageSpec) -> dict[str, Any]:
    """The chart values only Python computes: the resolved spec, and how to launch it."""
    if isinstance(spec, PipelineSpec):
        raise UserError(
            "stage pipeline: a pipeline has no chart of its own (ctl drives it stage by stage); "
            "`ctl values` each stage, or `ctl submit pipeline`"
        )
    distributed = spec.stage in DISTRIBUTED_STAGES
    indexed = spec.stage in INDEXED_STAGES
    return {
        "spec": spec.model_dump(mode="json"),
        "launch": {
            "distributed": distributed,
            # An Indexed Job of `completions` pods (= parallelism), each one share of the work: prepare's workers.
            "indexed": indexed,
            "completions": spec.workers if indexed and isinstance(spec, PrepareSpec) else 1,
            "entrypoint": f"{IMAGE_JOBS_DIR}/{spec.stage}.py",
            # A single-pod stage is one Job pod whatever resources.nodes says; an indexed one's pods are its
            # completions, each one pod of one process.
            "nodes": spec.resources.nodes if distributed else 1,
            "procsPerNode": 1 if indexed else spec.resources.procs_per_node,
        },
    }


def chart_values(spec: StageSpec, cluster_values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Cluster settings (a values file's content: images, s3 endpoint, scheduling, ...) plus the spec's values."""
    cluster = dict(cluster_values or {})
    clashing = sorted(set(cluster) & set(SPEC_KEYS))
    if clashing:
        raise UserError(
            f"chart values {', '.join(clashing)}: ctl computes these from the spec; remove them from the values "
            "file and pass ctl flags (--size, --set, -f, --bits, --gpus, --run-id, --store) instead"
        )
    s3 = cluster.get("s3")
    if isinstance(s3, Mapping):
        # ctl's own keys: store_from_values made them the spec's store (unless --store gave one), and the chart's
        # only store is spec.store.
        cluster["s3"] = {key: value for key, value in s3.items() if key not in STORE_KEYS}
    return deep_merge(cluster, resolved_values(spec))


def values_yaml(spec: StageSpec) -> str:
    """`ctl values`: the spec's chart values as a values file for a plain `helm install`."""
    values = chart_values(spec)
    usage = f"# helm install {spec.run_id} charts/zhllama -f <your cluster values> -f <this file>\n"
    return usage + yaml.safe_dump(values, sort_keys=False, allow_unicode=True)


def store_from_values(paths: Sequence[str | Path]) -> str | None:
    """The store the values files' `s3.bucket`/`s3.prefix` give (files merged deeply, later ones winning), or None
    when none sets a bucket; an unset prefix is DEFAULT_S3_PREFIX."""
    merged: dict[str, Any] = {}
    for path in paths:
        merged = deep_merge(merged, load_values_file(Path(path)))
    s3 = merged.get("s3") or {}
    if not isinstance(s3, Mapping) or not s3.get("bucket"):
        return None
    prefix = str(s3.get("prefix", DEFAULT_S3_PREFIX) or "").strip("/")
    return f"s3://{s3['bucket']}/{prefix}" if prefix else f"s3://{s3['bucket']}"


def check_cluster_store(spec: StageSpec) -> None:
    """A cluster run's store must outlive its pods: refuse file:// (the pod's own disk)."""
    if spec.store.startswith("file://"):
        raise UserError(
            f"store: {spec.store} is the pod's own disk and is lost with it; pass --store s3://bucket/prefix or "
            "set ZHLLAMA_STORE (ctl submit: or s3.bucket in a --values file)"
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
