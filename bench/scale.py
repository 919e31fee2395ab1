"""Cluster-scale figures on this machine, one JSON line per figure (issue: cluster scale).

  python bench/scale.py [traffic] [memory]
      traffic: two simulated pods (torchrun --nnodes 2 --nproc_per_node 2 on loopback, each against its own
               `rclone serve s3 -vv` endpoint over one bucket): S3 bytes read and written per pod at start, per
               checkpoint and on resume, against the artifact sizes (bench/scale_traffic.py).
      memory:  the per-GPU memory plan of the 7b/13b/33b/65b presets on 80 GiB GPUs, and the estimate against
               the measured peak of real tiny and smol training runs (bench/scale_memory.py).
Both parts run by default, in one process, so their figures come from the same machine state.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.scale_memory import memory_figures  # noqa: E402
from bench.scale_traffic import traffic_figures  # noqa: E402

PARTS = {"traffic": traffic_figures, "memory": memory_figures}


def main(argv: list[str]) -> None:
    for name in argv or list(PARTS):
        if name not in PARTS:
            raise SystemExit(f"unknown part {name!r}; choose from {', '.join(PARTS)}")
        for figure in PARTS[name]():
            print(json.dumps({"part": name, **figure}, ensure_ascii=False), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
