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
import importlib.metadata
import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import types
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.s3_servers import BUCKET, S3_KEY, S3_SECRET, S3Server, parse_log  # noqa: E402

LIBS = {"litdata": "litdata", "streaming": "mosaicml-streaming"}
BLOCKS, TOKENS, PER_SHARD = 2000, 64, 270
"""8 shards (7 x 270 + 110): a rank's 500 samples do not line up with shards, so ranks of a node share shards."""
MDS_BYTES_PER_SAMPLE = 141
"""An MDS sample's bytes (8-byte id, 128 token bytes, its offsets), to size MDSWriter's shards to PER_SHARD."""
NODES, RANKS_PER_NODE = 2, 2
WORLD = NODES * RANKS_PER_NODE
BATCH = 4
RESUME_AT = 136
"""Samples per rank read before the state is saved: 34 batches of 4, not on a shard boundary of any rank."""
SEED = 1234
PHASE_TIMEOUT_S = 150


def expected_tokens(sample_id: int) -> Any:
    import numpy as np

    return ((np.arange(TOKENS, dtype=np.int64) + sample_id) % 65536).astype(np.uint16)


def emit(lib: str, check: str, passed: bool | None, detail: str, **extra: Any) -> None:
    print(json.dumps({"lib": lib, "check": check, "pass": passed, "detail": detail, **extra}, ensure_ascii=False),
          flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def short(error: BaseException | str, limit: int = 300) -> str:
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    text = " ".join(text.split()).split(" Debug source:")[0]  # obstore appends a long debug dump
    return text if len(text) <= limit else text[:limit] + "..."


# --- importing the libraries -----------------------------------------------------------------------------------


def stub_torchvision() -> None:
    """mosaicml-streaming's package import pulls streaming.vision, which needs two torchvision names; none is used.

    transformers (which streaming imports) probes for torchvision by spec, so its modules are imported first."""
    import torch.utils.data
    import transformers.feature_extraction_utils  # noqa: F401
    import transformers.tokenization_utils_base  # noqa: F401

    if "torchvision" in sys.modules:
        return
    try:
        import torchvision  # noqa: F401

        return
    except Exception:
        pass
    names = ("torchvision", "torchvision.datasets", "torchvision.transforms", "torchvision.transforms.functional")
    mods = {name: types.ModuleType(name) for name in names}

    class VisionDataset(torch.utils.data.Dataset):  # type: ignore[type-arg]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

    def to_tensor(*args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("stub torchvision")

    mods["torchvision.datasets"].VisionDataset = VisionDataset  # type: ignore[attr-defined]
    mods["torchvision.transforms.functional"].to_tensor = to_tensor  # type: ignore[attr-defined]
    mods["torchvision"].datasets = mods["torchvision.datasets"]  # type: ignore[attr-defined]
    mods["torchvision"].transforms = mods["torchvision.transforms"]  # type: ignore[attr-defined]
    mods["torchvision.transforms"].functional = mods["torchvision.transforms.functional"]  # type: ignore[attr-defined]
    sys.modules.update(mods)


def import_lib(lib: str) -> str:
    """Import `lib`'s reader and writer; return its version."""
    if lib == "litdata":
        import litdata
        from litdata import StreamingDataLoader, StreamingDataset, optimize  # noqa: F401
    else:
        stub_torchvision()
        from streaming import MDSWriter, StreamingDataLoader, StreamingDataset  # noqa: F401
    return importlib.metadata.version(LIBS[lib]) if lib == "streaming" else str(litdata.__version__)


def litdata_allow_http(allow: bool) -> None:
    """litdata hands its chunk GETs and uploads to obstore with client options of its own that never allow http://
    (reqwest: BadScheme); the only way to reach a plain-http endpoint is this module constant."""
    import litdata.streaming.downloader as downloader

    if allow:
        downloader._OBSTORE_CLIENT_OPTIONS["allow_http"] = True  # type: ignore[typeddict-unknown-key]
    else:
        downloader._OBSTORE_CLIENT_OPTIONS.pop("allow_http", None)  # type: ignore[misc]


def storage_options(endpoint: str) -> dict[str, str]:
    return {"endpoint_url": endpoint, "aws_access_key_id": S3_KEY, "aws_secret_access_key": S3_SECRET,
            "region_name": "us-east-1"}


# --- the write stage (a child process per library) -------------------------------------------------------------


def _litdata_block(sample_id: int) -> dict[str, Any]:
    return {"id": sample_id, "tokens": expected_tokens(sample_id)}


def write_litdata(endpoint: str, prefix: str, scratch: Path) -> dict[str, Any]:
    from litdata import optimize

    result: dict[str, Any] = {"as_is_errors": [], "workarounds": []}

    def attempt(out: str, **kwargs: Any) -> str | None:
        try:
            optimize(_litdata_block, list(range(BLOCKS)), output_dir=f"s3://{BUCKET}/{out}", chunk_size=PER_SHARD,
                     num_workers=1, storage_options=storage_options(endpoint), start_method="fork", **kwargs)
            return None
        except Exception as error:  # the measured outcome
            return short(error)

    litdata_allow_http(False)
    if error := attempt(f"{prefix}-as-is"):
        result["as_is_errors"].append(f"optimize(output_dir='s3://...') on an empty prefix: {error}")
        if error := attempt(f"{prefix}-append", mode="append"):
            result["as_is_errors"].append(f"optimize(mode='append'), which skips the emptiness listing: {error}")
    litdata_allow_http(True)
    result["workarounds"] = ["optimize(mode='append'): rclone omits KeyCount from an empty ListObjectsV2 and "
                             "litdata's is_empty() indexes it", "litdata.streaming.downloader._OBSTORE_CLIENT_OPTIONS"
                             "['allow_http']=True: obstore refuses the http:// endpoint"]
    if error := attempt(prefix, mode="append"):
        raise RuntimeError(f"optimize failed even with the workarounds: {error}")
    result["race_probe"] = litdata_index_race(endpoint, prefix, scratch)
    return result


def litdata_index_race(endpoint: str, prefix: str, scratch: Path) -> str:
    """Two ranks on a cold shared cache: the one that loses the race for index.json's lock waits 1 s for it
    (FileLock timeout=1, Timeout suppressed) and then reads the index whether it is there or not. A helper process
    holds that lock for 3 s, standing in for a peer rank whose index fetch takes longer than 1 s."""
    from litdata import StreamingDataset
    from litdata.utilities.dataset_utilities import _try_create_cache_dir

    url, cache = f"s3://{BUCKET}/{prefix}", str(scratch / "race-cache")
    path = _try_create_cache_dir(url, cache_dir=cache, storage_options=storage_options(endpoint))
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from filelock import FileLock; "
                               "lock = FileLock(sys.argv[1]); lock.acquire(); print('held', flush=True); time.sleep(3)",
                               os.path.join(str(path), "index.json.lock")], stdout=subprocess.PIPE)
    assert holder.stdout is not None
    holder.stdout.readline()
    started = time.monotonic()
    try:
        StreamingDataset(url, cache_dir=cache, storage_options=storage_options(endpoint))
        outcome = f"the waiting rank got the index after {time.monotonic() - started:.1f}s"
    except Exception as error:
        reason = short(error, 400).replace(str(path), "<cache>")
        outcome = f"the waiting rank raised after {time.monotonic() - started:.1f}s: {short(reason, 120)}"
    finally:
        holder.kill()
        holder.wait()
    return outcome


