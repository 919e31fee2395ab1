"""The model files a stage reads: which files of an input are the weights and the tokenizer, a GGUF base imported
once into the store for every stage, and loading a causal LM with its adapters.

  paths    locate_model, locate_tokenizer, tokenizer_of, copy_tokenizer_files, ModelFiles (no torch)
  once     built_once, wait_for: node 0 builds and publishes, the other nodes poll the store
  gguf     import_gguf, hf_model_dir: the cached GGUF -> HF import (every stage that loads weights)
  loading  load_tokenizer, tokenizer_directory, load_causal_lm, load_spec_model, context_length, model_device
  adapter_vocab  adapter_vocab, real_rows: which rows of an adapter's embed_tokens/lm_head are tokens (padding)
  provenance  provenance.json: a model's quantized origin, carried from the GGUF import through the merge
  sentencepiece_tokenizer  SentencePieceTokenizer: SentencePiece's own ids where tokenizer.json cannot match them

Only `paths` and `once` are imported here: the tokenizer stage resolves its base with `paths` and must not pay
for torch and transformers; import `zhllama.models.gguf` and `zhllama.models.loading` by name.
May import: zhllama.errors, zhllama.store, zhllama.run (types only), zhllama.spec (types only). Not train or merge.
"""

from zhllama.models.once import built_once, wait_for
from zhllama.models.paths import (
    TOKENIZER_FILES,
    ModelFiles,
    copy_tokenizer_files,
    has_tokenizer,
    locate_model,
    locate_tokenizer,
    preferred_tokenizer_file,
    tokenizer_of,
)

__all__ = [
    "TOKENIZER_FILES",
    "ModelFiles",
    "built_once",
    "copy_tokenizer_files",
    "has_tokenizer",
    "locate_model",
    "locate_tokenizer",
    "preferred_tokenizer_file",
    "tokenizer_of",
    "wait_for",
]
