"""The CPU memory of a training process before any model tensor exists, measured in a fresh subprocess.

A training job's resident set starts with Python, torch, transformers, peft and zhllama as jobs/pretrain.py
imports them, plus the two tokenizers it holds (the run's, and the base's for the new rows' sub-tokens). The probe
does exactly that, with a synthetic byte-level BPE tokenizer of the run's vocabulary size (the real one may not be
on this machine yet), runs one autocast AdamW step so that torch's CPU kernels and thread pools exist, and reports
its peak resident set.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

EOS = "<|eos|>"
_ALPHABET = [chr(0x100 + k) for k in range(64)]  # two UTF-8 bytes each, like byte-level BPE pieces' characters


def write_synthetic_tokenizer(directory: Path, pieces: int) -> Path:
    """An HF tokenizer directory with `pieces` tokens (the last one is EOS): every string over a 64-character
    alphabet, shortest first, each longer piece with the merge of its prefix and last character."""
    vocab: dict[str, int] = {}
    merges: list[list[str]] = []
    for length in itertools.count(1):
        for combo in itertools.product(_ALPHABET, repeat=length):
            if len(vocab) >= pieces - 1:
                break
            piece = "".join(combo)
            vocab[piece] = len(vocab)
            if length > 1:
                merges.append([piece[:-1], piece[-1]])
        if len(vocab) >= pieces - 1:
            break
    eos_id = len(vocab)
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    data = {
        "version": "1.0", "truncation": None, "padding": None, "normalizer": None, "post_processor": None,
        "added_tokens": [{"id": eos_id, "content": EOS, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True}],
        "pre_tokenizer": byte_level, "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {**vocab, EOS: eos_id}, "merges": merges},
    }
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": EOS, "pad_token": EOS}
    (directory / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return directory


def peak_rss_bytes() -> int:
    """This process's peak resident set.

    On Linux VmHWM of /proc/self/status: ru_maxrss also counts the parent's resident set at the fork/vfork before
    exec (Linux carries the old address space's high-water mark over), so a small child of a big parent would
    report the parent's size. Elsewhere ru_maxrss (KiB on Linux, bytes on macOS).
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text(encoding="ascii", errors="replace").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


@functools.cache
def cpu_runtime_bytes(tokenizer_pieces: int) -> int:
    """Peak resident set of the probe (below) with a tokenizer of `tokenizer_pieces` pieces; measured once."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryDirectory(prefix="zhllama-probe-") as tmp:
        tokenizer = write_synthetic_tokenizer(Path(tmp) / "tokenizer", tokenizer_pieces)
        done = subprocess.run(
            [sys.executable, "-c", "import sys; from zhllama.train.runtime_probe import probe; probe(sys.argv[1])",
             str(tokenizer)], capture_output=True, text=True, env=env, timeout=600,
        )
    if done.returncode != 0 or not done.stdout.split():
        raise RuntimeError(f"the runtime memory probe failed: {done.stderr.strip()[-500:]}")
    return int(done.stdout.split()[-1])


def probe(tokenizer_dir: str) -> None:
    """What a training job holds before its model: the imports, two tokenizers (the run's and the base's), torch's
    CPU kernels."""
    import torch

    import zhllama.run  # noqa: F401  (jobs/pretrain.py imports these two)
    import zhllama.train.stage  # noqa: F401
    from zhllama.models.loading import load_tokenizer

    tokenizers = [load_tokenizer(Path(tokenizer_dir)) for _ in range(2)]
    layer = torch.nn.Linear(8, 8)
    optimizer = torch.optim.AdamW(layer.parameters(), fused=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = torch.nn.functional.cross_entropy(layer(torch.randn(4, 8)), torch.arange(4))
    loss.backward()
    optimizer.step()
    assert all(len(t) > 0 for t in tokenizers)
    print(peak_rss_bytes())