def write_streaming(endpoint: str, prefix: str, scratch: Path) -> dict[str, Any]:
    from streaming import MDSWriter

    columns = {"id": "int", "tokens": f"ndarray:uint16:{TOKENS}"}
    with MDSWriter(out=(str(scratch / "mds-out"), f"s3://{BUCKET}/{prefix}"), columns=columns, compression=None,
                   size_limit=PER_SHARD * MDS_BYTES_PER_SAMPLE) as writer:
        for sample_id in range(BLOCKS):
            writer.write({"id": sample_id, "tokens": expected_tokens(sample_id)})
    return {"as_is_errors": [], "workarounds": []}


def shard_samples(lib: str, index: dict[str, Any]) -> list[tuple[str, int]]:
    """(object name, samples) per shard, in write order, from the library's index.json."""
    if lib == "litdata":
        return [(chunk["filename"], int(chunk["chunk_size"])) for chunk in index["chunks"]]
    return [(shard["raw_data"]["basename"], int(shard["samples"])) for shard in index["shards"]]


def write_stage(job: dict[str, Any]) -> dict[str, Any]:
    lib, endpoint, prefix, scratch = job["lib"], job["endpoint"], job["prefix"], Path(job["scratch"])
    try:
        version = import_lib(lib)
    except Exception as error:
        return {"import_error": short(error)}
    started = time.monotonic()
    result = (write_litdata if lib == "litdata" else write_streaming)(endpoint, prefix, scratch)
    result["version"] = version
    result["write_s"] = round(time.monotonic() - started, 2)
    return result


# --- a rank (a child process of a node) ------------------------------------------------------------------------


