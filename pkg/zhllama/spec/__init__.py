"""Typed, validated run specs built from size presets, YAML files and --set overrides: resolved once, here.

May import: zhllama.errors (and pydantic, yaml). Must not import any other zhllama package.
"""

from zhllama.spec.base import Resources, StageSpec
from zhllama.spec.data import DataSource, PrepareSpec, data_uris
from zhllama.spec.loading import gpu_layout, new_run_id, parse_set, resolve_spec, spec_from_json
from zhllama.spec.models import (
    DISTRIBUTED_STAGES,
    INDEXED_STAGES,
    PIPELINE_STAGES,
    STAGE_SPECS,
    EvalSpec,
    GenerateSpec,
    LoraSpec,
    MergeSpec,
    PipelineSpec,
    QuantizeSpec,
    TokenizerSpec,
    TrainSpec,
)
from zhllama.spec.presets import PRESETS

__all__ = [
    "DISTRIBUTED_STAGES",
    "INDEXED_STAGES",
    "DataSource",
    "PrepareSpec",
    "data_uris",
    "PIPELINE_STAGES",
    "PRESETS",
    "STAGE_SPECS",
    "EvalSpec",
    "GenerateSpec",
    "LoraSpec",
    "MergeSpec",
    "PipelineSpec",
    "QuantizeSpec",
    "Resources",
    "StageSpec",
    "TokenizerSpec",
    "TrainSpec",
    "gpu_layout",
    "new_run_id",
    "parse_set",
    "resolve_spec",
    "spec_from_json",
]
