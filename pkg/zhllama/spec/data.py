"""The pretraining data: weighted sources, and the `prepare` stage that tokenizes them into shards."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from zhllama.spec.base import Spec, StageSpec, check_uri


class DataSource(Spec):
    """One corpus and its share of the training samples. In YAML either a URI alone (weight 1) or
    `{uri: ..., weight: ...}`."""

    uri: str
    """Text: txt or JSONL (`text`) files, or directories of them (local, S3, store://, run://, embedded://)."""
    weight: float = 1.0
    """Relative share of the training samples drawn from this source; weights are normalized, e.g. Chinese news
    0.9 + English replay 0.1. A source smaller than its share is repeated (each repeat reshuffled)."""

    @model_validator(mode="before")
    @classmethod
    def _a_bare_uri_is_weight_one(cls, value: Any) -> Any:
        return {"uri": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _checked(self) -> DataSource:
        check_uri(self.uri)
        if not self.weight > 0:
            raise ValueError(f"{self.uri}: weight {self.weight} must be > 0; give every source a positive share, "
                             "or remove the entry")
        return self


def data_uris(sources: list[DataSource]) -> list[str]:
    return [source.uri for source in sources]


class PrepareSpec(StageSpec):
    """Tokenize pretraining corpora, in parallel workers, into the sharded token dataset `pretrain` streams."""

    stage: Literal["prepare"] = "prepare"
    tokenizer: str = "embedded://smollm2-135m"
    """The extended tokenizer (the tokenizer stage's output): the dataset is only valid with it."""
    data: list[DataSource] = [DataSource(uri="embedded://peoples-daily-train")]
    """Sources with their mixture weights (recorded in the dataset; `pretrain` samples by them)."""
    block_size: int = Field(512, ge=8)
    """Tokens per training block; must equal the pretrain run's block_size."""
    workers: int = Field(2, ge=1)
    """Parallel workers: the pods of an Indexed Job on Kubernetes (completions = parallelism), processes under
    --local. Files are dealt to workers by size; each file is tokenized once and kept under a key of its content,
    so a re-run redoes only the files that are missing or changed."""
    shard_mb: float = Field(128, gt=0, le=4096)
    """Largest shard file of token ids, in MB (64-256 streams well); a file's tokens fill as many as it needs."""
    skip_bad_records: bool = False
    """Count malformed JSONL records in the dataset's report instead of failing on the first."""
    wait_timeout_s: int = Field(86400, ge=60)
    """How long worker 0 waits for the other workers' files before the run fails."""

    input_fields: ClassVar[tuple[str, ...]] = ("tokenizer", "data")
    outputs: ClassVar[tuple[str, ...]] = ("dataset",)

    @field_validator("tokenizer")
    @classmethod
    def _uri(cls, value: str) -> str:
        return check_uri(value)

    @field_validator("data")
    @classmethod
    def _some_data(cls, value: list[DataSource]) -> list[DataSource]:
        if not value:
            raise ValueError("no sources: give at least one {uri, weight}")
        return value

    def input_uris(self) -> dict[str, str | list[str]]:
        return {"tokenizer": self.tokenizer, "data": data_uris(self.data)}
