"""Which process of a job this is: read once from torchrun's environment (no torch, no process group), or from an
Indexed Job's (JOB_COMPLETION_INDEX, set by Kubernetes or by the local backend, with WORKERS_ENV)."""

from __future__ import annotations

import os
from dataclasses import dataclass

WORKERS_ENV = "ZHLLAMA_WORKERS"
"""How many workers an Indexed Job has (the chart and the local backend set it beside JOB_COMPLETION_INDEX)."""


@dataclass(frozen=True)
class Place:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    node_rank: int = 0
    """The pod's index (torchrun's GROUP_RANK): node 0 builds what every node then fetches."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Place:
        if "JOB_COMPLETION_INDEX" in os.environ:
            # An Indexed Job's worker: a pod of its own, rank 0 speaks for the job.
            index = int(os.environ["JOB_COMPLETION_INDEX"])
            return cls(rank=index, world_size=int(os.environ.get(WORKERS_ENV, "1")), node_rank=index)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
        return cls(
            rank=rank,
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
            world_size=world,
            local_world_size=local_world,
            node_rank=int(os.environ.get("GROUP_RANK", str(rank // max(1, local_world)))),
        )
