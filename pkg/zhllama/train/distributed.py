"""Who this process is in a torchrun job, and the few collective steps the stage needs."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from zhllama.errors import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class DistEnv:
    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    device: torch.device

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


def init_distributed(needs_process_group: bool) -> DistEnv:
    """Read torchrun's environment; start the process group when there are several ranks or DeepSpeed needs one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    elif "OMP_NUM_THREADS" not in os.environ:
        # Share the cores out between the ranks on this node (an explicit OMP_NUM_THREADS wins).
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        torch.set_num_threads(max(1, cores // max(1, local_world)))
    if (world > 1 or needs_process_group) and not dist.is_initialized():
        for name, value in (("MASTER_ADDR", "127.0.0.1"), ("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
            os.environ.setdefault(name, value)
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistEnv(rank, local_rank, world, local_world, device)


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def main_first(env: DistEnv, work: Callable[[], T], then: Callable[[], T]) -> T:
    """Rank 0 runs `work` (e.g. builds and publishes a cache); the others run `then` after it succeeded.

    A UserError on rank 0 is re-raised on every rank, so no rank waits forever for a cache that never comes.
    """
    result: T | None = None
    failure = [""]
    if env.is_main:
        try:
            result = work()
        except UserError as err:
            failure = [str(err)]
            if not env.distributed:
                raise
    if env.distributed:
        dist.broadcast_object_list(failure, src=0)
    if failure[0]:
        raise UserError(failure[0])
    if env.is_main:
        assert result is not None
        return result
    return then()


def all_ranks_mean(value: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if env.distributed and env.world_size > 1:
        value = value.clone()
        dist.all_reduce(value)
        value /= env.world_size
    return value
