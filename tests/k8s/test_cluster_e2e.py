"""End to end on a real cluster (kind or k3d with the Kubeflow training operator): runs only when KUBECONFIG
points at a reachable cluster and ZHLLAMA_E2E_VALUES names a chart values file for it (images loaded into the
cluster, S3 endpoint + credentials Secret). How to set one up: charts/zhllama/README.md, "End-to-end test"."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from zhllama.backends.base import RunStatus
from zhllama.backends.kubernetes import KubernetesBackend
from zhllama.spec import resolve_spec

pytestmark = pytest.mark.cluster


def _cluster_backend() -> KubernetesBackend:
    kubeconfig, values = os.environ.get("KUBECONFIG"), os.environ.get("ZHLLAMA_E2E_VALUES")
    if not kubeconfig or not Path(kubeconfig).is_file():
        pytest.skip("KUBECONFIG does not point at a cluster")
    if not values:
        pytest.skip("ZHLLAMA_E2E_VALUES (chart values for the test cluster: image, s3) is not set")
    from kubernetes import client, config

    try:
        config.load_kube_config()
        client.VersionApi().get_code(_request_timeout=5)
        client.ApiextensionsV1Api().read_custom_resource_definition("pytorchjobs.kubeflow.org", _request_timeout=5)
    except Exception as err:  # any failure here means "no usable cluster", not a test failure
        pytest.skip(f"no cluster with the training operator at KUBECONFIG: {err}")
    return KubernetesBackend(namespace=os.environ.get("ZHLLAMA_E2E_NAMESPACE", "default"), values_files=[values])


def _finish(backend: KubernetesBackend, run_id: str, timeout: float) -> RunStatus:
    deadline = time.monotonic() + timeout
    for status in backend.watch(run_id):
        if status.finished or time.monotonic() > deadline:
            return status
    return backend.status(run_id)


def test_tiny_pretrain_runs_as_a_pytorchjob_and_a_job_on_the_cluster() -> None:
    backend = _cluster_backend()
    store = os.environ.get("ZHLLAMA_E2E_STORE", "s3://zhllama-e2e")
    stamp = time.strftime("%H%M%S")
    tokenizer = resolve_spec("tokenizer", size="tiny", run_id=f"e2e-tok-{stamp}", values={"store": store})
    assert backend.submit(tokenizer).state in ("Pending", "Running")
    assert _finish(backend, tokenizer.run_id, 900).state == "Succeeded", backend.status(tokenizer.run_id).line()
    pretrain = resolve_spec("pretrain", size="tiny", run_id=f"e2e-pt-{stamp}",
                            sets=["resources.nodes=2", f"tokenizer=run://{tokenizer.run_id}/outputs/tokenizer"],
                            values={"store": store})
    backend.submit(pretrain)
    assert backend.submit(pretrain).state != "Failed"  # the same spec again attaches
    final = _finish(backend, pretrain.run_id, 1800)
    assert final.state == "Succeeded", final.line()
    assert list(backend.logs(pretrain.run_id))
