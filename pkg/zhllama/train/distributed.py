"""Where this training process runs: its place in the torchrun job (run.Place, the one rank object) and its
device; and the few collective steps the stage needs."""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from zhllama.run import Place


@dataclass(frozen=True)
class DistEnv:
    """A training process: which rank of the job (`place`, read once from torchrun's environment) on which device."""

    place: Place
    device: torch.device

    @property
    def distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def process_env(place: Place | None = None) -> DistEnv:
    """This process's device for `place` (default: read from torchrun's environment). Starts no process group."""
    place = place or Place.from_env()
    device = torch.device("cuda", place.local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    elif "OMP_NUM_THREADS" not in os.environ:
        # Share the cores out between the ranks on this node (an explicit OMP_NUM_THREADS wins).
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        torch.set_num_threads(max(1, cores // max(1, place.local_world_size)))
    return DistEnv(place, device)


def start_process_group(env: DistEnv, *, needed: bool, timeout_s: int) -> None:
    """Join the process group when there are several ranks or DeepSpeed needs one.

    `timeout_s` bounds every collective, this first rendezvous included: it must cover the spread between the
    pods finishing their downloads. Nothing after it waits in a collective on I/O of unbounded length.
    """
    if not (env.place.world_size > 1 or needed) or dist.is_initialized():
        return
    # A single process that DeepSpeed still wants a group for: a group of one on loopback.
    for name, value in (("MASTER_ADDR", "127.0.0.1"), ("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
        os.environ.setdefault(name, value)
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    dist.init_process_group("nccl" if env.device.type == "cuda" else "gloo",
                            timeout=datetime.timedelta(seconds=timeout_s))


def all_ranks_mean(value: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """The mean of `value` over the ranks (itself on one process)."""
    if env.distributed and env.place.world_size > 1:
        value = value.clone()
        dist.all_reduce(value)
        value /= env.place.world_size
    return value


def _grouped() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def from_main(value: Any) -> Any:
    """Rank 0's `value` on every rank (the value itself on one process)."""
    if not _grouped():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def from_every_rank(value: Any) -> list[Any]:
    """Every rank's `value`, in rank order ([value] on one process)."""
    if not _grouped():
        return [value]
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def barrier() -> None:
    if _grouped():
        dist.barrier()
