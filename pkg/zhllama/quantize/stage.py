"""The quantize stage: inputs from the run context, quantize_all, the GGUF files published as `gguf`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from zhllama.eval.perplexity import read_documents
from zhllama.quantize.quantize import check_types, quantize_all
from zhllama.spec.models import QuantizeSpec

if TYPE_CHECKING:
    from zhllama.run import RunContext


def run_quantize(ctx: RunContext) -> None:
    """Export the merged model to each GGUF type, with the per-character perplexity table in report.md."""
    spec = ctx.spec
    assert isinstance(spec, QuantizeSpec)
    check_types(spec.types)  # a typo in `types` fails before the model or the text is fetched
    model_dir = ctx.input(spec.model)
    documents: list[str] = []
    for uri in spec.heldout:
        budget = spec.max_eval_chars - sum(len(d) for d in documents)
        if budget <= 0:
            break
        documents += read_documents(ctx.input(uri), budget)
    out_dir = ctx.output_dir("gguf")
    quantize_all(
        model_dir,
        out_dir,
        spec.types,
        documents,
        check_llama_cpp=spec.check_llama_cpp,
        workdir=ctx.workdir,
        progress=lambda types: ctx.progress(types, desc="quantize"),
    )
    ctx.publish("gguf")
