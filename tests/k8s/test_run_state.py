"""`ctl ls` and `ctl status` tell the same story, because both reconcile the run record with what the cluster
shows: the real `ctl` and kubernetes client (kubeconfig from KUBECONFIG) against the in-test API server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.k8s.conftest import spec_for
from tests.k8s.operator import FakeOperator
from zhllama.backends.kubernetes import KubernetesBackend
from zhllama.run import read_record
from zhllama.store import open_store


def ctl(*args: str) -> str:
    """The real command in its own process: the kubernetes client reads KUBECONFIG when it is imported."""
    result = subprocess.run([sys.executable, "-m", "zhllama.cli.main", *args], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_ls_and_status_agree_on_a_run_whose_pod_was_oom_killed(
        kubeconfig: Path, operator: FakeOperator, backend: KubernetesBackend, store_uri: str) -> None:
    backend.submit(spec_for("pretrain", store_uri, "pt33"))
    operator.created("pt33")
    operator.running("pt33")
    assert "pt33  pretrain   Running" in ctl("ls", "--store", store_uri)
    # The pod dies before the job can record anything: only the cluster knows.
    operator.failed("pt33", reason="OOMKilled", exit_code=137)
    assert read_record(open_store(store_uri), "pt33").state == "Pending"

    listed = ctl("ls", "--store", store_uri).strip()
    shown = ctl("status", "pt33", "--store", store_uri).splitlines()[0]
    assert listed == shown
    assert "Failed (OOMKilled: pod pt33-master-0 container pytorch exited with code 137" in shown
    # The first reader recorded the end, so the store alone now says it, with who saw it.
    record = read_record(open_store(store_uri), "pt33")
    assert (record.state, record.reason) == ("Failed", "OOMKilled")
    assert [(t.state, t.by) for t in record.transitions] == [("Pending", "kubernetes"), ("Failed", "kubernetes")]


def test_a_cancel_after_the_end_changes_nothing(
        kubeconfig: Path, operator: FakeOperator, backend: KubernetesBackend, store_uri: str) -> None:
    backend.submit(spec_for("pretrain", store_uri, "pt33"))
    operator.created("pt33")
    operator.succeeded("pt33")
    assert "Succeeded" in ctl("cancel", "pt33", "--store", store_uri)
    assert read_record(open_store(store_uri), "pt33").state == "Succeeded"
    assert "Succeeded" in ctl("ls", "--store", store_uri)
