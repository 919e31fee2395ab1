"""Can a kept streaming library replace zhllama's own sharded token format? litdata vs mosaicml-streaming.

Each library writes the same token dataset (2,000 blocks of 64 uint16 tokens, ~8 shards, sample `i` holds
`arange(64) + i`) with its own writer straight to `rclone serve s3 -vv` (the server the tests use), then
2 simulated nodes x 2 ranks (world 4) read it back with shuffling on. Each node is its own mount namespace
(`unshare --mount`, a private tmpfs /dev/shm and its own TMPDIR: what separate machines would have) with its own
node cache dir shared by its two ranks, and its own rclone server over the one bucket, so that each node's
downloads are counted from that server's own log (`GET OBJECT` lines), never from the libraries' counters.

One JSON line per figure, three checks per library:
  s3          the library's own writer and reader work against rclone as shipped (no patches); the detail says
              what failed and which workaround the other checks then run with
  resume      each rank saves its loader's state after RESUME_AT samples of an uninterrupted epoch; a new process
              per rank, on an empty cache, loads it and must yield exactly the ids the uninterrupted reader
              yielded from there on (first mismatching position otherwise)
  node_cache  in both runs, each shard object is fetched at most once per node (GETs per shard per node), although
              the two ranks of a node read samples from the same shards; and no rank dies starting on its node's
              cold shared cache: rank starts that crashed are counted (a litdata rank is then rerun alone so that
              resume can still be compared), and for litdata a probe holds index.json's lock for 3 s, standing
              in for a peer rank whose index fetch takes over 1 s
A library that cannot be imported gets one line ("check": "import", "pass": null, the import error) instead.

Install the libraries outside .venv (torch, numpy, boto3, transformers, matplotlib come from .venv; --no-deps keeps
pip off them), then run:

    .venv/bin/python -m pip install --target /tmp/streamlibs --no-deps litdata mosaicml-streaming \\
        lightning-utilities obstore Brotli xxhash zstd python-snappy cramjam catalogue
    PYTHONPATH=/tmp/streamlibs .venv/bin/python bench/streaming_libs.py

mosaicml-streaming imports torchvision (for its vision datasets only). PyPI's torchvision is a CUDA build that does
not load against .venv's CPU torch, so this script stands in a stub torchvision (`VisionDataset`, `to_tensor`) that
no check touches. Runs as root for `unshare`; without it the nodes share /dev/shm (said in the detail).
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.streaming_libs_io import (  # noqa: E402
    BATCH,
    BLOCKS,
    LIBS,
    NODES,
    PHASE_TIMEOUT_S,
    RANKS_PER_NODE,
    RESUME_AT,
    SEED,
    WORLD,
    base_env,
    node_stage,
    rank_stage,
    shard_of,
    shard_samples,
    short,
    write_stage,
)
from tests.e2e.s3_servers import BUCKET, S3Server, Traffic, parse_log  # noqa: E402


def emit(lib: str, check: str, passed: bool | None, detail: str, **extra: Any) -> None:
    print(json.dumps({"lib": lib, "check": check, "pass": passed, "detail": detail, **extra}, ensure_ascii=False),
          flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- the driver: child processes and phases ----------------------------------------------------------------------


def child(mode: str, job: dict[str, Any], env: dict[str, str], out: Path, isolate: bool = False,
          timeout: float = PHASE_TIMEOUT_S) -> subprocess.Popen[bytes]:
    job = {**job, "result": str(out)}
    command = [sys.executable, __file__, f"--{mode}", json.dumps(job)]
    if isolate:
        command = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                   'mount -t tmpfs -o size=256m tmpfs /dev/shm && exec "$@"', "sh", *command]
    log = open(out.with_suffix(".log"), "wb")
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    log.close()
    return proc


def wait_all(procs: list[subprocess.Popen[bytes]], timeout: float = PHASE_TIMEOUT_S + 20) -> None:
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(timeout=max(1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def can_isolate() -> bool:
    try:
        return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                               "mount -t tmpfs -o size=1m tmpfs /dev/shm"], capture_output=True,
                              timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def log_tail(path: Path) -> str:
    """A dead process's reason: the last exception line of its log (else its last lines)."""
    if not path.exists():
        return "(no log)"
    text = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in text if line.split(":", 1)[0].endswith(("Error", "Exception", "Timeout"))]
    return short(errors[-1] if errors else " | ".join(text[-3:]), 260)


