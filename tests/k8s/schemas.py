"""Validate Kubernetes objects against the real schemas: the API's OpenAPI (kubernetes-validate) for core kinds,
the CRDs' openAPIV3Schema for PyTorchJob and TrainJob (copies of shared/crds in crds/, so a fresh clone passes).

Validation is strict like `kubectl apply --validate=strict`: a field the schema does not define is an error,
in CRDs too (where the API server would silently prune it). A batch/v1 Job is also held to the API server's own
rules that no schema states (`job_rules`: an Indexed Job's completions, per-index retries, restart policy).
"""

from __future__ import annotations

import copy
import re
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

CRD_DIR = Path(__file__).parent / "crds"
KUBERNETES_VERSION = "1.37.0"
MAX_INDEXED_PARALLELISM = 100_000
"""pkg/apis/batch/validation: maxParallelismForIndexedJob (and completionsSoftLimit with backoffLimitPerIndex)."""
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """Forbid undeclared fields wherever the CRD lists its fields and does not keep unknown ones."""
    if isinstance(schema, dict):
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        for value in schema.values():
            if isinstance(value, dict):
                _strict(value)
            elif isinstance(value, list):
                for item in value:
                    _strict(item)
    return schema


@cache
def crd_validators() -> dict[tuple[str, str], jsonschema.Draft7Validator]:
    """(apiVersion, kind) -> validator, for every served version of every CRD in crds/."""
    validators = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = _strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
            validators[(f"{group}/{version['name']}", kind)] = jsonschema.Draft7Validator(schema)
    return validators


def validation_errors(obj: dict[str, Any]) -> list[str]:
    """Every schema violation of `obj`, each as 'path: message'; empty when valid."""
    key = (obj.get("apiVersion", ""), obj.get("kind", ""))
    validator = crd_validators().get(key)
    if validator is not None:
        return [f"{error.json_path}: {error.message}" for error in validator.iter_errors(obj)]
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [f"{error.json_path}: {error.message}"]
    except kubernetes_validate.SchemaNotFoundError:
        return [f"no schema for {key[0]} {key[1]}"]
    return job_rules(obj) if key == ("batch/v1", "Job") else []


def job_rules(job: dict[str, Any]) -> list[str]:
    """What the API server refuses in a Job beyond its schema (pkg/apis/batch/validation ValidateJob, the rules
    an Indexed Job meets), in its words."""
    spec = job.get("spec") or {}
    errors = []
    for name in ("parallelism", "completions", "backoffLimit", "backoffLimitPerIndex", "maxFailedIndexes",
                 "activeDeadlineSeconds", "ttlSecondsAfterFinished"):
        if isinstance(spec.get(name), int) and spec[name] < 0:
            errors.append(f"spec.{name}: must be greater than or equal to 0")
    mode, completions = spec.get("completionMode"), spec.get("completions")
    indexed = mode == "Indexed"
    if mode not in (None, "NonIndexed", "Indexed"):
        errors.append(f'spec.completionMode: Unsupported value: "{mode}": supported values: "NonIndexed", "Indexed"')
    if indexed and completions is None:
        errors.append("spec.completions: Required value: when completion mode is Indexed")
    if indexed and (spec.get("parallelism") or 0) > MAX_INDEXED_PARALLELISM:
        errors.append(f"spec.parallelism: must be less than or equal to {MAX_INDEXED_PARALLELISM} when completion "
                      "mode is Indexed")
    if indexed and spec.get("backoffLimitPerIndex") is not None and (completions or 0) > MAX_INDEXED_PARALLELISM \
            and spec.get("maxFailedIndexes") is None:
        errors.append(f"spec.maxFailedIndexes: Required value: must be specified when completions is above "
                      f"{MAX_INDEXED_PARALLELISM}")
    for name in ("backoffLimitPerIndex", "maxFailedIndexes"):
        if mode in (None, "NonIndexed") and spec.get(name) is not None:
            errors.append(f"spec.{name}: Invalid value: {spec[name]}: requires indexed completion mode")
    if spec.get("maxFailedIndexes") is not None:
        if spec.get("backoffLimitPerIndex") is None:
            errors.append("spec.backoffLimitPerIndex: Required value: when maxFailedIndexes is specified")
        if indexed and completions is not None and spec["maxFailedIndexes"] > completions:
            errors.append("spec.maxFailedIndexes: must be less than or equal to completions")
    if indexed and isinstance(completions, int) and completions > 0:
        hostname = f"{job.get('metadata', {}).get('name', '')}-{completions - 1}"
        if not DNS_LABEL.match(hostname):
            errors.append(f"metadata.name: will not able to create pod with invalid DNS label: {hostname}")
    restart = ((spec.get("template") or {}).get("spec") or {}).get("restartPolicy")
    if restart not in ("OnFailure", "Never"):
        errors.append(f'spec.template.spec.restartPolicy: valid values: "OnFailure", "Never" (got {restart!r})')
    elif spec.get("podFailurePolicy") is not None and restart != "Never":
        errors.append('spec.template.spec.restartPolicy: only "Never" is supported when podFailurePolicy is '
                      "specified")
    return errors
