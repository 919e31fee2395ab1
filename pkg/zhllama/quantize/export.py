"""Write a merged HF LLaMA model as one GGUF file, tensor by tensor, quantized with the gguf package.

Only one tensor is in memory at a time: the tensor infos are declared from the safetensors shapes first, then
each tensor is read, permuted if needed, quantized and appended.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from zhllama.errors import UserError
from zhllama.merge.shards import index_safetensors, read_tensor
from zhllama.quantize.vocab import read_vocab

Q = gguf.GGMLQuantizationType
F = gguf.LlamaFileType


@dataclass(frozen=True)
class GGUFType:
    name: str
    weights: gguf.GGMLQuantizationType
    file_type: gguf.LlamaFileType


NUMPY_TYPES = {
    t.name: t
    for t in (
        GGUFType("F32", Q.F32, F.ALL_F32),
        GGUFType("F16", Q.F16, F.MOSTLY_F16),
        GGUFType("BF16", Q.BF16, F.MOSTLY_BF16),
        GGUFType("Q8_0", Q.Q8_0, F.MOSTLY_Q8_0),
        GGUFType("Q5_1", Q.Q5_1, F.MOSTLY_Q5_1),
        GGUFType("Q5_0", Q.Q5_0, F.MOSTLY_Q5_0),
        GGUFType("Q4_1", Q.Q4_1, F.MOSTLY_Q4_1),
        GGUFType("Q4_0", Q.Q4_0, F.MOSTLY_Q4_0),
    )
}
"""Types this exporter writes itself: from the F16-rounded weights, byte for byte what llama.cpp's quantizer makes
of the F16 file (where both store a tensor as the same type; see LOW_BIT)."""

LOW_BIT = {"Q5_1", "Q5_0", "Q4_1", "Q4_0"}
"""Types whose output matrix stays Q8_0: the last projection is the most sensitive. llama.cpp keeps it high too:
Q6_K where its rows are whole 256-blocks (gguf cannot write K-quants), else Q8_0 as here."""

HF_TO_GGUF = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
LAYER_TO_GGUF = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
LAYER_PATTERN = re.compile(r"model\.layers\.(\d+)\.(.+)\.weight")


def gguf_name(hf_name: str) -> str | None:
    """GGUF tensor name of an HF LLaMA tensor; None for buffers llama.cpp recomputes (rotary inv_freq)."""
    if hf_name in HF_TO_GGUF:
        return HF_TO_GGUF[hf_name]
    if hf_name.endswith("rotary_emb.inv_freq"):
        return None
    match = LAYER_PATTERN.fullmatch(hf_name)
    if not match or match.group(2) not in LAYER_TO_GGUF:
        raise UserError(f"tensor {hf_name} has no GGUF name: only LLaMA-architecture models can be exported")
    return f"blk.{match.group(1)}.{LAYER_TO_GGUF[match.group(2)]}.weight"


def rotary_interleave(weight: np.ndarray, heads: int) -> np.ndarray:
    """Reorder Q/K rows from HF's rotate-half layout to ggml's adjacent-pair rope layout.

    HF rotates row i of each head with row i + head_dim/2; ggml rotates rows 2i and 2i+1. So the two halves of
    every head are interleaved: new row 2i = old row i, new row 2i+1 = old row i + head_dim/2.
    """
    rows, cols = weight.shape
    head_dim = rows // heads
    halves = weight.reshape(heads, 2, head_dim // 2, cols)
    return halves.transpose(0, 2, 1, 3).reshape(rows, cols)


def gguf_layout(hf_name: str, weight: np.ndarray, config: dict[str, Any]) -> np.ndarray:
    """An HF tensor as the GGUF file stores it: Q and K rows interleaved for ggml's rope, everything else as is."""
    heads = config["num_attention_heads"]
    if hf_name.endswith("self_attn.q_proj.weight"):
        return rotary_interleave(weight, heads)
    if hf_name.endswith("self_attn.k_proj.weight"):
        return rotary_interleave(weight, config.get("num_key_value_heads") or heads)
    return weight