def litdata_read_as_shipped(prefix: str, scratch: Path, endpoint: str, env: dict[str, str]) -> dict[str, Any]:
    """litdata's reader with none of the workarounds, in one process: its first batch's ids, or its error."""
    out = scratch / "as-is-read.json"
    wait_all([child("rank", {"lib": "litdata", "phase": "as-is", "prefix": prefix, "endpoint": endpoint,
                             "cache": str(scratch / "as-is-cache"), "state": str(scratch / "as-is.pkl"),
                             "allow_http": False}, {**env, "AWS_ENDPOINT_URL": endpoint}, out)])
    return json.loads(out.read_text()) if out.exists() else {"error": log_tail(out.with_suffix(".log"))}


def write_phase(lib: str, prefix: str, scratch: Path, data: Path, env: dict[str, str]) -> dict[str, Any] | None:
    """1. Write with the library's own writer, through the S3 endpoint: the write stage's result, None if it died.

    For litdata its reader also runs as shipped, and a first batch that fails joins the as-shipped errors."""
    server = S3Server.start(data, scratch / "write-rclone.log")
    out = scratch / "write.json"
    try:
        wait_all([child("write", {"lib": lib, "endpoint": server.endpoint, "prefix": prefix, "scratch": str(scratch)},
                        {**env, "AWS_ENDPOINT_URL": server.endpoint, "S3_ENDPOINT_URL": server.endpoint}, out)])
        written: dict[str, Any] | None = json.loads(out.read_text()) if out.exists() else None
        if lib == "litdata" and written is not None and "import_error" not in written:
            as_is_read = litdata_read_as_shipped(prefix, scratch, server.endpoint, env)
            if "error" in as_is_read:
                written["as_is_errors"].append(f"StreamingDataset iteration (first batch): {as_is_read['error']}")
    finally:
        server.stop()
    return written


@dataclass
class Phase:
    """What one run of all ranks of all nodes left: the results of the ranks that finished (first attempt or rerun),
    each node's rclone log, why a rank's first attempt died, and how its rerun alone went ("ok" or why not)."""

    results: dict[int, dict[str, Any]]
    logs: list[Path]
    failures: dict[int, str]
    reruns: dict[int, str]


def run_phase(lib: str, phase: str, prefix: str, scratch: Path, data: Path, env: dict[str, str],
              isolate: bool) -> Phase:
    """All ranks of all nodes, one rclone server per node.

    A litdata rank that died is started once more, alone (litdata's ranks do not meet), so that its ids can still
    be compared; mosaicml-streaming's ranks cannot be rerun alone (they meet in a gloo group)."""
    servers = [S3Server.start(data, scratch / f"{phase}-node{node}-rclone.log") for node in range(NODES)]
    outs, states = scratch / "outs", scratch / "states"
    outs.mkdir(exist_ok=True)
    states.mkdir(exist_ok=True)
    port = free_port()
    jobs, failures, reruns = [], {}, {}
    results: dict[int, dict[str, Any]] = {}

    def start(job: dict[str, Any], name: str) -> subprocess.Popen[bytes]:
        return child("node", job, {**env, "TMPDIR": job["tmp"]}, outs / f"{name}.json", isolate=isolate)

    def collect(ranks: list[int], attempt: str) -> dict[int, str]:
        failed = {}
        for rank in ranks:
            path = outs / f"{phase}-rank{rank}.json"
            if path.exists():
                results[rank] = json.loads(path.read_text())
            else:
                failed[rank] = log_tail(outs / f"{phase}-rank{rank}{attempt}.log")
        return failed

    try:
        for node, server in enumerate(servers):
            tmp, cache = scratch / f"{phase}-node{node}-tmp", scratch / f"node{node}-cache"
            tmp.mkdir()
            shutil.rmtree(cache, ignore_errors=True)  # a restart on an empty disk, at the same cache path
            jobs.append({"lib": lib, "phase": phase, "prefix": prefix, "node": node, "endpoint": server.endpoint,
                         "cache": str(cache), "tmp": str(tmp), "master_port": port, "states": str(states),
                         "outs": str(outs)})
        wait_all([start(job, f"{phase}-node{job['node']}") for job in jobs])
        failures = collect(list(range(WORLD)), "")
        if lib == "litdata":
            for rank in failures:
                node, local_rank = divmod(rank, RANKS_PER_NODE)
                wait_all([start({**jobs[node], "only": [local_rank], "attempt": "-rerun"},
                                f"{phase}-node{node}-rerun{rank}")])
                reruns[rank] = collect([rank], "-rerun").get(rank, "ok")
    finally:
        for server in servers:
            server.stop()
    return Phase(results, [server.log_path for server in servers], failures, reruns)


# --- the checks --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WrittenDataset:
    """One library's token dataset in the bucket, and what its write stage reported; the checks' common ground."""

    lib: str
    prefix: str
    stage: dict[str, Any]
    """The write stage's result: version, write_s, as_is_errors, workarounds (and litdata's race_probe)."""
    shards: list[tuple[str, int]]

    def emit(self, check: str, passed: bool | None, detail: str, **extra: Any) -> None:
        emit(self.lib, check, passed, detail, version=self.stage["version"], shards=len(self.shards), **extra)

    def traffic(self, log: Path) -> Traffic:
        return parse_log(log, BUCKET, self.prefix)

    def shard_gets(self, log: Path) -> Counter[str]:
        return self.traffic(log).gets(lambda key: key != "index.json")


