"""The tokenizer stage as a job: resolve the spec's inputs, build, publish."""

from __future__ import annotations

from zhllama.run import RunContext
from zhllama.spec import TokenizerSpec
from zhllama.tokenizer.build import build_tokenizer


def run_tokenizer(ctx: RunContext) -> None:
    spec = ctx.spec
    assert isinstance(spec, TokenizerSpec)
    out = ctx.output_dir("tokenizer")
    build_tokenizer(
        ctx.input(spec.base_tokenizer),
        out,
        corpus=[ctx.input(uri) for uri in spec.corpus] if spec.extend or not spec.heldout else [],
        chinese_sp_model=ctx.input(spec.chinese_sp_model) if spec.chinese_sp_model else None,
        extend=spec.extend,
        new_piece_scores=spec.new_piece_scores,
        heldout=[ctx.input(uri) for uri in spec.heldout],
        heldout_lines=spec.heldout_lines,
        vocab_size=spec.vocab_size,
        model_type=spec.model_type,
        character_coverage=spec.character_coverage,
        max_training_sentences=spec.max_training_sentences,
        add_pad_token=spec.pad_token,
        parity_lines=spec.parity_lines,
        num_threads=spec.num_threads,
        seed=spec.seed,
    )
    ctx.publish("tokenizer")
