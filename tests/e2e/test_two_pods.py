"""Two pods of a PyTorchJob on loopback (torchrun --nnodes 2 --nproc_per_node 2, DDP, world 4), as the chart and
the training operator start them, each pod with its own disk and its own S3 endpoint over one bucket.

From each pod's own S3 server log: every input object is downloaded at most once per pod; a checkpoint step holds
one copy of the trainable state (not one per rank); after kill -9 of both pods and a restart with empty disks the
run resumes from the newest complete checkpoint, each checkpoint object downloaded at most once per pod, and its
loss curve is the uninterrupted run's. `pytest -s` prints the figures (tests/e2e/pod_checks.py `report`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.pod_checks import report, scenario_checks
from tests.e2e.pods import PodCluster
from tests.e2e.scenario import fault_scenario


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_pods_read_inputs_once_write_one_checkpoint_copy_and_resume(
    tiny: dict[str, Path], tmp_path: Path
) -> None:
    cluster = PodCluster(tmp_path)
    try:
        scenario = fault_scenario(cluster, tiny, max_steps=16, checkpoint_every=4, kill_after_step=8)
    finally:
        cluster.close()
    print("\n" + report(scenario))
    checks = scenario_checks(scenario)
    for check in checks:
        print(f"{'PASS' if check.ok else 'FAIL'} {check.name}: {check.detail}")
    assert scenario.resumed_from_step is not None and scenario.resumed_from_step < 16
    assert [s for s, _ in scenario.losses[scenario.killed]] == list(range(1, 17))
    failed = [f"{c.name}: {c.detail}" for c in checks if not c.ok]
    assert not failed, "\n".join(failed)
