"""Recognise and load the base tokenizer: a SentencePiece model or a byte-level BPE (tokenizer.json or GGUF)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

from zhllama.errors import UserError
from zhllama.models.paths import preferred_tokenizer_file
from zhllama.tokenizer.proto import ModelProto, load_sentencepiece, sp_pb2

BaseKind = Literal["sentencepiece", "bytelevel_bpe"]
GGUF_MAGIC = b"GGUF"

# llama.cpp's `tokenizer.ggml.pre` names mapped to the HF pre-tokenizers those models ship in tokenizer.json.
GGUF_PRE_TOKENIZERS: dict[str, list[pre_tokenizers.PreTokenizer]] = {
    "smollm": [
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ],
    "gpt-2": [pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)],
    "default": [pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)],
}
GGUF_CONTROL_TOKEN_TYPE = 3


@dataclass(frozen=True)
class BaseTokenizer:
    """The base vocabulary to extend: exactly one of `sp_model` (SentencePiece) or `fast` (byte-level BPE) is set."""

    kind: BaseKind
    source: Path
    sp_model: ModelProto | None = None
    fast: Tokenizer | None = None
    """For byte-level BPE bases: the tokenizer as `tokenizers` runs it."""
    config: dict[str, Any] | None = None
    """tokenizer_config.json of an HF directory base (chat template, special tokens), if there is one."""
    added_tokens: tuple[tuple[str, bool], ...] = ()
    """SentencePiece bases from an HF directory: the tokens it adds after the pieces, (content, special) in id
    order (Chinese-Alpaca's [PAD], for one)."""

    @property
    def vocab_size(self) -> int:
        if self.sp_model is not None:
            return len(self.sp_model.pieces)
        assert self.fast is not None
        return self.fast.get_vocab_size(with_added_tokens=True)


def _resolve_file(path: Path) -> Path:
    """An HF model directory names its tokenizer by convention; prefer SentencePiece, as HF's slow tokenizer did."""
    if not path.exists():
        raise UserError(f"base tokenizer {path}: no such file or directory; give a tokenizer.model, tokenizer.json, "
                        "HF model directory or GGUF file")
    if not path.is_dir():
        return path
    found = preferred_tokenizer_file(path, field="base_tokenizer")
    if found is not None:
        return found
    raise UserError(f"base tokenizer {path}: directory has no tokenizer.model, tokenizer.json or *.gguf; "
                    "point base_tokenizer at the tokenizer file itself")


def load_base_tokenizer_kind(path: Path) -> BaseKind:
    """Which kind of base tokenizer `path` holds (file, HF directory or GGUF), without building it."""
    return load_base_tokenizer(path).kind


def load_base_tokenizer(path: Path) -> BaseTokenizer:
    file = _resolve_file(Path(path))
    config = _read_config(file.parent) if Path(path).is_dir() else None
    with file.open("rb") as handle:
        head = handle.read(4)
    if head == GGUF_MAGIC:
        fast, gguf_config = _tokenizer_from_gguf(file)
        return BaseTokenizer("bytelevel_bpe", file, fast=fast, config=gguf_config)
    if file.suffix == ".json" or head.lstrip()[:1] == b"{":
        return _load_tokenizer_json(file, config)
    sp_model = _load_sentencepiece(file)
    if not Path(path).is_dir():
        return BaseTokenizer("sentencepiece", file, sp_model=sp_model)
    config, added = _sentencepiece_directory(file.parent, config or {}, len(sp_model.pieces))
    return BaseTokenizer("sentencepiece", file, sp_model=sp_model, config=config, added_tokens=added)


def _read_config(directory: Path) -> dict[str, Any] | None:
    config_file = directory / "tokenizer_config.json"
    if not config_file.is_file():
        return None
    loaded: dict[str, Any] = json.loads(config_file.read_text(encoding="utf-8"))
    return loaded


def _sentencepiece_directory(directory: Path, config: dict[str, Any],
                             pieces: int) -> tuple[dict[str, Any], tuple[tuple[str, bool], ...]]:
    """The special tokens and added tokens of an HF directory around a tokenizer.model, as transformers reads them
    (tokenizer_config.json, special_tokens_map.json, added_tokens.json in any of their historical layouts)."""
    from zhllama.models.sentencepiece_tokenizer import load_sentencepiece_tokenizer

    hf = load_sentencepiece_tokenizer(directory)
    specials = {f"{role}_token": str(getattr(hf, f"{role}_token")) for role in ("bos", "eos", "unk", "pad")
                if getattr(hf, f"{role}_token") is not None}
    added = sorted((index, token) for index, token in hf.added_tokens_decoder.items() if index >= pieces)
    if [index for index, _ in added] != list(range(pieces, pieces + len(added))):
        raise UserError(f"base tokenizer {directory}: added token ids {[index for index, _ in added]} do not follow "
                        f"the {pieces} pieces without a gap; fix added_tokens.json or give the tokenizer.model alone")
    return {**config, **specials}, tuple((token.content, bool(token.special)) for _, token in added)


def _load_sentencepiece(file: Path) -> ModelProto:
    """Files that are neither GGUF nor JSON end up here, so the fix names every kind of base."""
    proto = load_sentencepiece(file, "base tokenizer", "give a LLaMA-style tokenizer.model, a byte-level BPE "
                                                       "tokenizer.json or a GGUF file")
    if proto.trainer_spec.model_type != sp_pb2.TrainerSpec.BPE:
        kind = sp_pb2.TrainerSpec.ModelType.Name(proto.trainer_spec.model_type)
        raise UserError(f"base tokenizer {file}: SentencePiece {kind} model; only BPE bases (LLaMA-1/2 kind) "
                        "can be extended with appended pieces")
    return proto


def _load_tokenizer_json(file: Path, config: dict[str, Any] | None) -> BaseTokenizer:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        fast = Tokenizer.from_str(json.dumps(data))
    except Exception as error:  # tokenizers raises plain Exception for a malformed file
        raise UserError(f"base tokenizer {file}: not a loadable HF tokenizer.json ({error}); "
                        "give a tokenizer.json saved by `tokenizers`") from error
    model = data.get("model", {})
    if model.get("type") != "BPE" or not _uses_byte_level(data):
        raise UserError(f"base tokenizer {file}: a {model.get('type')} tokenizer.json without byte-level "
                        "pre-tokenization; supported are byte-level BPE (LLaMA-3/SmolLM kind) and SentencePiece "
                        "tokenizer.model (LLaMA-1/2 kind)")
    return BaseTokenizer("bytelevel_bpe", file, fast=fast, config=config)


def _uses_byte_level(data: dict[str, Any]) -> bool:
    def byte_level(component: dict[str, Any] | None) -> bool:
        if not component:
            return False
        if component.get("type") == "ByteLevel":
            return True
        return any(byte_level(child) for child in component.get("pretokenizers", []))

    return byte_level(data.get("pre_tokenizer"))


def _tokenizer_from_gguf(file: Path) -> tuple[Tokenizer, dict[str, Any]]:
    """The tokenizer a GGUF file embeds, and the special tokens and chat template for tokenizer_config.json."""
    from gguf import GGUFReader

    fields = GGUFReader(str(file)).fields

    def value(key: str) -> Any:
        field = fields.get(key)
        return None if field is None else field.contents()

    model_name, pre = value("tokenizer.ggml.model"), value("tokenizer.ggml.pre") or "default"
    if model_name != "gpt2" or pre not in GGUF_PRE_TOKENIZERS:
        raise UserError(f"base tokenizer {file}: GGUF tokenizer model={model_name!r} pre={pre!r} is not supported; "
                        f"supported: model 'gpt2' with pre in {sorted(GGUF_PRE_TOKENIZERS)}, or give its "
                        "tokenizer.json / tokenizer.model instead")
    tokens: list[str] = value("tokenizer.ggml.tokens")
    token_types: list[int] = value("tokenizer.ggml.token_type")
    merges = [tuple(merge.split(" ", 1)) for merge in value("tokenizer.ggml.merges")]
    tokenizer = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                                     ignore_merges=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(GGUF_PRE_TOKENIZERS[pre])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                  for t, kind in zip(tokens, token_types, strict=True)
                                  if kind == GGUF_CONTROL_TOKEN_TYPE])
    config: dict[str, Any] = {}
    for role in ("bos", "eos", "unknown", "padding"):
        token_id = value(f"tokenizer.ggml.{role}_token_id")
        if token_id is not None:
            config[f"{role.replace('unknown', 'unk').replace('padding', 'pad')}_token"] = tokens[token_id]
    if value("tokenizer.chat_template"):
        config["chat_template"] = value("tokenizer.chat_template")
    return tokenizer, config
