"""Optional llama.cpp work through llama-cpp-python: K-quants, and loading each file as users will.

Every call runs in a child process (`python .../llamacpp.py request.json`): a llama.cpp build
that crashes on some file (a native build with the wrong CPU flags segfaults on quantized models) becomes a
failed check in the report instead of killing the stage.
"""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

K_QUANTS = {
    "Q2_K": 10,
    "Q3_K_S": 11,
    "Q3_K_M": 12,
    "Q3_K_L": 13,
    "Q4_K_S": 14,
    "Q4_K_M": 15,
    "Q5_K_S": 16,
    "Q5_K_M": 17,
    "Q6_K": 18,
}
"""llama.cpp file types (LLAMA_FTYPE_MOSTLY_*) only its own quantizer produces."""
LLAMA_FTYPES = {"F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, **K_QUANTS}
"""Every type llama.cpp's quantizer writes that zhllama asks it for: the K-quants, and the others to compare with."""


def unavailable_reason() -> str | None:
    """Why llama.cpp cannot be used here, or None when llama-cpp-python is installed."""
    if importlib.util.find_spec("llama_cpp") is None:
        return "llama-cpp-python is not installed (pip install llama-cpp-python)"
    return None


class LlamaCppFailed(RuntimeError):
    """llama.cpp refused a file or crashed on it; the message is the child's last output."""


def _run(request: dict[str, Any], timeout: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="llamacpp-") as scratch:
        request_file = Path(scratch) / "request.json"
        result_file = Path(scratch) / "result.json"
        request_file.write_text(json.dumps({**request, "result": str(result_file)}))
        done = subprocess.run(
            # run as a script, not `-m`: the package's __init__ would import torch and transformers in the child
            [sys.executable, __file__, str(request_file)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0 or not result_file.is_file():
            cause = (
                f"signal {signal.Signals(-done.returncode).name}" if done.returncode < 0 else f"exit {done.returncode}"
            )
            tail = " | ".join(done.stderr.strip().splitlines()[-3:])
            raise LlamaCppFailed(f"llama.cpp {request['op']} failed ({cause}): {tail}")
        result: dict[str, Any] = json.loads(result_file.read_text())
        if "logits_file" in result:
            result["logits"] = np.load(result.pop("logits_file"))
        return result


def llama_quantize(source: Path, out_path: Path, qtype: str, timeout: float = 3600) -> Path:
    """Write `qtype` from an F16/F32 GGUF file with llama.cpp's quantizer (its default parameters, no imatrix)."""
    _run({"op": "quantize", "source": str(source), "out": str(out_path), "ftype": LLAMA_FTYPES[qtype]}, timeout)
    return out_path


def check_file(
    gguf_file: Path,
    texts: list[str],
    documents: list[list[int]],
    logits_ids: list[int],
    window: int,
    stride: int,
    generate_tokens: int = 64,
    timeout: float = 3600,
) -> dict[str, Any]:
    """Load `gguf_file` in llama.cpp; tokenize `texts`, score `documents` (token ids) and time generation.

    Returns `token_ids` (one list per text), `nll`/`scored` over the documents with the same windows as the
    transformers perplexity, `logits` (numpy) for `logits_ids`, and `tokens_per_second` of greedy generation.
    """
    # Only here, in the parent: the child must not import zhllama.eval (torch and transformers).
    from zhllama.eval.perplexity import scoring_windows

    request = {
        "op": "check",
        "model": str(gguf_file),
        "texts": texts,
        "documents": documents,
        "windows": [scoring_windows(len(ids), window, stride) for ids in documents],
        "logits_ids": logits_ids,
        "window": window,
        "generate_tokens": generate_tokens,
    }
    return _run(request, timeout)


# ---- the child process -------------------------------------------------------------------------------------


def _child_quantize(request: dict[str, Any]) -> dict[str, Any]:
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = request["ftype"]
    status = llama_cpp.llama_model_quantize(request["source"].encode(), request["out"].encode(), ctypes.byref(params))
    if status != 0:
        raise SystemExit(f"llama_model_quantize returned {status}")
    return {"ok": True}


def _child_check(request: dict[str, Any]) -> dict[str, Any]:
    import llama_cpp

    scorer = llama_cpp.Llama(
        request["model"], n_ctx=max(request["window"], len(request["logits_ids"])), n_batch=512, logits_all=True,
        verbose=False,
    )
    token_ids = [scorer.tokenize(text.encode(), add_bos=False, special=False) for text in request["texts"]]
    nll, scored = 0.0, 0
    for ids, windows in zip(request["documents"], request["windows"], strict=True):
        document_nll, document_scored = _document_nll(scorer, ids, windows)
        nll += document_nll
        scored += document_scored
    scorer.reset()
    scorer.eval(request["logits_ids"])
    logits = np.asarray(scorer.scores[: len(request["logits_ids"])], dtype=np.float32)
    logits_file = Path(request["result"]).with_suffix(".npy")
    np.save(logits_file, logits)
    del scorer

    generator = llama_cpp.Llama(request["model"], n_ctx=64 + request["generate_tokens"], verbose=False)
    prompt = generator.tokenize("人工智能的发展".encode(), add_bos=True, special=False)
    started = time.perf_counter()
    generated = 0
    # greedy, and not stopped at EOS: a fixed amount of work to time
    for _ in generator.generate(prompt, top_k=1, temp=0.0):
        generated += 1
        if generated == request["generate_tokens"]:
            break
    seconds = time.perf_counter() - started
    return {
        "token_ids": token_ids,
        "nll": nll,
        "scored": scored,
        "logits_file": str(logits_file),
        "generated_tokens": generated,
        "tokens_per_second": generated / seconds,
    }


def _document_nll(llm: Any, ids: list[int], windows: list[list[int]]) -> tuple[float, int]:
    """(summed NLL, scored tokens) of `ids` over the (begin, end, first_new) windows the parent computed with
    zhllama.eval.perplexity.scoring_windows, as transformers scores them there."""
    total, scored = 0.0, 0
    for begin, end, first_new in windows:
        llm.reset()
        llm.eval(ids[begin:end])
        logits = llm.scores[: end - begin - 1]
        targets = np.asarray(ids[begin + 1 : end])
        peak = logits.max(axis=1)
        log_normalizer = peak + np.log(np.exp(logits - peak[:, None]).sum(axis=1))
        token_nll = (log_normalizer - logits[np.arange(len(targets)), targets]).astype(np.float64)
        new = token_nll[first_new:]
        total += float(new.sum())
        scored += int(new.size)
    return total, scored


def _main(request_file: str) -> None:
    request = json.loads(Path(request_file).read_text())
    handlers = {"quantize": _child_quantize, "check": _child_check}
    result = handlers[request["op"]](request)
    Path(request["result"]).write_text(json.dumps(result))


if __name__ == "__main__":
    _main(sys.argv[1])
