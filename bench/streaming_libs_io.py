"""The libraries' side of bench/streaming_libs.py: the token dataset, and each library's writer and reader.

What runs in the child processes lives here: the write stage (one per library), the node stage (one per simulated
node, in its own mount namespace) and the rank stage (one per rank). The driver, streaming_libs.py, puts the
repository on sys.path before importing this module, starts the stages and judges what they return.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import pickle
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

from tests.e2e.s3_servers import BUCKET, S3_KEY, S3_SECRET

LIBS = {"litdata": "litdata", "streaming": "mosaicml-streaming"}
BLOCKS, TOKENS, PER_SHARD = 2000, 64, 270
"""8 shards (7 x 270 + 110): a rank's 500 samples do not line up with shards, so ranks of a node share shards."""
MDS_BYTES_PER_SAMPLE = 141
"""An MDS sample's bytes (8-byte id, 128 token bytes, its offsets), to size MDSWriter's shards to PER_SHARD."""
BATCH = 4
RESUME_AT = 136
"""Samples per rank read before the state is saved: 34 batches of 4, not on a shard boundary of any rank."""
SEED = 1234
NODES, RANKS_PER_NODE = 2, 2
WORLD = NODES * RANKS_PER_NODE
PHASE_TIMEOUT_S = 150
DRIVER = Path(__file__).with_name("streaming_libs.py")
"""The script a node starts its ranks with: its --rank mode runs rank_stage."""


def expected_tokens(sample_id: int) -> Any:
    import numpy as np

    return ((np.arange(TOKENS, dtype=np.int64) + sample_id) % 65536).astype(np.uint16)


def short(error: BaseException | str, limit: int = 300) -> str:
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    text = " ".join(text.split()).split(" Debug source:")[0]  # obstore appends a long debug dump
    return text if len(text) <= limit else text[:limit] + "..."


# --- importing the libraries, and their settings -----------------------------------------------------------------


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


def base_env(scratch: Path) -> dict[str, str]:
    """The children's environment: S3 credentials, and every cache and temp dir of the libraries under `scratch`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
    env.update({"AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET, "AWS_REGION": "us-east-1",
                "AWS_EC2_METADATA_DISABLED": "true", "TMPDIR": str(scratch / "tmp"),
                "LITDATA_CACHE_DIR": str(scratch / "litdata-default-cache"),
                "DATA_OPTIMIZER_CACHE_FOLDER": str(scratch / "litdata-optimize-cache"),
                "HF_HUB_OFFLINE": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1", "PYTHONUNBUFFERED": "1"})
    (scratch / "tmp").mkdir(parents=True, exist_ok=True)
    return env


# --- the write stage (a child process per library) ---------------------------------------------------------------


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


def shard_of(shards: list[tuple[str, int]]) -> dict[int, str]:
    owner, start = {}, 0
    for name, samples in shards:
        owner.update({sample_id: name for sample_id in range(start, start + samples)})
        start += samples
    return owner


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


# --- a rank (a child process of a node) --------------------------------------------------------------------------


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
        procs.append((rank, subprocess.Popen([sys.executable, str(DRIVER), "--rank", json.dumps(rank_job)],
                                             env=env, stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL), log))
    codes = {}
    for rank, proc, log in procs:
        try:
            codes[rank] = proc.wait(timeout=PHASE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            codes[rank] = proc.wait()
        log.close()
    return {"codes": codes}
