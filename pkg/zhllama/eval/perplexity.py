"""Per-character perplexity with a sliding window.

Perplexity per token depends on the tokenizer: the extended Chinese vocabulary halves the tokens per character,
so per-token numbers of the base and the extended model cannot be compared. The total negative log-likelihood of
a text does not depend on how it is cut, so exp(total NLL / characters) compares models with any tokenizers.
English held-out text (what pretraining on Chinese may make the model forget) is also read per token: the
extension adds Chinese pieces, so both vocabularies cut English text (nearly) the same, and the report shows the
token counts beside it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from transformers import PreTrainedTokenizerBase

from zhllama.errors import UserError
from zhllama.models.loading import encode, model_device
from zhllama.records import TEXT_SUFFIXES, list_files, read_texts

Progress = Callable[[Iterable[str]], Iterable[str]]

LANGUAGES = {"zh": "Chinese", "en": "English", "other": "other"}
"""The held-out text labels text_language gives, with their names in reports."""


@dataclass(frozen=True)
class PerplexityResult:
    documents: int
    characters: int
    tokens: int
    nll: float
    """Summed negative log-likelihood (nats) of every scored token."""

    @property
    def per_char(self) -> float:
        return math.exp(self.nll / self.characters)

    @property
    def per_token(self) -> float:
        return math.exp(self.nll / self.tokens)

    @property
    def tokens_per_char(self) -> float:
        return self.tokens / self.characters

    def as_dict(self) -> dict[str, float | int]:
        return {
            **asdict(self),
            "ppl_per_char": self.per_char,
            "ppl_per_token": self.per_token,
            "tokens_per_char": self.tokens_per_char,
        }


def read_documents(path: Path, max_chars: int | None = None) -> list[str]:
    """Documents from a .txt file (one per non-empty line), a .jsonl file (`text`), or a directory of them.

    With `max_chars`, documents are taken in order until their characters reach it (the last one is cut).
    """
    documents: list[str] = []
    budget = max_chars if max_chars is not None else math.inf
    for file in list_files([path], TEXT_SUFFIXES, "held-out text"):
        for _, text in read_texts(file):
            if budget <= 0:
                return documents
            text = text[: int(min(len(text), budget))]
            documents.append(text)
            budget -= len(text)
    if not documents:
        raise UserError(f"{path}: the held-out text is empty")
    return documents


def text_language(documents: list[str]) -> str:
    """"zh" when at least half the letters are Chinese characters, "en" when nine in ten are ASCII letters, else
    "other": a label by script for the reports (per-character perplexity for Chinese, per-token for English), not
    a language detector."""
    han = ascii_letters = letters = 0
    for text in documents:
        for char in text:
            if "\u4e00" <= char <= "\u9fff" or "\u3400" <= char <= "\u4dbf" or "\uf900" <= char <= "\ufaff":
                han += 1
                letters += 1
            elif char.isalpha():
                letters += 1
                ascii_letters += char.isascii()
    if letters and han >= letters / 2:
        return "zh"
    if letters and ascii_letters >= 0.9 * letters:
        return "en"
    return "other"


def document_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of a document, starting with a start token so that its first real token is scored too.

    Tokenizers that add no BOS (byte-level BPE like SmolLM2's) get their BOS or EOS token prepended: otherwise
    the first token of every document would go unscored and the per-character number would favour them.
    """
    ids = encode(tokenizer, text)
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if start is not None and (not ids or ids[0] != start):
        ids = [start, *ids]
    return ids


class ScoringWindow(NamedTuple):
    """Tokens [begin, end) go through the model together; of the predictions of tokens begin + 1 .. end - 1, those
    from index `first_new` on are counted (the earlier ones a previous window counted already)."""

    begin: int
    end: int
    first_new: int


def scoring_windows(length: int, window: int, stride: int) -> list[ScoringWindow]:
    """The windows that score each token of a `length`-token sequence exactly once, every engine's (transformers
    here, llama.cpp in zhllama.quantize.llamacpp) so that their perplexities compare.

    The first window scores all its tokens; each later window starts `stride` tokens further and scores only
    the tokens no earlier window scored, each seeing up to `window - 1` tokens of context.
    """
    if not 0 < stride < window:
        raise UserError(f"stride {stride} must be between 1 and window {window} - 1 so that windows overlap")
    windows: list[ScoringWindow] = []
    scored_until, begin = 1, 0
    while length >= 2:
        end = min(begin + window, length)
        windows.append(ScoringWindow(begin, end, scored_until - begin - 1))
        if end >= length:
            break
        scored_until, begin = end, begin + stride
    return windows


@torch.no_grad()
def document_nll(model: torch.nn.Module, ids: list[int], window: int, stride: int) -> tuple[float, int]:
    """(summed NLL, scored tokens) of one token sequence, window by window (scoring_windows)."""
    device = model_device(model)
    total, scored = 0.0, 0
    for begin, end, first_new in scoring_windows(len(ids), window, stride):
        inputs = torch.tensor([ids[begin:end]], device=device)
        logprobs = torch.log_softmax(model(inputs).logits[0, :-1].float(), dim=-1)
        new = -logprobs.gather(1, inputs[0, 1:, None])[first_new:, 0]
        total += new.sum().item()
        scored += new.numel()
    return total, scored


def per_char_perplexity(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    documents: list[str],
    window: int,
    stride: int,
    progress: Progress = lambda items: items,
) -> PerplexityResult:
    """Perplexity of `documents` per character: exp(summed token NLL / characters)."""
    nll, tokens, characters = 0.0, 0, 0
    for text in progress(documents):
        document_nll_sum, scored = document_nll(model, document_ids(tokenizer, text), window, stride)
        nll += document_nll_sum
        tokens += scored
        characters += len(text)
    if characters == 0 or tokens == 0:
        raise UserError("the held-out text has no characters to score")
    return PerplexityResult(documents=len(documents), characters=characters, tokens=tokens, nll=nll)