def rank_start_crashes(full: Phase, resumed: Phase) -> list[str]:
    return [f"{name} rank{rank} died at start on its node's cold shared cache ({reason}); rerun alone: "
            f"{phase.reruns.get(rank, 'not possible')}"
            for name, phase in (("full", full), ("resume", resumed))
            for rank, reason in phase.failures.items()]


def crash_note(crashes: list[str], race_probe: str) -> str:
    """The crashed rank starts and litdata's cold-cache probe, as a tail for the resume and node_cache details."""
    note = f"; {len(crashes)} of {2 * WORLD} rank starts crashed: {' ; '.join(crashes)}" if crashes else ""
    if race_probe:
        note += (f"; cold-cache probe (a peer still fetching index.json after 1 s, simulated by holding its "
                 f"lock for 3 s): {race_probe}")
    return note


def check_s3(dataset: WrittenDataset, full: Phase, write_log: Path) -> None:
    """The library's writer and reader against rclone, as shipped."""
    written, shards = dataset.stage, dataset.shards
    uploaded = sorted(key for key in dataset.traffic(write_log).uploads if key != "index.json")
    seen = Counter(sample_id for result in full.results.values() for sample_id in result["ids"])
    bad = sum(result["bad_tokens"] for result in full.results.values())
    complete = (len(full.results) == WORLD and set(seen) == set(range(BLOCKS)) and max(seen.values()) == 1
                and bad == 0)
    reads = sum(sum(dataset.shard_gets(log).values()) for log in full.logs)
    as_is = written["as_is_errors"]
    read_note = (f"{len(seen)}/{BLOCKS} ids read exactly once over world {WORLD}, tokens verified, "
                 f"{reads} shard GETs" if complete else
                 f"read incomplete: {len(full.results)}/{WORLD} ranks finished, {len(seen)} distinct ids, "
                 f"bad tokens {bad}")
    detail = (f"write {written['write_s']}s: {len(uploaded)} shard objects + index.json uploaded through the endpoint "
              f"({len(shards)} shards, the first of {shards[0][1]} samples); {read_note}")
    if as_is:
        detail = (f"as shipped it fails against rclone: {' ; '.join(as_is)}. With workarounds "
                  f"[{' ; '.join(written['workarounds'])}]: {detail}")
    dataset.emit("s3", complete and not as_is, detail)


def compare_resumed(rank: int, want: list[int], got: list[int]) -> tuple[str, int | None]:
    """A restarted rank's ids against the uninterrupted reader's from RESUME_AT on: a summary, and the position of
    the first mismatch (None when identical)."""
    mismatch = next((i for i, (x, y) in enumerate(zip(want, got, strict=False)) if x != y),
                    None if len(want) == len(got) else min(len(want), len(got)))
    if mismatch is None:
        return f"rank{rank}: {len(got)} ids vs {len(want)} expected, identical", None
    return (f"rank{rank}: {len(got)} ids vs {len(want)} expected, first mismatch at position {RESUME_AT + mismatch}"
            f" ({want[mismatch] if mismatch < len(want) else '-'} vs {got[mismatch] if mismatch < len(got) else '-'})",
            RESUME_AT + mismatch)


def check_resume(dataset: WrittenDataset, full: Phase, resumed: Phase, crashes: list[str], note: str,
                 isolate: bool) -> None:
    """Restarted readers yield what the uninterrupted ones yielded from RESUME_AT on."""
    if len(full.results) < WORLD or len(resumed.results) < WORLD:
        dataset.emit("resume", False, f"ranks did not finish: full {full.failures} resume {resumed.failures}" + note)
        return
    compared = [compare_resumed(rank, full.results[rank]["ids"][RESUME_AT:], resumed.results[rank]["ids"])
                for rank in range(WORLD)]
    first_bad = next((position for _, position in compared if position is not None), None)
    before = {i for r in full.results.values() for i in r["ids"][:RESUME_AT]}
    replayed = before & {i for r in resumed.results.values() for i in r["ids"]}
    resume_gets = [sum(dataset.shard_gets(log).values()) for log in resumed.logs]
    ns = "private mount namespace (own /dev/shm) per node" if isolate else "nodes share /dev/shm (no unshare)"
    rerun_ranks = sorted(set(full.reruns) | set(resumed.reruns))
    dataset.emit("resume", first_bad is None,
                 f"world {WORLD} ({NODES} nodes x {RANKS_PER_NODE} ranks, {ns}), shuffle seed {SEED}, batch {BATCH}, "
                 f"state saved after {RESUME_AT} samples/rank, restarted in new processes on empty caches at the same "
                 "paths: " + "; ".join(summary for summary, _ in compared)
                 + f"; ids from before the save yielded again after restart: {len(replayed)}; "
                 f"shard GETs per node on restart: {resume_gets}"
                 + (f"; ranks compared after a rerun: {rerun_ranks}" if crashes else ""),
                 first_mismatch=first_bad)