def _columns(batch: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """A batch as a dict of lists: both loaders count a dict batch's samples by its first value's length."""
    return {"id": [int(sample["id"]) for sample in batch], "tokens": [sample["tokens"] for sample in batch]}


def rank_stage(job: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    lib, phase = job["lib"], job["phase"]
    remote, cache = f"s3://{BUCKET}/{job['prefix']}", job["cache"]
    import_lib(lib)
    if lib == "litdata":
        from litdata import StreamingDataLoader, StreamingDataset

        litdata_allow_http(job.get("allow_http", True))
        dataset = StreamingDataset(remote, cache_dir=cache, shuffle=True, seed=SEED,
                                   storage_options=storage_options(job["endpoint"]))
        loader = StreamingDataLoader(dataset, batch_size=BATCH, num_workers=0, collate_fn=_columns)
    else:
        from streaming import StreamingDataLoader, StreamingDataset

        dataset = StreamingDataset(remote=remote, local=cache, shuffle=True, shuffle_seed=SEED, batch_size=BATCH)
        loader = StreamingDataLoader(dataset, batch_size=BATCH, num_workers=0, collate_fn=_columns)
    state_path = Path(job["state"])
    if phase == "resume":
        loader.load_state_dict(pickle.loads(state_path.read_bytes()))
    ids: list[int] = []
    bad_tokens = 0
    if phase == "as-is":  # litdata's reader as shipped, one process: does a first batch arrive at all?
        try:
            return {"ids": next(iter(loader))["id"]}
        except Exception as error:
            return {"error": short(error)}
    for batch in loader:
        for sample_id, tokens in zip(batch["id"], batch["tokens"], strict=True):
            ids.append(sample_id)
            bad_tokens += not np.array_equal(np.asarray(tokens), expected_tokens(sample_id))
        if phase == "full" and len(ids) == RESUME_AT:
            state_path.write_bytes(pickle.dumps(loader.state_dict()))
    return {"ids": ids, "bad_tokens": bad_tokens, "state_saved": state_path.exists()}


# --- a node: its ranks, in this (private) mount namespace --------------------------------------------------------


def node_stage(job: dict[str, Any]) -> dict[str, Any]:
    """Start the node's ranks together (mosaicml-streaming's ranks meet in a gloo group and in /dev/shm)."""
    procs = []
    for local_rank in job.get("only", range(RANKS_PER_NODE)):
        rank = job["node"] * RANKS_PER_NODE + local_rank
        rank_job = {**job, "rank": rank, "state": str(Path(job["states"]) / f"rank{rank}.pkl"),
                    "out": str(Path(job["outs"]) / f"{job['phase']}-rank{rank}.json")}
        env = {**os.environ, "RANK": str(rank), "GLOBAL_RANK": str(rank), "LOCAL_RANK": str(local_rank),
               "WORLD_SIZE": str(WORLD), "LOCAL_WORLD_SIZE": str(RANKS_PER_NODE), "NODE_RANK": str(job["node"]),
               "NNODES": str(NODES), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(job["master_port"]),
               "AWS_ENDPOINT_URL": job["endpoint"], "S3_ENDPOINT_URL": job["endpoint"], "TMPDIR": job["tmp"]}
        log = open(Path(job["outs"]) / f"{job['phase']}-rank{rank}{job.get('attempt', '')}.log", "wb")
        procs.append((rank, subprocess.Popen([sys.executable, __file__, "--rank", json.dumps(rank_job)], env=env,
                                             stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL), log))
    codes = {}
    for rank, proc, log in procs:
        try:
            codes[rank] = proc.wait(timeout=PHASE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            codes[rank] = proc.wait()
        log.close()
    return {"codes": codes}


# --- the driver --------------------------------------------------------------------------------------------------


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


def base_env(scratch: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
    env.update({"AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET, "AWS_REGION": "us-east-1",
                "AWS_EC2_METADATA_DISABLED": "true", "TMPDIR": str(scratch / "tmp"),
                "LITDATA_CACHE_DIR": str(scratch / "litdata-default-cache"),
                "DATA_OPTIMIZER_CACHE_FOLDER": str(scratch / "litdata-optimize-cache"),
                "HF_HUB_OFFLINE": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1", "PYTHONUNBUFFERED": "1"})
    (scratch / "tmp").mkdir(parents=True, exist_ok=True)
    return env


def run_phase(lib: str, phase: str, prefix: str, scratch: Path, data: Path, env: dict[str, str],
              isolate: bool) -> tuple[dict[int, dict[str, Any]], list[Path], dict[int, str], dict[int, str]]:
    """All ranks of all nodes, one rclone server per node.

    Returns results by rank, server logs by node, the first attempt's failures by rank, and the reruns: a litdata
    rank that died is started once more, alone (litdata's ranks do not meet), so that its ids can still be
    compared; mosaicml-streaming's ranks cannot be rerun alone (they meet in a gloo group)."""
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
    return results, [server.log_path for server in servers], failures, reruns


def shard_of(shards: list[tuple[str, int]]) -> dict[int, str]:
    owner, start = {}, 0
    for name, samples in shards:
        owner.update({sample_id: name for sample_id in range(start, start + samples)})
        start += samples
    return owner


def bench_lib(lib: str, root: Path, isolate: bool) -> bool:
    """Emit the library's three checks; False when it is not importable (one line says so)."""
    scratch = root / lib
    data = scratch / "data"
    (data / BUCKET).mkdir(parents=True)
    env = base_env(scratch)
    prefix = f"{lib}-tokens"

    # 1. write with the library's own writer, through the S3 endpoint
    server = S3Server.start(data, scratch / "write-rclone.log")
    as_is_read: dict[str, Any] = {}
    try:
        out = scratch / "write.json"
        wait_all([child("write", {"lib": lib, "endpoint": server.endpoint, "prefix": prefix, "scratch": str(scratch)},
                        {**env, "AWS_ENDPOINT_URL": server.endpoint, "S3_ENDPOINT_URL": server.endpoint}, out)])
        if lib == "litdata" and out.exists() and "import_error" not in out.read_text():
            as_is_out = scratch / "as-is-read.json"
            wait_all([child("rank", {"lib": lib, "phase": "as-is", "prefix": prefix, "endpoint": server.endpoint,
                                     "cache": str(scratch / "as-is-cache"), "state": str(scratch / "as-is.pkl"),
                                     "allow_http": False}, {**env, "AWS_ENDPOINT_URL": server.endpoint}, as_is_out)])
            as_is_read = json.loads(as_is_out.read_text()) if as_is_out.exists() else {
                "error": log_tail(as_is_out.with_suffix(".log"))}
    finally:
        server.stop()
    if not out.exists():
        emit(lib, "s3", False, f"write stage died: {log_tail(out.with_suffix('.log'))}")
        return True
    written = json.loads(out.read_text())
    if "import_error" in written:
        emit(lib, "import", None, f"not importable, skipped: {written['import_error']}")
        return False
    version = written["version"]
    if lib == "litdata" and "error" in as_is_read:
        written["as_is_errors"].append(f"StreamingDataset iteration (first batch): {as_is_read['error']}")
    index_path = data / BUCKET / prefix / "index.json"
    shards = shard_samples(lib, json.loads(index_path.read_text()))
    owner = shard_of(shards)
    write_traffic = parse_log(scratch / "write-rclone.log", BUCKET, prefix)
    uploaded = sorted(key for key in write_traffic.uploads if key != "index.json")

    # 2. the uninterrupted epoch (state saved at RESUME_AT), then 3. the restart from the saved states
    full, full_logs, full_failures, full_reruns = run_phase(lib, "full", prefix, scratch, data, env, isolate)
    resumed, resume_logs, resume_failures, resume_reruns = run_phase(lib, "resume", prefix, scratch, data, env,
                                                                     isolate)
    ns = "private mount namespace (own /dev/shm) per node" if isolate else "nodes share /dev/shm (no unshare)"
    common = {"version": version, "shards": len(shards)}
    crashes = [f"{phase} rank{rank} died at start on its node's cold shared cache ({reason}); rerun alone: "
               f"{reruns.get(rank, 'not possible')}"
               for phase, failed, reruns in (("full", full_failures, full_reruns),
                                             ("resume", resume_failures, resume_reruns))
               for rank, reason in failed.items()]
    crash_note = f"; {len(crashes)} of {2 * WORLD} rank starts crashed: {' ; '.join(crashes)}" if crashes else ""
    race = written.get("race_probe", "")
    race_failed = "raised" in race
    if race:
        crash_note += (f"; cold-cache probe (a peer still fetching index.json after 1 s, simulated by holding its "
                       f"lock for 3 s): {race}")

    # s3: the library's writer and reader against rclone, as shipped
    seen = Counter(sample_id for result in full.values() for sample_id in result["ids"])
    bad = sum(result["bad_tokens"] for result in full.values())
    complete = len(full) == WORLD and set(seen) == set(range(BLOCKS)) and max(seen.values()) == 1 and bad == 0
    reads = sum(sum(parse_log(log, BUCKET, prefix).gets(lambda k: k != "index.json").values()) for log in full_logs)
    as_is = written["as_is_errors"]
    read_note = (f"{len(seen)}/{BLOCKS} ids read exactly once over world {WORLD}, tokens verified, "
                 f"{reads} shard GETs" if complete else
                 f"read incomplete: {len(full)}/{WORLD} ranks finished, {len(seen)} distinct ids, bad tokens {bad}")
    detail = (f"write {written['write_s']}s: {len(uploaded)} shard objects + index.json uploaded through the endpoint "
              f"({len(shards)} shards, the first of {shards[0][1]} samples); {read_note}")
    if as_is:
        detail = (f"as shipped it fails against rclone: {' ; '.join(as_is)}. With workarounds "
                  f"[{' ; '.join(written['workarounds'])}]: {detail}")
    emit(lib, "s3", complete and not as_is, detail, **common)

    # resume: restarted readers yield what the uninterrupted ones yielded from RESUME_AT on
    if len(full) < WORLD or len(resumed) < WORLD:
        emit(lib, "resume", False, f"ranks did not finish: full {full_failures} resume {resume_failures}"
             + crash_note, **common)
    else:
        per_rank, first_bad = [], None
        for rank in range(WORLD):
            want, got = full[rank]["ids"][RESUME_AT:], resumed[rank]["ids"]
            mismatch = next((i for i, (x, y) in enumerate(zip(want, got, strict=False)) if x != y),
                            None if len(want) == len(got) else min(len(want), len(got)))
            per_rank.append(f"rank{rank}: {len(got)} ids vs {len(want)} expected, "
                            + ("identical" if mismatch is None else f"first mismatch at position {RESUME_AT + mismatch}"
                               f" ({want[mismatch] if mismatch < len(want) else '-'} vs "
                               f"{got[mismatch] if mismatch < len(got) else '-'})"))
            if mismatch is not None and first_bad is None:
                first_bad = RESUME_AT + mismatch
        before = {i for r in full.values() for i in r["ids"][:RESUME_AT]}
        replayed = before & {i for r in resumed.values() for i in r["ids"]}
        resume_gets = [sum(parse_log(log, BUCKET, prefix).gets(lambda k: k != "index.json").values())
                       for log in resume_logs]
        emit(lib, "resume", first_bad is None,
             f"world {WORLD} ({NODES} nodes x {RANKS_PER_NODE} ranks, {ns}), shuffle seed {SEED}, batch {BATCH}, "
             f"state saved after {RESUME_AT} samples/rank, restarted in new processes on empty caches at the same "
             "paths: " + "; ".join(per_rank)
             + f"; ids from before the save yielded again after restart: {len(replayed)}; "
             f"shard GETs per node on restart: {resume_gets}"
             + (f"; ranks compared after a rerun: {sorted(set(full_reruns) | set(resume_reruns))}" if crashes else ""),
             **common, first_mismatch=first_bad)

    # node_cache: GETs per shard object per node in the uninterrupted run, and whether the shared cache held up
    figures, shared_shards, worst = [], [], 0
    for node, log in enumerate(full_logs):
        gets = parse_log(log, BUCKET, prefix).gets()
        shard_gets = {name: gets.get(name, 0) for name, _ in shards}
        worst = max(worst, *shard_gets.values())
        both = {owner[i] for i in full.get(node * RANKS_PER_NODE, {"ids": []})["ids"]} & {
            owner[i] for i in full.get(node * RANKS_PER_NODE + 1, {"ids": []})["ids"]}
        shared_shards.append(len(both))
        figures.append(f"node{node}: GETs per shard {sorted(Counter(shard_gets.values()).items())} "
                       f"(gets:shards), max {max(shard_gets.values())}, index.json GETs {gets.get('index.json', 0)}, "
                       f"shards read by both ranks {len(both)}/{len(shards)}")
    restart_worst = max(max(parse_log(log, BUCKET, prefix).gets(lambda k: k != "index.json").values(), default=0)
                        for log in resume_logs)
    figures.append(f"restart phase: max GETs per shard per node {restart_worst}")
    worst = max(worst, restart_worst)
    ok = len(full) == WORLD and worst <= 1 and sum(shared_shards) > 0 and not crashes and not race_failed
    emit(lib, "node_cache", ok, f"{RANKS_PER_NODE} ranks per node started together, one cache dir per node: "
         + "; ".join(figures) + crash_note, **common, max_gets_per_shard=worst, rank_start_crashes=len(crashes))
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
