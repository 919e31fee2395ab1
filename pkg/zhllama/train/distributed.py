"""Who this process is in a torchrun job, and the few collective steps the stage needs."""

from __future__ import annotations

import datetime
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from zhllama.spec import TrainSpec

DEFAULT_TIMEOUT_S: int = TrainSpec.model_fields["process_group_timeout_s"].default


@dataclass(frozen=True)
class DistEnv:
    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    device: torch.device
    node_rank: int = 0
    """The pod's index (torchrun's GROUP_RANK): node 0 builds what every node then fetches."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def process_env() -> DistEnv:
    """Who this process is, from torchrun's environment; picks its device. Starts no process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    node_rank = int(os.environ.get("GROUP_RANK", str(rank // max(1, local_world))))
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    elif "OMP_NUM_THREADS" not in os.environ:
        # Share the cores out between the ranks on this node (an explicit OMP_NUM_THREADS wins).
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        torch.set_num_threads(max(1, cores // max(1, local_world)))
    return DistEnv(rank, local_rank, world, local_world, device, node_rank)


def start_process_group(env: DistEnv, *, needed: bool, timeout_s: int = DEFAULT_TIMEOUT_S) -> None:
    """Join the process group when there are several ranks or DeepSpeed needs one.

    `timeout_s` bounds every collective, this first rendezvous included: it must cover the spread between the
    pods finishing their downloads. Nothing after it waits in a collective on I/O of unbounded length.
    """
    if not (env.world_size > 1 or needed) or dist.is_initialized():
        return
    for name, value in (("MASTER_ADDR", "127.0.0.1"), ("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
        os.environ.setdefault(name, value)
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    dist.init_process_group("nccl" if env.device.type == "cuda" else "gloo",
                            timeout=datetime.timedelta(seconds=timeout_s))


def init_distributed(needs_process_group: bool, timeout_s: int = DEFAULT_TIMEOUT_S) -> DistEnv:
    """process_env, then start_process_group: for callers that have nothing to fetch first."""
    env = process_env()
    start_process_group(env, needed=needs_process_group, timeout_s=timeout_s)
    return env


def wait_for(ready: Callable[[], bool], what: str, timeout_s: float, poll_s: float = 2.0) -> None:
    """Poll `ready` until it holds; a one-line error after `timeout_s`. Used instead of a collective where the
    wait is for I/O or CPU work of unbounded length (another node's build, another rank's upload)."""
    started = time.monotonic()
    announced = started
    while not ready():
        waited = time.monotonic() - started
        if waited > timeout_s:
            raise TimeoutError(f"waited {waited:.0f} s for {what}; it did not come (see the other pods' logs)")
        if time.monotonic() - announced >= 60:
            print(f"still waiting for {what} ({waited:.0f} s)", flush=True)
            announced = time.monotonic()
        time.sleep(min(poll_s * (1 + waited / 30), 15.0))


def all_ranks_mean(value: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if env.distributed and env.world_size > 1:
        value = value.clone()
        dist.all_reduce(value)
        value /= env.world_size
    return value
