"""Typed run specs, one per stage.

Every field carries a docstring: it is the documentation `ctl explain` and the chart's values reference show.
Specs are frozen and reject unknown keys, so a typo in a YAML file or a `--set` is an error, not a silent default.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from zhllama.spec.base import Spec, StageSpec, check_uri
from zhllama.spec.data import DataSource, PrepareSpec, data_uris

StageName = Literal["tokenizer", "prepare", "pretrain", "sft", "merge", "quantize", "eval", "generate"]
PIPELINE_STAGES: tuple[StageName, ...] = ("tokenizer", "prepare", "pretrain", "sft", "merge", "quantize", "eval")
DISTRIBUTED_STAGES: frozenset[str] = frozenset({"pretrain", "sft"})
INDEXED_STAGES: frozenset[str] = frozenset({"prepare"})
"""Stages whose workers each take a share by index (an Indexed Job on Kubernetes, N processes locally)."""


class TokenizerSpec(StageSpec):
    """Train a Chinese SentencePiece model and merge it into the base vocabulary, or take a ready tokenizer as it is."""

    stage: Literal["tokenizer"] = "tokenizer"
    base_tokenizer: str = "embedded://smollm2-135m"
    """The base tokenizer: a SentencePiece tokenizer.model, an HF tokenizer.json, an HF model dir or a GGUF file."""
    extend: bool = True
    """Add Chinese pieces to `base_tokenizer`. false: `base_tokenizer` is already the tokenizer to train with (e.g.
    Chinese-LLaMA's 49953-piece tokenizer.model, or an HF directory holding it); the stage writes its HF directory
    and report and adds nothing but the pad token."""
    new_piece_scores: Literal["ordered", "zero"] = "ordered"
    """SentencePiece bases: scores of the new pieces. ordered: distinct, below the base's, in the Chinese model's
    order (a tokenizer.json matches SentencePiece exactly). zero: Chinese-LLaMA's merge_tokenizers.py layout, byte
    for byte (ties that only SentencePiece itself tokenizes right; the stage then writes the directory for it)."""
    corpus: list[str] = ["embedded://peoples-daily-train"]
    """Chinese text to train on: txt or JSONL (`text`) files, or directories of them."""
    chinese_sp_model: str | None = None
    """A ready Chinese SentencePiece model to merge instead of training one on the corpus."""
    heldout: list[str] = ["embedded://peoples-daily-heldout"]
    """Held-out text for the report and the parity check; empty: the last `heldout_lines` lines of the corpus."""
    heldout_lines: int = Field(3000, ge=1)
    """Lines held out from the end of the corpus when `heldout` is empty."""
    vocab_size: int = Field(20000, ge=100)
    """Pieces in the Chinese SentencePiece model (the paper: 20000)."""
    model_type: Literal["bpe", "unigram"] = "bpe"
    """SentencePiece algorithm for the Chinese model."""
    character_coverage: float = Field(0.9995, gt=0, le=1)
    """Share of corpus characters the Chinese model must cover."""
    max_training_sentences: int = Field(2_000_000, ge=1)
    """Cap on corpus lines sampled for SentencePiece training."""
    pad_token: bool = True
    """Append a pad token after the merged vocabulary (needed by SFT batching)."""
    parity_lines: int | None = None
    """Held-out lines checked for fast/SentencePiece id parity; None checks all of them."""
    num_threads: int = Field(2, ge=1)
    """Threads for SentencePiece training."""

    input_fields: ClassVar[tuple[str, ...]] = ("base_tokenizer", "corpus", "chinese_sp_model", "heldout")
    outputs: ClassVar[tuple[str, ...]] = ("tokenizer",)

    @field_validator("base_tokenizer")
    @classmethod
    def _base_is_uri(cls, value: str) -> str:
        return check_uri(value)

    @field_validator("corpus", "heldout")
    @classmethod
    def _uris(cls, values: list[str]) -> list[str]:
        return [check_uri(v) for v in values]

    @model_validator(mode="after")
    def _consistent(self) -> TokenizerSpec:
        problems = []
        if self.extend and not self.corpus and not self.chinese_sp_model:
            problems.append("set `corpus` (text to train on) or `chinese_sp_model` (a ready model)")
        if not self.extend and self.chinese_sp_model:
            problems.append("chinese_sp_model: a ready tokenizer (extend: false) gets no new pieces; drop "
                            "chinese_sp_model or set extend: true")
        if not self.extend and self.new_piece_scores != "ordered":
            problems.append("new_piece_scores: applies to new pieces, and extend: false adds none; drop it or set "
                            "extend: true")
        if not self.extend and not self.corpus and not self.heldout:
            problems.append("heldout: a ready tokenizer is checked on held-out text; set heldout (or corpus)")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class LoraSpec(Spec):
    """The LoRA adapter and the modules trained in full."""

    r: int = Field(8, ge=1)
    """LoRA rank (the paper: 8)."""
    alpha: float = Field(32, gt=0)
    """LoRA scaling numerator; the update is scaled by alpha / r (the paper: 32)."""
    dropout: float = Field(0.05, ge=0, lt=1)
    """Dropout on the LoRA input (the paper: 0.05)."""
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    """Linear layers that get a LoRA adapter (attention and MLP)."""
    modules_to_save: list[str] = ["embed_tokens", "lm_head"]
    """Modules trained in full and saved with the adapter (the resized embeddings and head)."""


class TrainSpec(StageSpec):
    """Continued pretraining (`pretrain`) or instruction tuning (`sft`) of a LoRA adapter."""

    stage: Literal["pretrain", "sft"] = "pretrain"
    base_model: str = "embedded://smollm2-135m"
    """The base model: an HF directory (safetensors) or a GGUF file."""
    base_adapters: list[str] = []
    """Adapters merged into the base, in order, before training (SFT trains on base + pretraining LoRA)."""
    tokenizer: str = "embedded://smollm2-135m"
    """The extended tokenizer (the tokenizer stage's output)."""
    data: list[DataSource] = [DataSource(uri="embedded://peoples-daily-train")]
    """Training data: txt/JSONL text for pretrain, each source with a mixture weight (tokenized by this run, once
    per corpus and tokenizer, cached in the store); Alpaca, conversation or role/text JSONL for SFT."""
    dataset: str | None = None
    """Pretrain: a `prepare` run's output (run://<id>/outputs/dataset) to stream instead of tokenizing `data`;
    its sources and weights are the prepared ones, and `data` is not read (as LLaMA-Factory's tokenized_path)."""
    block_size: int = Field(512, ge=8)
    """Tokens per training sequence (the paper: 512)."""
    micro_batch_size: int = Field(1, ge=1)
    """Sequences per process per forward pass."""
    grad_accum_steps: int = Field(1, ge=1)
    """Micro-batches accumulated into one optimizer step."""
    max_steps: int = Field(100, ge=1)
    """Optimizer steps to train."""
    lr: float = Field(2e-4, gt=0)
    """Peak learning rate (the paper: 2e-4)."""
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    """Learning-rate schedule after warmup."""
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    """Share of steps spent warming up linearly."""
    weight_decay: float = Field(0.01, ge=0)
    """AdamW weight decay."""
    max_grad_norm: float = Field(1.0, gt=0)
    """Gradient clipping norm."""
    lora: LoraSpec = LoraSpec()
    """The LoRA adapter."""
    embedding_only_steps: int = Field(0, ge=0)
    """First steps that train only embed_tokens/lm_head (the paper's stage 1 for 7B); 0 skips it."""
    init_new_rows: Literal["subtoken_mean", "mean", "random"] = "subtoken_mean"
    """How new embedding rows start: mean of the base rows of the piece's sub-tokens, mean of all rows, or random."""
    pad_vocab_multiple: int = Field(1, ge=1)
    """Pad the resized embeddings to a multiple of this (64 helps tensor cores)."""
    bits: Literal[16, 8, 4] = 16
    """Load the frozen base in 16 bits, 8 bits (LLM.int8) or 4 bits (NF4 + double quant, QLoRA); GPU only."""
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """Compute precision; auto is bf16 on GPU and fp32 on CPU. fp16 uses dynamic loss scaling."""
    zero_stage: Literal[0, 2, 3] = 2
    """DeepSpeed ZeRO stage (the paper: 2); 0 trains without DeepSpeed."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    attn_implementation: Literal["auto", "flash_attention_2", "sdpa", "eager"] = "auto"
    """Attention kernel: auto is flash_attention_2 on an Ampere-or-newer CUDA GPU where flash-attn is installed and
    precision is bf16/fp16, else sdpa. Packed SFT examples attend only within themselves under every choice (varlen
    flash attention, or a block mask built from their restarting position ids)."""
    fused_cross_entropy: Literal["auto", "liger", "chunked", "off"] = "auto"
    """Loss without the full fp32 logits: liger (Liger kernel's fused linear + cross-entropy, CUDA), chunked (the
    head and loss a slice of tokens at a time, in PyTorch), off (the model's own loss). auto: liger on CUDA where
    liger-kernel is installed, else off. Not with zero_stage 3 (the head is partitioned)."""
    compile: bool = False
    """torch.compile each decoder layer (off by default until a GPU check shows the gain on this recipe)."""
    log_every: int = Field(10, ge=1)
    """Steps between metric records."""
    checkpoint_every: int = Field(100, ge=1)
    """Steps between checkpoints in the store."""
    keep_checkpoints: int = Field(2, ge=1)
    """Newest checkpoints kept; older ones are deleted."""
    packing: bool = False
    """SFT: pack several examples into one block."""
    skip_bad_records: bool = False
    """SFT: count malformed records in the report instead of failing."""
    tokenize_workers: int = Field(2, ge=1)
    """Processes that tokenize `data` when pretrain does it itself (no `dataset`)."""
    shuffle_window: int = Field(8, ge=1)
    """Pretrain: shards of a source whose blocks are shuffled together. Every epoch visits a source's shards in
    a fresh random order, this many at a time, so a pod holds a few shards at once instead of the corpus."""
    process_group_timeout_s: int = Field(3600, ge=60)
    """Seconds a collective may wait for the slowest rank before the job fails (torch.distributed's timeout; NCCL's
    default is 600). It must cover the spread between pods finishing their input downloads (the first collective
    is the rendezvous after them) and a local checkpoint write. Tokenization, downloads and checkpoint uploads
    never run while another rank waits in a collective. The reference passes --ddp_timeout 30000."""

    input_fields: ClassVar[tuple[str, ...]] = ("base_model", "base_adapters", "tokenizer", "dataset", "data")
    outputs: ClassVar[tuple[str, ...]] = ("adapter",)

    @field_validator("base_model", "tokenizer", "dataset")
    @classmethod
    def _uri(cls, value: str | None) -> str | None:
        return None if value is None else check_uri(value)

    @field_validator("base_adapters")
    @classmethod
    def _uris(cls, values: list[str]) -> list[str]:
        return [check_uri(v) for v in values]

    @model_validator(mode="after")
    def _consistent(self) -> TrainSpec:
        problems = []
        weighted = [source.uri for source in self.data if source.weight != 1]
        if self.stage == "sft" and weighted:
            problems.append(f"data: {', '.join(weighted)}: weights apply to pretraining; SFT reads every example "
                            "once per epoch, so drop the weight")
        if self.stage == "sft" and self.dataset:
            problems.append("dataset: SFT tokenizes its own examples; a prepared dataset is for pretrain")
        if self.fused_cross_entropy in ("liger", "chunked") and self.zero_stage == 3 and self.bits == 16:
            problems.append(f"fused_cross_entropy: {self.fused_cross_entropy} reads lm_head's weight whole, and "
                            "zero_stage 3 partitions it; use zero_stage 2, or fused_cross_entropy auto/off")
        if self.compile and self.zero_stage == 3 and self.bits == 16:
            problems.append("compile: ZeRO-3 gathers each layer's weights in hooks that a compiled layer does not "
                            "run; use zero_stage 2, or compile false")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def input_uris(self) -> dict[str, str | list[str]]:
        found = {name: value for name, value in super().input_uris().items() if name != "data"}
        if not self.dataset:
            found["data"] = data_uris(self.data)
        return found


class MergeSpec(StageSpec):
    """Merge LoRA adapters (in order) into the base, shard by shard."""

    stage: Literal["merge"] = "merge"
    base_model: str = "embedded://smollm2-135m"
    """The base model: an HF directory (safetensors) or a GGUF file."""
    adapters: list[str] = []
    """Adapters applied in order (pretraining LoRA, then SFT LoRA)."""
    tokenizer: str = "embedded://smollm2-135m"
    """The extended tokenizer; its files are copied into the merged model."""
    max_shard_size: str = "2GB"
    """Largest safetensors shard written (e.g. 2GB, 500MB)."""
    dtype: Literal["float16", "bfloat16", "float32"] = "float16"
    """Dtype of the merged weights."""

    input_fields: ClassVar[tuple[str, ...]] = ("base_model", "adapters", "tokenizer")
    outputs: ClassVar[tuple[str, ...]] = ("model",)


class QuantizeSpec(StageSpec):
    """Export the merged model to GGUF files for llama.cpp, with the perplexity table."""

    stage: Literal["quantize"] = "quantize"
    model: str = "embedded://smollm2-135m"
    """The merged model (HF directory)."""
    types: list[str] = ["F16", "Q8_0", "Q5_0", "Q4_0"]
    """GGUF types to write: F16, BF16, Q8_0, Q5_0, Q5_1, Q4_0, Q4_1, and K-quants where llama.cpp is available."""
    heldout: list[str] = ["embedded://peoples-daily-heldout"]
    """Held-out text for the per-character perplexity column."""
    max_eval_chars: int = Field(20000, ge=100)
    """Characters of held-out text scored per type."""
    check_llama_cpp: bool = True
    """Also load each file with llama.cpp when llama-cpp-python is installed."""

    input_fields: ClassVar[tuple[str, ...]] = ("model", "heldout")
    outputs: ClassVar[tuple[str, ...]] = ("gguf",)


class EvalSpec(StageSpec):
    """Per-character perplexity, C-Eval/CMMLU through lm-evaluation-harness, and held-out generation tasks."""

    stage: Literal["eval"] = "eval"
    model: str = "embedded://smollm2-135m"
    """The model: an HF directory, a base for `adapters`, or a GGUF artifact."""
    adapters: list[str] = []
    """Adapters applied in order on top of `model`, unmerged."""
    tokenizer: str | None = None
    """Tokenizer directory when it is not inside the model directory."""
    gguf_file: str | None = None
    """File name inside `model` to load as GGUF."""
    heldout: list[str] = ["embedded://peoples-daily-heldout"]
    """Held-out text for per-character perplexity."""
    exams: list[str] = []
    """CMMLU or C-Eval directories in the benchmark's own layout (CMMLU: dev/ and test/<subject>.csv; C-Eval:
    dev/ and val/<subject>_val.csv), scored by lm-evaluation-harness's own cmmlu_*/ceval-valid_* tasks."""
    shots: list[int] = [0, 5]
    """Few-shot settings to score."""
    exam_batch_size: int = Field(8, ge=1)
    """Questions per harness forward batch (the harness's --batch_size)."""
    tasks: list[str] = []
    """Held-out generation tasks: Alpaca JSONL whose `output` is the expected answer and `metric` says how to
    score it (accuracy or segmentation_f1)."""
    max_task_examples: int = Field(200, ge=1)
    """Examples scored per task."""
    sample_prompts: list[str] = []
    """Instructions whose generations (the paper's decoding settings) go into the report."""
    max_new_tokens: int = Field(64, ge=1)
    """Most tokens generated per task example or sample prompt."""
    instruction_model: bool = False
    """Wrap prompts in the Alpaca template (instruction-tuned models) instead of plain prompts."""
    window: int = Field(512, ge=8)
    """Tokens per perplexity window."""
    stride: int = Field(256, ge=1)
    """Tokens the perplexity window advances by."""
    max_chars: int | None = 20000
    """Cap on held-out characters scored; None scores everything."""

    input_fields: ClassVar[tuple[str, ...]] = ("model", "adapters", "tokenizer", "heldout", "exams", "tasks")
    outputs: ClassVar[tuple[str, ...]] = ("eval",)


class GenerateSpec(StageSpec):
    """Generate answers with the paper's decoding settings."""

    stage: Literal["generate"] = "generate"
    model: str = "embedded://smollm2-135m"
    """The model: an HF directory, a base for `adapters`, or a GGUF artifact."""
    adapters: list[str] = []
    """Adapters applied in order on top of `model`, unmerged."""
    tokenizer: str | None = None
    """Tokenizer directory when it is not inside the model directory."""
    gguf_file: str | None = None
    """File name inside `model` to load as GGUF."""
    prompts: list[str] = []
    """Prompts to answer."""
    prompts_file: str | None = None
    """A file of prompts: one per line, or JSONL with `instruction`."""
    instruction_model: bool = True
    """Wrap prompts in the Alpaca template."""
    temperature: float = Field(0.2, ge=0)
    """Sampling temperature (the paper: 0.2)."""
    top_k: int = Field(40, ge=0)
    """Top-k sampling (the paper: 40)."""
    top_p: float = Field(0.9, gt=0, le=1)
    """Nucleus sampling (the paper: 0.9)."""
    repetition_penalty: float = Field(1.1, ge=1)
    """Repetition penalty (the paper: 1.1)."""
    max_new_tokens: int = Field(512, ge=1)
    """Most tokens generated per prompt (the paper: 512)."""

    input_fields: ClassVar[tuple[str, ...]] = ("model", "adapters", "tokenizer", "prompts_file")
    outputs: ClassVar[tuple[str, ...]] = ("generations",)


class PipelineSpec(StageSpec):
    """tokenizer -> prepare -> pretrain -> sft -> merge -> quantize -> eval, each stage a run of its own."""

    stage: Literal["pipeline"] = "pipeline"
    stages: list[StageName] = list(PIPELINE_STAGES)
    """Stages to run, in order."""
    overrides: dict[str, dict[str, Any]] = {}
    """Per-stage settings on top of the size preset, e.g. {"pretrain": {"max_steps": 10}}."""
    report: bool = True
    """Write the run report (report.md + figures) when the pipeline finishes."""

    outputs: ClassVar[tuple[str, ...]] = ("report",)

    @field_validator("overrides")
    @classmethod
    def _overrides_name_stages(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        # A misspelt stage would otherwise be ignored: its settings silently never applied.
        unknown = sorted(set(value) - set(PIPELINE_STAGES))
        if unknown:
            raise ValueError(
                f"{', '.join(repr(name) for name in unknown)} is not a pipeline stage; "
                f"overrides are keyed by stage: {', '.join(PIPELINE_STAGES)}"
            )
        return value


STAGE_SPECS: dict[str, type[StageSpec]] = {
    "tokenizer": TokenizerSpec,
    "prepare": PrepareSpec,
    "pretrain": TrainSpec,
    "sft": TrainSpec,
    "merge": MergeSpec,
    "quantize": QuantizeSpec,
    "eval": EvalSpec,
    "generate": GenerateSpec,
    "pipeline": PipelineSpec,
}