def float_tensors(model_dir: Path) -> Iterator[tuple[str, np.ndarray]]:
    """(GGUF name, float32 array in the file's layout) for every tensor the export writes, one at a time."""
    config = json.loads((model_dir / "config.json").read_text())
    for hf, stored in index_safetensors(model_dir).items():
        name = gguf_name(hf)
        if name is not None:
            yield name, gguf_layout(hf, read_tensor(stored.file, hf).float().numpy(), config)


def model_metadata(config: dict[str, Any], writer: gguf.GGUFWriter) -> None:
    """llama.* hyper-parameters llama.cpp needs to build the graph."""
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    rope_theta = rope.get("rope_theta", config.get("rope_theta", 10000.0))
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.get("num_key_value_heads") or heads)
    writer.add_rope_freq_base(float(rope_theta))
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    writer.add_vocab_size(config["vocab_size"])
    if head_dim != config["hidden_size"] // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    elif rope_type != "default":
        raise UserError(f"config.json: rope type {rope_type!r} is not supported by the GGUF export (default, linear)")


def tensor_type(gguf_tensor: str, shape: tuple[int, ...], qtype: GGUFType, output_tensor: str) -> Q:
    """What a tensor is stored as: norms stay F32, the output matrix Q8_0 under low-bit types."""
    if len(shape) == 1 or qtype.weights == Q.F32:
        return Q.F32
    chosen = Q.Q8_0 if qtype.name in LOW_BIT and gguf_tensor == output_tensor else qtype.weights
    block, _ = gguf.GGML_QUANT_SIZES[chosen]
    # rows whose length is not a whole number of blocks cannot be block-quantized
    return chosen if shape[-1] % block == 0 else Q.F16


def export_gguf(
    model_dir: Path,
    out_path: Path,
    qtype: str,
    progress: Callable[[Iterable[str]], Iterable[str]] = lambda names: names,
) -> Path:
    """Write `model_dir` (HF LLaMA, safetensors, tokenizer files) as a GGUF file of type `qtype`."""
    if qtype not in NUMPY_TYPES:
        raise UserError(f"quantize: the GGUF exporter writes {', '.join(NUMPY_TYPES)}, not {qtype!r}")
    kind = NUMPY_TYPES[qtype]
    if not (model_dir / "config.json").is_file():
        raise UserError(f"quantize: {model_dir} has no config.json; pass an HF model directory (the merge output)")
    config = json.loads((model_dir / "config.json").read_text())
    if config.get("model_type") != "llama":
        raise UserError(f"{model_dir}/config.json: model_type {config.get('model_type')!r}; only llama is exported")
    stored = index_safetensors(model_dir)
    vocab = read_vocab(model_dir)
    vocab.pad_to(stored["model.embed_tokens.weight"].shape[0])

    names = {hf: name for hf in stored if (name := gguf_name(hf)) is not None}
    output_tensor = "output.weight" if "output.weight" in names.values() else "token_embd.weight"
    plan = {hf: tensor_type(names[hf], stored[hf].shape, kind, output_tensor) for hf in names}

    writer = gguf.GGUFWriter(out_path, "llama")
    writer.add_name(str(config.get("_name_or_path") or model_dir.name))
    writer.add_file_type(kind.file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    model_metadata(config, writer)
    vocab.write(writer)
    for hf, ggml_type in plan.items():
        shape = stored[hf].shape
        if ggml_type in (Q.F32, Q.F16):
            dtype = np.float32 if ggml_type == Q.F32 else np.float16
            nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
            writer.add_tensor_info(names[hf], shape, np.dtype(dtype), nbytes, raw_dtype=ggml_type)
        else:
            byte_shape = gguf.quant_shape_to_byte_shape(shape, ggml_type)
            writer.add_tensor_info(names[hf], byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)), ggml_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    try:
        for hf in progress(list(plan)):
            weight = gguf_layout(hf, read_tensor(stored[hf].file, hf).float().numpy(), config)
            if plan[hf] not in (Q.F32, Q.F16, Q.BF16):
                # llama.cpp's quantizer reads the F16 file: quantizing the same half-rounded values writes its bytes
                weight = weight.astype(np.float16).astype(np.float32)
            writer.write_tensor_data(gguf.quants.quantize(weight, plan[hf]))
    except BaseException:
        writer.close()
        out_path.unlink(missing_ok=True)
        raise
    writer.close()
    return out_path
