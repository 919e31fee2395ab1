"""The tokenizer as GGUF metadata, so that llama.cpp tokenizes exactly like the HF tokenizer.

Two kinds: a SentencePiece model (LLaMA-1/2 and Chinese-LLaMA's merged tokenizer.model) becomes
tokenizer.ggml.model=llama with pieces, scores and piece types; a byte-level BPE tokenizer.json (LLaMA-3,
SmolLM2) becomes tokenizer.ggml.model=gpt2 with tokens and merges, plus the pre-tokenizer name llama.cpp uses
to split text the same way. Token i in the file is token i of the HF tokenizer, extended pieces included.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf

from zhllama.errors import UserError

# HF added tokens get no SentencePiece score; llama.cpp's own converter gives them this one
ADDED_TOKEN_SCORE = -1000.0


@dataclass
class GGUFVocab:
    model: str
    """tokenizer.ggml.model: 'llama' (SentencePiece) or 'gpt2' (byte-level BPE)."""
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] | None = None
    pre: str | None = None
    special_ids: dict[str, int] = field(default_factory=dict)
    add_bos: bool = False
    add_eos: bool = False
    add_space_prefix: bool | None = None
    chat_template: str | None = None

    def pad_to(self, rows: int) -> None:
        """llama.cpp refuses a file whose embedding has more rows than tokens: fill with unused [PADi] tokens."""
        if len(self.tokens) > rows:
            raise UserError(
                f"tokenizer has {len(self.tokens)} tokens but the model embeds only {rows}; "
                "merge the model with the tokenizer it was trained with"
            )
        for index in range(len(self.tokens), rows):
            self.tokens.append(f"[PAD{index}]")
            self.types.append(gguf.TokenType.UNUSED)
            if self.scores is not None:
                self.scores.append(ADDED_TOKEN_SCORE)

    def write(self, writer: gguf.GGUFWriter) -> None:
        writer.add_tokenizer_model(self.model)
        if self.pre is not None:
            writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.types)
        if self.scores is not None:
            writer.add_token_scores(self.scores)
        if self.merges is not None:
            writer.add_token_merges(self.merges)
        special_writers = {
            "bos": writer.add_bos_token_id,
            "eos": writer.add_eos_token_id,
            "unk": writer.add_unk_token_id,
            "pad": writer.add_pad_token_id,
        }
        for kind, token_id in self.special_ids.items():
            special_writers[kind](token_id)
        writer.add_add_bos_token(self.add_bos)
        writer.add_add_eos_token(self.add_eos)
        if self.add_space_prefix is not None:
            writer.add_add_space_prefix(self.add_space_prefix)
        if self.chat_template:
            writer.add_chat_template(self.chat_template)


def read_vocab(model_dir: Path) -> GGUFVocab:
    """The GGUF vocabulary of the tokenizer saved in `model_dir` (the merged model carries the tokenizer's files)."""
    from zhllama.models.loading import load_tokenizer

    hf = load_tokenizer(model_dir, field="model")
    if (model_dir / "tokenizer.model").is_file():
        vocab = _sentencepiece_vocab(model_dir / "tokenizer.model", hf)
    elif (model_dir / "tokenizer.json").is_file():
        vocab = _bpe_vocab(model_dir / "tokenizer.json", hf)
    else:
        raise UserError(f"{model_dir}: no tokenizer.model or tokenizer.json to export into the GGUF file")

    for kind in ("bos", "eos", "unk", "pad"):
        token_id = getattr(hf, f"{kind}_token_id")
        if token_id is not None:
            vocab.special_ids[kind] = token_id
    probe = hf("a").input_ids
    vocab.add_bos = hf.bos_token_id is not None and probe[:1] == [hf.bos_token_id]
    vocab.add_eos = hf.eos_token_id is not None and probe[-1:] == [hf.eos_token_id]
    template = getattr(hf, "chat_template", None)
    vocab.chat_template = template if isinstance(template, str) else None
    return vocab


def _sentencepiece_vocab(model_file: Path, hf: Any) -> GGUFVocab:
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()  # type: ignore[attr-defined]
    proto.ParseFromString(model_file.read_bytes())
    if proto.trainer_spec.model_type not in (1, 2):  # UNIGRAM, BPE: the two llama.cpp's SPM tokenizer runs
        raise UserError(f"{model_file}: SentencePiece model type {proto.trainer_spec.model_type} is not unigram or BPE")
    tokens = [piece.piece for piece in proto.pieces]
    scores = [piece.score for piece in proto.pieces]
    # SentencePiece's piece types use the same numbers as GGUF's token types (NORMAL=1 ... BYTE=6)
    types = [int(piece.type) for piece in proto.pieces]
    for token_id, added in sorted(hf.added_tokens_decoder.items()):
        if token_id < len(tokens):
            continue
        if token_id != len(tokens):
            raise UserError(f"{model_file}: added token id {token_id} leaves a gap after {len(tokens)} pieces")
        tokens.append(added.content)
        scores.append(ADDED_TOKEN_SCORE)
        types.append(gguf.TokenType.CONTROL if added.special else gguf.TokenType.USER_DEFINED)
    return GGUFVocab(
        model="llama",
        tokens=tokens,
        types=types,
        scores=scores,
        add_space_prefix=proto.normalizer_spec.add_dummy_prefix,
    )


def _bpe_vocab(tokenizer_json: Path, hf: Any) -> GGUFVocab:
    spec = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    model = spec.get("model", {})
    if model.get("type") != "BPE":
        raise UserError(f"{tokenizer_json}: model type {model.get('type')!r}; only byte-level BPE can be exported")
    added = {entry["id"]: entry for entry in spec.get("added_tokens", [])}
    by_id = {token_id: token for token, token_id in model["vocab"].items()}
    by_id.update({token_id: entry["content"] for token_id, entry in added.items()})
    if sorted(by_id) != list(range(len(by_id))):
        raise UserError(f"{tokenizer_json}: token ids are not contiguous from 0; llama.cpp needs one token per id")
    tokens: list[str] = []
    types: list[int] = []
    for token_id in range(len(by_id)):
        tokens.append(by_id[token_id])
        if token_id not in added:
            types.append(gguf.TokenType.NORMAL)
        else:
            types.append(gguf.TokenType.CONTROL if added[token_id]["special"] else gguf.TokenType.USER_DEFINED)
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in model.get("merges", [])]
    return GGUFVocab(model="gpt2", tokens=tokens, types=types, merges=merges, pre=_pre_tokenizer(spec, tokenizer_json))


def _pre_tokenizer(spec: dict[str, Any], tokenizer_json: Path) -> str:
    """llama.cpp's name for the way this tokenizer splits text before BPE."""
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
        return "smollm"
    split = next((step for step in steps if step.get("type") == "Split"), None)
    if split and "(?i:'s|'t|'re|'ve|'m|'ll|'d)" in json.dumps(split.get("pattern", {})):
        return "llama-bpe"
    raise UserError(
        f"{tokenizer_json}: pre-tokenizer {kinds} has no llama.cpp equivalent known to zhllama "
        "(supported: GPT-2 byte-level, SmolLM digits + byte-level, LLaMA-3)"
    )
