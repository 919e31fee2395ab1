"""The shapes of the LLaMA-family bases the memory plan knows (the size presets' bases), and how to read one from
an HF config.json."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Architecture:
    """A LLaMA-family decoder's shape, with the embedding rows it has after the vocabulary resize."""

    name: str
    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab_rows: int
    """Rows of embed_tokens/lm_head after the resize (the extended tokenizer, padded)."""
    base_vocab: int
    """Rows in the base checkpoint."""
    tied: bool = False
    head_dim: int = 0
    """0: hidden // heads."""
    checkpoint_bytes: int = 2
    """Bytes per parameter in the saved checkpoint (what loading maps on CPU)."""

    def __post_init__(self) -> None:
        if not self.head_dim:
            object.__setattr__(self, "head_dim", self.hidden // self.heads)

    @classmethod
    def from_config(cls, config: dict[str, Any], vocab_rows: int, name: str = "") -> Architecture:
        """From an HF LlamaConfig (config.json) dict; `vocab_rows` are the rows after the resize."""
        heads = int(config["num_attention_heads"])
        dtype = str(config.get("dtype") or config.get("torch_dtype") or "float16")
        return cls(
            name=name or str(config.get("_name_or_path") or config.get("model_type") or "llama"),
            hidden=int(config["hidden_size"]), layers=int(config["num_hidden_layers"]),
            intermediate=int(config["intermediate_size"]), heads=heads,
            kv_heads=int(config.get("num_key_value_heads") or heads),
            vocab_rows=max(vocab_rows, int(config["vocab_size"])), base_vocab=int(config["vocab_size"]),
            tied=bool(config.get("tie_word_embeddings", False)),
            head_dim=int(config.get("head_dim") or int(config["hidden_size"]) // heads),
            checkpoint_bytes=4 if "32" in dtype else 2,
        )

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear layer of one decoder layer."""
        q, kv, h, i = self.heads * self.head_dim, self.kv_heads * self.head_dim, self.hidden, self.intermediate
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    @property
    def layer_params(self) -> int:
        return sum(a * b for a, b in self.linears().values())

    @property
    def body_params(self) -> int:
        return self.layers * self.layer_params

    @property
    def norm_params(self) -> int:
        return (2 * self.layers + 1) * self.hidden

    @property
    def embedding_params(self) -> int:
        """One of embed_tokens / lm_head after the resize."""
        return self.vocab_rows * self.hidden

    @property
    def checkpoint_params(self) -> int:
        return self.body_params + self.norm_params + self.base_vocab * self.hidden * (1 if self.tied else 2)

    def with_vocab(self, rows: int) -> Architecture:
        return dataclasses.replace(self, vocab_rows=rows)


def _llama(name: str, hidden: int, layers: int, intermediate: int, heads: int) -> Architecture:
    # Chinese-LLaMA's vocabulary: 49953 pieces + the pad token.
    return Architecture(name, hidden, layers, intermediate, heads, heads, vocab_rows=49954, base_vocab=32000)


KNOWN_ARCHITECTURES: dict[str, Architecture] = {
    # The embedded tiny-llama (embedded/models.py); 53211 rows: SmolLM2's 49152 + the tiny tokenizer stage's pieces.
    "tiny": Architecture("tiny-llama", 64, 2, 128, 4, 2, vocab_rows=53211, base_vocab=49152, tied=True,
                         checkpoint_bytes=4),
    # SmolLM2-135M, imported from GGUF to fp32 safetensors; 68879 rows from the smol tokenizer stage (20000 pieces).
    "smol": Architecture("smollm2-135m", 576, 30, 1536, 9, 3, vocab_rows=68879, base_vocab=49152, tied=True,
                         checkpoint_bytes=4),
    "7b": _llama("llama-7b", 4096, 32, 11008, 32),
    "13b": _llama("llama-13b", 5120, 40, 13824, 40),
    "33b": _llama("llama-33b", 6656, 60, 17920, 52),
    "65b": _llama("llama-65b", 8192, 80, 22016, 64),
}
