"""SentencePiece tokenizers that a tokenizer.json cannot express, loaded so that every stage gets SentencePiece's ids.

Chinese-LLaMA's tokenizer.model gives its new pieces score 0; SentencePiece breaks those ties by position, which a
merge list cannot (zhllama.tokenizer.merge_order). transformers 5 still ships a SentencePiece backend:
`SentencePieceBackend`, which encodes with SentencePiece itself. A directory whose tokenizer_config.json names it
(with `special_tokens_pattern: "bos"`, `legacy: true`) gives SentencePiece's ids through a plain
`AutoTokenizer.from_pretrained(dir)`.

zhllama loads such directories as `SentencePieceTokenizer`, the same encoder plus SentencePiece's own decoding
(the backend joins pieces as text: byte-fallback pieces would come out as "<0xE4>" and spaces at the start of a
run would be lost). It saves as `SentencePieceBackend`, so what it writes stays loadable without zhllama.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers.tokenization_utils_sentencepiece import SentencePieceBackend

BACKEND_CLASS = "SentencePieceBackend"


class SentencePieceTokenizer(SentencePieceBackend):
    """transformers' SentencePieceBackend, decoding through SentencePiece."""

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        # Runs of model pieces go through SentencePiece (bytes, spaces, the dummy prefix); added tokens as their text.
        parts: list[str] = []
        run: list[str] = []
        for token in tokens:
            if token in self._added_tokens_encoder:
                parts += [self.sp_model.decode_pieces(run), token] if run else [token]
                run = []
            else:
                run.append(token)
        if run:
            parts.append(self.sp_model.decode_pieces(run))
        return "".join(parts)

    def save_pretrained(self, save_directory: Any, *args: Any, **kwargs: Any) -> Any:
        saved = super().save_pretrained(save_directory, *args, **kwargs)
        config_file = Path(save_directory) / "tokenizer_config.json"
        config = json.loads(config_file.read_text(encoding="utf-8"))
        # transformers keeps neither of these in what it saves; without them a reload would add no BOS.
        pattern = self.special_tokens_pattern or "none"
        config.update(tokenizer_class=BACKEND_CLASS, special_tokens_pattern=pattern,
                      add_bos_token="bos" in pattern, add_eos_token="eos" in pattern)
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
                               encoding="utf-8")
        return saved


def is_sentencepiece_directory(directory: Path) -> bool:
    """Whether `directory` tokenizes with SentencePiece itself: its config names the SentencePiece backend, or it
    has a tokenizer.model and no tokenizer.json (a slow-only directory, as Chinese-LLaMA released theirs, which
    transformers 5 would otherwise convert into a merge list that tokenizes differently)."""
    if not (directory / "tokenizer.model").is_file():
        return False
    return _config(directory).get("tokenizer_class") == BACKEND_CLASS or not (directory / "tokenizer.json").is_file()


def load_sentencepiece_tokenizer(directory: Path) -> SentencePieceTokenizer:
    """The directory's tokenizer with SentencePiece's ids: `legacy` (no rewriting of text after special tokens),
    BOS/EOS added as its config says (LLaMA's defaults: BOS only)."""
    config = _config(directory)
    bos, eos = config.get("add_bos_token", True), config.get("add_eos_token", False)
    pattern = {(True, False): "bos", (False, True): "eos", (True, True): "bos_eos"}.get((bos, eos), "none")
    tokenizer = SentencePieceTokenizer.from_pretrained(str(directory), legacy=True, special_tokens_pattern=pattern,
                                                       local_files_only=True)
    return tokenizer


def sentencepiece_rules(tokenizer: SentencePieceTokenizer) -> str:
    """Everything the ids depend on, as text (for fingerprints): the model proto and the added tokens."""
    added = sorted((index, token.content) for index, token in tokenizer.added_tokens_decoder.items())
    return json.dumps([tokenizer.sp_model.serialized_model_proto().hex(), added, tokenizer.special_tokens_pattern])


def _config(directory: Path) -> dict[str, Any]:
    file = directory / "tokenizer_config.json"
    loaded: dict[str, Any] = json.loads(file.read_text(encoding="utf-8")) if file.is_file() else {}
    return loaded