def check_node_cache(dataset: WrittenDataset, full: Phase, resumed: Phase, crashes: list[str], note: str) -> None:
    """GETs per shard object per node in both runs, and whether the node's shared cache held up."""
    owner = shard_of(dataset.shards)
    figures, shared_shards, worst = [], [], 0
    for node, log in enumerate(full.logs):
        gets = dataset.traffic(log).gets()
        shard_gets = {name: gets.get(name, 0) for name, _ in dataset.shards}
        worst = max(worst, *shard_gets.values())
        both = {owner[i] for i in full.results.get(node * RANKS_PER_NODE, {"ids": []})["ids"]} & {
            owner[i] for i in full.results.get(node * RANKS_PER_NODE + 1, {"ids": []})["ids"]}
        shared_shards.append(len(both))
        figures.append(f"node{node}: GETs per shard {sorted(Counter(shard_gets.values()).items())} "
                       f"(gets:shards), max {max(shard_gets.values())}, index.json GETs {gets.get('index.json', 0)}, "
                       f"shards read by both ranks {len(both)}/{len(dataset.shards)}")
    restart_worst = max(max(dataset.shard_gets(log).values(), default=0) for log in resumed.logs)
    figures.append(f"restart phase: max GETs per shard per node {restart_worst}")
    worst = max(worst, restart_worst)
    race_failed = "raised" in dataset.stage.get("race_probe", "")
    ok = len(full.results) == WORLD and worst <= 1 and sum(shared_shards) > 0 and not crashes and not race_failed
    dataset.emit("node_cache", ok, f"{RANKS_PER_NODE} ranks per node started together, one cache dir per node: "
                 + "; ".join(figures) + note, max_gets_per_shard=worst, rank_start_crashes=len(crashes))


def bench_lib(lib: str, root: Path, isolate: bool) -> bool:
    """Emit the library's three checks; False when it is not importable (one line says so)."""
    scratch = root / lib
    data = scratch / "data"
    (data / BUCKET).mkdir(parents=True)
    env = base_env(scratch)
    prefix = f"{lib}-tokens"
    written = write_phase(lib, prefix, scratch, data, env)
    if written is None:
        emit(lib, "s3", False, f"write stage died: {log_tail(scratch / 'write.log')}")
        return True
    if "import_error" in written:
        emit(lib, "import", None, f"not importable, skipped: {written['import_error']}")
        return False
    index = json.loads((data / BUCKET / prefix / "index.json").read_text())
    dataset = WrittenDataset(lib, prefix, written, shard_samples(lib, index))
    # 2. the uninterrupted epoch (state saved at RESUME_AT), then 3. the restart from the saved states
    full = run_phase(lib, "full", prefix, scratch, data, env, isolate)
    resumed = run_phase(lib, "resume", prefix, scratch, data, env, isolate)
    crashes = rank_start_crashes(full, resumed)
    note = crash_note(crashes, written.get("race_probe", ""))
    check_s3(dataset, full, scratch / "write-rclone.log")
    check_resume(dataset, full, resumed, crashes, note, isolate)
    check_node_cache(dataset, full, resumed, crashes, note)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lib", choices=sorted(LIBS), action="append", help="only these libraries")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (its path is printed)")
    for mode in ("write", "node", "rank"):
        parser.add_argument(f"--{mode}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    for mode, stage in (("write", write_stage), ("node", node_stage), ("rank", rank_stage)):
        if getattr(args, mode):
            job = json.loads(getattr(args, mode))
            result = stage(job)
            Path(job.get("out") or job["result"]).write_text(json.dumps(result))
            return

    root = Path(tempfile.mkdtemp(prefix="zhllama-streamlibs-"))
    isolate = can_isolate()
    try:
        for lib in args.lib or list(LIBS):
            started = time.monotonic()
            try:
                ran = bench_lib(lib, root, isolate)
            except Exception as error:  # a figure, not a crash: the other library still runs
                ran = True
                emit(lib, "s3", False, f"bench error: {short(error)}")
            if ran:
                emit(lib, "wall_s", None, f"{time.monotonic() - started:.1f}s for this library's three checks")
    finally:
        if args.keep:
            print(json.dumps({"scratch": str(root)}), flush=True)
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
