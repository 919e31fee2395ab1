"""Write the HF tokenizer directory: tokenizer.json (the fast tokenizer, built here for SentencePiece BPE models),
or, for SentencePiece models a merge list cannot express (merge_order.py), the directory SentencePiece itself reads.

transformers' own conversion of a merged SentencePiece model is not trusted (5.x builds a 3-token vocabulary from
it); the BPE model is built here from the pieces and scores, and `parity.py` proves it against SentencePiece.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, processors

from zhllama.errors import UserError
from zhllama.tokenizer.proto import ModelProto, sp_pb2

Piece = sp_pb2.ModelProto.SentencePiece
SPACE = "▁"
DEFAULT_PAD = "[PAD]"


def sentencepiece_merges(model: ModelProto) -> list[tuple[str, str]]:
    """Every (left, right) split of every mergeable piece, best piece first, as an HF BPE merge list.

    SentencePiece BPE merges any adjacent pair whose concatenation is a piece, highest score first; an HF merge
    rank per split reproduces that when scores are distinct. Splits of one piece are ordered by their ids, like
    transformers' SentencePieceExtractor.
    """
    ids = {p.piece: i for i, p in enumerate(model.pieces) if p.type in (Piece.NORMAL, Piece.USER_DEFINED)}
    ranked: list[tuple[float, int, int, int, str, str]] = []
    for piece, piece_id in ids.items():
        score = model.pieces[piece_id].score
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in ids and right in ids:
                ranked.append((-score, piece_id, ids[left], ids[right], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def sentencepiece_to_fast(model: ModelProto) -> Tokenizer:
    """A `tokenizers` BPE tokenizer that segments like the SentencePiece BPE model (LLaMA's legacy behaviour)."""
    if model.trainer_spec.model_type != sp_pb2.TrainerSpec.BPE:
        raise UserError("only SentencePiece BPE models can be exported to tokenizer.json")
    vocab = {p.piece: i for i, p in enumerate(model.pieces)}
    unk = next((p.piece for p in model.pieces if p.type == Piece.UNKNOWN), None)
    byte_fallback = model.trainer_spec.byte_fallback
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=sentencepiece_merges(model), unk_token=unk,
                                     fuse_unk=True, byte_fallback=byte_fallback))
    tokenizer.normalizer = _normalizer(model.normalizer_spec)
    steps: list[decoders.Decoder] = [decoders.Replace(SPACE, " ")]
    if byte_fallback:
        steps.append(decoders.ByteFallback())
    steps.append(decoders.Fuse())
    if model.normalizer_spec.add_dummy_prefix:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    tokenizer.decoder = decoders.Sequence(steps)
    specials = [p.piece for p in model.pieces if p.type in (Piece.CONTROL, Piece.UNKNOWN)]
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    user_defined = [p.piece for p in model.pieces if p.type == Piece.USER_DEFINED]
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in user_defined])
    bos = model.pieces[model.trainer_spec.bos_id].piece if model.trainer_spec.bos_id >= 0 else None
    if bos is not None:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, vocab[bos])])
    return tokenizer


def _normalizer(spec: Any) -> normalizers.Normalizer:
    steps: list[normalizers.Normalizer] = []
    if spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(spec.precompiled_charsmap))
    if spec.remove_extra_whitespaces:
        steps += [normalizers.Strip(left=True, right=True), normalizers.Replace(Regex(" {2,}"), " ")]
    if spec.add_dummy_prefix:
        steps.append(normalizers.Prepend(SPACE))
    if spec.escape_whitespaces:
        steps.append(normalizers.Replace(" ", SPACE))
    return normalizers.Sequence(steps)


def add_pad_token(tokenizer: Tokenizer, pad: str = DEFAULT_PAD) -> int:
    """Append a pad token after the vocabulary (or reuse one of that name); returns its id."""
    existing = tokenizer.token_to_id(pad)
    if existing is not None:
        return existing
    tokenizer.add_special_tokens([AddedToken(pad, special=True, normalized=False)])
    pad_id = tokenizer.token_to_id(pad)
    assert pad_id is not None
    return pad_id


def write_hf_directory(out_dir: Path, fast: Tokenizer, *, sp_model: ModelProto | None,
                       special_tokens: dict[str, str], extra_config: dict[str, Any]) -> None:
    """tokenizer.json (+ tokenizer.model), tokenizer_config.json and special_tokens_map.json that
    `AutoTokenizer.from_pretrained(out_dir)` loads as the fast tokenizer built here."""
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save(str(out_dir / "tokenizer.json"))
    if sp_model is not None:
        (out_dir / "tokenizer.model").write_bytes(sp_model.SerializeToString())
    # TokenizersBackend loads tokenizer.json verbatim; a model-specific class (LlamaTokenizer) would rebuild the
    # pipeline from its own defaults in transformers 5.
    config: dict[str, Any] = {
        "tokenizer_class": "TokenizersBackend",
        "clean_up_tokenization_spaces": False,
        **special_tokens,
        **extra_config,
    }
    if sp_model is not None:
        config.update(add_bos_token=True, add_eos_token=False, legacy=True)
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2) + "\n",
                                                   encoding="utf-8")
    (out_dir / "special_tokens_map.json").write_text(
        json.dumps(special_tokens, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def write_sentencepiece_directory(out_dir: Path, sp_model: ModelProto, *, special_tokens: dict[str, str],
                                  added_tokens: list[tuple[str, bool]], pad: str | None,
                                  extra_config: dict[str, Any]) -> int | None:
    """tokenizer.model and the config that makes `AutoTokenizer.from_pretrained(out_dir)` tokenize with SentencePiece
    itself (no tokenizer.json: nothing may read a merge list that tokenizes differently). `added_tokens`
    ((content, special) pairs) follow the pieces in order, then `pad` unless they hold it; returns the pad's id."""
    from zhllama.models.sentencepiece_tokenizer import SentencePieceTokenizer

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tokenizer.json").unlink(missing_ok=True)
    model_file = out_dir / "tokenizer.model"
    model_file.write_bytes(sp_model.SerializeToString())
    tokenizer = SentencePieceTokenizer(vocab_file=str(model_file), legacy=True, special_tokens_pattern="bos",
                                       clean_up_tokenization_spaces=False, **special_tokens, **extra_config)
    for content, special in added_tokens:
        tokenizer.add_tokens([AddedToken(content, special=special, normalized=False)], special_tokens=special)
    if pad is not None:
        tokenizer.add_special_tokens({"pad_token": pad})
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer.pad_token_id
