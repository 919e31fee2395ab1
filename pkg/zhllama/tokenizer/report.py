"""report.json and report.md: what the new vocabulary is and what it buys on held-out Chinese text."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sentencepiece as spm
from tokenizers import Tokenizer

from zhllama.tokenizer.bpe_extend import token_bytes
from zhllama.tokenizer.tokens import encode_lines

SAMPLE_LINES = 3
SAMPLE_CHARS = 60


def sample_segmentations(base: Any, extended: Any, lines: Sequence[str]) -> list[dict[str, Any]]:
    """The first held-out lines (cut short) as base and extended tokens, each token decoded on its own."""
    samples = []
    for text in [line[:SAMPLE_CHARS] for line in lines[:SAMPLE_LINES]]:
        samples.append({"text": text,
                        "base": _pieces(base, text),
                        "extended": _pieces(extended, text)})
    return samples


def _pieces(tokenizer: Any, text: str) -> list[str]:
    ids = encode_lines(tokenizer, [text])[0]
    if isinstance(tokenizer, spm.SentencePieceProcessor):  # its pieces show byte fallback as <0xE4>
        return [tokenizer.id_to_piece(i) for i in ids]
    if isinstance(tokenizer, Tokenizer):
        return [_readable(tokenizer.id_to_token(i) or "") for i in ids]
    return [_readable(token) for token in tokenizer.convert_ids_to_tokens(ids)]


def _readable(token: str) -> str:
    """A byte-level token as text, its partial characters as \\x escapes; other tokens as they are."""
    try:
        return token_bytes(token).decode("utf-8", errors="backslashreplace")
    except KeyError:
        return token


def write_report(out_dir: Path, report: dict[str, Any]) -> None:
    (out_dir / "report.json").write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    (out_dir / "report.md").write_text(render_markdown(report), encoding="utf-8")


def render_markdown(report: dict[str, Any]) -> str:
    tpc = report["tokens_per_char"]
    chinese = report["chinese_model"]
    pad = report["pad_token"]
    lines = [
        "# Chinese tokenizer",
        "",
        f"Base: `{report['base']['path']}` ({report['base']['kind']}, {report['base']['vocab_size']} tokens).  ",
        (f"Chinese model: {chinese['source']} ({chinese['pieces']} pieces"
         + (f", new pieces scored {report['new_piece_scores']}" if report.get("new_piece_scores") else "") + ").  "
         if chinese else "Ready tokenizer: taken as it is, no pieces added.  "),
        f"Added: {report['pieces_added']} pieces -> merged vocabulary {report['merged_vocab_size']}"
        + (f", pad `{pad['token']}` id {pad['id']}" if pad else "")
        + f"; final vocabulary {report['vocab_size']}.",
        "",
        "## How it is applied",
        "",
        *_application_lines(report["application"]),
        "",
        f"## Tokens per character on {report['heldout']['lines']} held-out lines "
        f"({report['heldout']['characters']} characters)",
        "",
        "| tokenizer | tokens/char |",
        "| --- | --- |",
        f"| base | {tpc['base']:.3f} |",
        f"| {'extended' if chinese else 'this tokenizer'} | {tpc['extended']:.3f} |",
        "",
        f"{tpc['base'] / tpc['extended']:.2f}x fewer tokens for Chinese text.",
        "",
        "## Checks",
        "",
    ]
    for check in report["checks"]:
        verdict = "pass" if check["ok"] else "FAIL"
        lines.append(f"- {check['name']}: {check['matched']}/{check['checked']} ({verdict})")
    lines += ["", "## Sample segmentations", ""]
    for sample in report["samples"]:
        lines += [f"- {sample['text']}",
                  f"  - base ({len(sample['base'])}): {' | '.join(sample['base'])}",
                  f"  - extended ({len(sample['extended'])}): {' | '.join(sample['extended'])}"]
    return "\n".join(lines) + "\n"


def _application_lines(application: dict[str, Any]) -> list[str]:
    if application["backend"] == "sentencepiece":
        how = ("**SentencePiece itself**: tokenizer.model with `tokenizer_class: SentencePieceBackend` (no "
               "tokenizer.json); `AutoTokenizer.from_pretrained` and every zhllama stage encode with SentencePiece.")
    else:
        how = "**tokenizer.json** (the fast tokenizer), giving SentencePiece's ids where there is a tokenizer.model."
    lines = [f"- {how}", f"- Why: {application['reason']}."]
    parity = application.get("tokenizer_json_parity")
    if parity:
        lines.append(f"- A tokenizer.json merge list matches SentencePiece on {parity['matched']}/"
                     f"{parity['checked']} probe and held-out lines.")
    return lines
