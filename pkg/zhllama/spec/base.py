"""What every spec shares: the frozen model config, URIs, run ids, resources and the fields of every stage."""

from __future__ import annotations

import re
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Size = Literal["tiny", "smol", "7b", "13b", "33b", "65b"]
RUN_ID_PATTERN = re.compile(r"^[a-z0-9]([-a-z0-9]{0,50}[a-z0-9])?$")


def run_id_problem(value: str) -> str | None:
    """Why `value` cannot be a run id (it names Kubernetes objects and a store prefix), or None."""
    return None if RUN_ID_PATTERN.match(value) else (
        f"{value!r} is not a valid run id: use lowercase letters, digits and '-', "
        "start and end with a letter or digit, at most 52 characters")


URI_SCHEMES = ("s3://", "file://", "run://", "store://", "embedded://")


class Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True, validate_default=True)


def check_uri(value: str) -> str:
    if not value.startswith(URI_SCHEMES):
        raise ValueError(
            f"{value!r} is not a URI; write s3://bucket/key, file:///abs/path, store://<key in the run's store>, "
            "run://<run-id>/outputs/<name> or embedded://<name>"
        )
    return value


class Resources(Spec):
    """Compute for one run. On a cluster these become pod resources; locally only nproc_per_node matters."""

    nodes: int = Field(1, ge=1)
    """Pods (one per node) for distributed stages; single-pod stages always use 1."""
    gpus_per_node: int = Field(0, ge=0)
    """GPUs per pod (`nvidia.com/gpu`); 0 runs on CPU."""
    nproc_per_node: int = Field(0, ge=0)
    """Training processes per pod (torchrun --nproc_per_node); 0 means one per GPU, or 1 on CPU."""
    cpu: str = "4"
    """CPU request per pod (Kubernetes quantity)."""
    memory: str = "16Gi"
    """Memory request and limit per pod (Kubernetes quantity)."""
    gpu_memory_gib: float = Field(80, gt=0)
    """Memory of one GPU in GiB (80 for A100/H100 80GB): the training memory plan must fit in it."""

    @property
    def procs_per_node(self) -> int:
        return self.nproc_per_node or self.gpus_per_node or 1

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node


class StageSpec(Spec):
    """Fields every stage has."""

    stage: str
    """Which stage this spec runs."""
    run_id: str
    """Run id: lowercase letters, digits and '-', at most 52 characters (it names Kubernetes objects)."""
    size: Size = "smol"
    """Size preset the defaults came from."""
    store: str = "file://./artifacts"
    """Root URI of the artifact store: file:///path (a directory) or s3://bucket/prefix."""
    seed: int = 42
    """Seed for every random number generator the stage uses."""
    resources: Resources = Resources()
    """Compute for this run."""

    input_fields: ClassVar[tuple[str, ...]] = ()
    outputs: ClassVar[tuple[str, ...]] = ()

    @field_validator("run_id")
    @classmethod
    def _run_id_is_a_dns_label(cls, value: str) -> str:
        problem = run_id_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("store")
    @classmethod
    def _store_is_a_root_uri(cls, value: str) -> str:
        if not value.startswith(("s3://", "file://")):
            raise ValueError(f"{value!r}: the store must be file:///path or s3://bucket[/prefix]")
        return value

    def input_uris(self) -> dict[str, str | list[str]]:
        """The inputs this run reads, by field name (recorded in every manifest)."""
        found: dict[str, str | list[str]] = {}
        for name in self.input_fields:
            value = getattr(self, name)
            if value:
                found[name] = value
        return found


