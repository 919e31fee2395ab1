"""The Kubernetes backend with the real kubernetes client over HTTP against tests/k8s/apiserver.py: submit
(idempotent), status and why, watch across a 410, logs (follow, previous), cancel, TrainJob, the pipeline."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import pytest

from tests.k8s.apiserver import FakeApiServer
from tests.k8s.conftest import NAMESPACE, make_backend, spec_for
from tests.k8s.operator import FakeOperator
from zhllama.backends.base import RunStatus
from zhllama.backends.kubernetes import KubernetesBackend
from zhllama.errors import UserError
from zhllama.run import run_key
from zhllama.spec import resolve_spec
from zhllama.store import open_store


def stored(apiserver: FakeApiServer, resource: str) -> list[str]:
    return sorted(name for (res, ns, name) in apiserver.objects if res == resource and ns == NAMESPACE)


def test_submit_creates_the_rendered_objects_and_a_resubmit_attaches(
        apiserver: FakeApiServer, backend: KubernetesBackend, store_uri: str) -> None:
    spec = spec_for("pretrain", store_uri, "pt33", sets=("bits=8",))
    first = backend.submit(spec)
    assert (first.state, first.reason) == ("Pending", "Created")
    assert stored(apiserver, "pytorchjobs") == ["pt33"]
    assert stored(apiserver, "configmaps") == ["pt33-spec"]
    for resource in ("roles", "rolebindings", "serviceaccounts"):
        assert stored(apiserver, resource) == ["pt33"]
    job = apiserver.objects[("pytorchjobs", NAMESPACE, "pt33")]
    assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 5
    assert open_store(store_uri).read_json(run_key("pt33", "status.json"))["backend"] == "kubernetes"

    version = apiserver.resource_version
    again = backend.submit(spec)
    assert again.state == "Pending" and apiserver.resource_version == version  # nothing new was written
    assert sum(1 for method, path in apiserver.requests if method == "POST") == 5  # the resubmit only attached


def test_a_different_spec_under_the_same_run_id_is_refused_unless_forced(
        apiserver: FakeApiServer, backend: KubernetesBackend, store_uri: str) -> None:
    backend.submit(spec_for("pretrain", store_uri, "pt33"))
    changed = spec_for("pretrain", store_uri, "pt33", sets=("max_steps=10",))
    with pytest.raises(UserError, match="already exists in namespace zh with a different spec; pass --force"):
        backend.submit(changed)
    old_uid = apiserver.objects[("pytorchjobs", NAMESPACE, "pt33")]["metadata"]["uid"]
    backend.submit(changed, force=True)
    replaced = apiserver.objects[("pytorchjobs", NAMESPACE, "pt33")]
    assert replaced["metadata"]["uid"] != old_uid
    assert '"max_steps": 10' in apiserver.objects[("configmaps", NAMESPACE, "pt33-spec")]["data"]["spec.json"]


def test_the_api_server_rejects_an_invalid_object_and_ctl_says_why(
        apiserver: FakeApiServer, backend: KubernetesBackend, store_uri: str) -> None:
    backend.cluster_values = {"image": {"train": "registry.example/train", "tag": "1"}}
    apiserver.create("pytorchjobs", NAMESPACE, {
        "apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": "other"},
        "spec": {"pytorchReplicaSpecs": {}}})
    with pytest.raises(Exception, match="409|already exists") as caught:
        apiserver.create("pytorchjobs", NAMESPACE, {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob",
                                                    "metadata": {"name": "other"}, "spec": {"pytorchReplicaSpecs": {}}})
    assert caught.value.code == 409  # type: ignore[attr-defined]
    with pytest.raises(Exception, match="is invalid: .*nprocPerNod"):
        apiserver.create("pytorchjobs", NAMESPACE, {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob",
                                                    "metadata": {"name": "typo"},
                                                    "spec": {"pytorchReplicaSpecs": {}, "nprocPerNod": "8"}})


def test_status_says_why_a_run_is_pending(
        operator: FakeOperator, backend: KubernetesBackend, store_uri: str) -> None:
    backend.submit(spec_for("pretrain", store_uri, "pt33"))
    operator.created("pt33")
    operator.unschedulable("pt33", "0/4 nodes are available: 4 Insufficient nvidia.com/gpu.")
    status = backend.status("pt33")
    assert (status.state, status.reason) == ("Pending", "Unschedulable")
    assert "Insufficient nvidia.com/gpu" in status.message
    operator.image_pull_backoff("pt33")
    status = backend.status("pt33")
    assert (status.state, status.reason) == ("Pending", "ImagePullBackOff")
    assert 'Back-off pulling image "ghcr.io/zhllama/zhllama-train:0.1.0"' in status.message


def test_status_says_when_quota_blocks_a_job(
        operator: FakeOperator, backend: KubernetesBackend, store_uri: str) -> None:
    backend.submit(spec_for("merge", store_uri, "merge33"))
    operator.event("merge33", "FailedCreate", 'pods "merge33-x" is forbidden: exceeded quota: gpu-quota, '
                   "requested: requests.memory=400Gi, used: requests.memory=800Gi, limited: requests.memory=1Ti")
    status = backend.status("merge33")
    assert (status.state, status.reason) == ("Pending", "QuotaExceeded")
    assert "exceeded quota: gpu-quota" in status.message


def test_a_run_goes_running_restarting_running_and_fails_with_the_reason(
        operator: FakeOperator, backend: KubernetesBackend, store_uri: str) -> None:
    backend.submit(spec_for("pretrain", store_uri, "pt33"))
    operator.created("pt33")
    operator.running("pt33")
    assert backend.status("pt33").state == "Running"
    operator.restarting("pt33", reason="OOMKilled", exit_code=137)
    status = backend.status("pt33")
    assert (status.state, status.reason, status.details["restarts"]) == ("Restarting", "OOMKilled", "1")
    operator.running("pt33")
    assert backend.status("pt33").state == "Running"
    operator.failed("pt33", reason="OOMKilled", exit_code=137)
    status = backend.status("pt33")
    assert (status.state, status.reason) == ("Failed", "OOMKilled")
    assert "pt33-master-0 container pytorch exited with code 137: out of memory" in status.message
    assert "Failed (OOMKilled: pod pt33-master-0" in status.line()


@pytest.mark.parametrize(("container_reason", "code", "job_reason", "reason", "words"), [
    ("Error", 1, "BackoffLimitExceeded", "ExitCode", "exited with code 1 (BackoffLimitExceeded"),
    ("Error", 143, "DeadlineExceeded", "DeadlineExceeded", "active longer than specified deadline"),
])
def test_a_job_fails_with_exit_code_backoff_or_deadline(
        operator: FakeOperator, backend: KubernetesBackend, store_uri: str, container_reason: str, code: int,
        job_reason: str, reason: str, words: str) -> None:
    backend.submit(spec_for("quantize", store_uri, "quant33"))
    operator.created("quant33")
    operator.running("quant33")
    operator.failed("quant33", reason=container_reason, exit_code=code, job_reason=job_reason)
    status = backend.status("quant33")
    assert (status.state, status.reason) == ("Failed", reason)
    assert words in status.message


def _collect(states: Iterator[RunStatus]) -> queue.Queue[RunStatus]:
    seen: queue.Queue[RunStatus] = queue.Queue()

    def consume() -> None:
        for state in states:
            seen.put(state)

    threading.Thread(target=consume, daemon=True).start()
    return seen


def _next(seen: queue.Queue[RunStatus], state: str) -> RunStatus:
    while True:
        current = seen.get(timeout=10)
        if current.state == state:
            return current


def test_watch_survives_410_gone_and_ends_with_the_outcome(
        apiserver: FakeApiServer, operator: FakeOperator, backend: KubernetesBackend, store_uri: str) -> None:
    backend.submit(spec_for("pretrain", store_uri, "pt33"))
    seen = _collect(backend.watch("pt33"))
    assert _next(seen, "Pending").reason == "Created"
    operator.created("pt33")
    operator.running("pt33")
    _next(seen, "Running")
    lists_before = sum(1 for m, p in apiserver.requests if m == "GET" and "pytorchjobs" in p and "watch" not in p)
    apiserver.expire_watches()
    operator.restarting("pt33")
    assert _next(seen, "Restarting").reason == "OOMKilled"
    operator.running("pt33")
    _next(seen, "Running")
    operator.failed("pt33", reason="Error", exit_code=1)
    final = _next(seen, "Failed")
    assert final.reason == "ExitCode" and "exited with code 1" in final.message
    lists_after = sum(1 for m, p in apiserver.requests if m == "GET" and "pytorchjobs" in p and "watch" not in p)
    assert lists_after > lists_before  # the 410 made it list again
    watches = [p for m, p in apiserver.requests if "watch=true" in p]
    assert all("allowWatchBookmarks=true" in p and "resourceVersion=" in p for p in watches)


def test_logs_follow_the_master_and_previous_shows_the_restarted_container(
        apiserver: FakeApiServer, operator: FakeOperator, backend: KubernetesBackend, store_uri: str) -> None:
    backend.submit(spec_for("pretrain", store_uri, "pt33"))
    operator.created("pt33")
    operator.running("pt33")
    operator.log("pt33", "step 1 loss 9.1", "step 2 loss 8.7")
    operator.restarting("pt33", reason="OOMKilled")
    operator.log("pt33", "resuming from step-2")
    assert list(backend.logs("pt33", previous=True)) == ["step 1 loss 9.1", "step 2 loss 8.7"]
    assert list(backend.logs("pt33")) == ["resuming from step-2"]
    followed = _collect(backend.logs("pt33", follow=True))  # type: ignore[arg-type]
    assert followed.get(timeout=10) == "resuming from step-2"
    operator.log("pt33", "step 3 loss 8.2")
    assert followed.get(timeout=10) == "step 3 loss 8.2"
    operator.succeeded("pt33")  # the container stops: the stream ends


def test_logs_before_any_pod_say_why(backend: KubernetesBackend, operator: FakeOperator, store_uri: str) -> None:
    backend.submit(spec_for("merge", store_uri, "merge33"))
    with pytest.raises(UserError, match="run merge33 has no pod yet: merge33 +merge +Pending"):
        list(backend.logs("merge33"))


def test_cancel_deletes_the_job_and_its_pods_and_a_resubmit_restarts_it(
        apiserver: FakeApiServer, operator: FakeOperator, backend: KubernetesBackend, store_uri: str) -> None:
    spec = spec_for("pretrain", store_uri, "pt33")
    backend.submit(spec)
    operator.created("pt33")
    operator.running("pt33")
    assert len(stored(apiserver, "pods")) == 6
    cancelled = backend.cancel("pt33")
    assert (cancelled.state, cancelled.reason) == ("Cancelled", "Cancelled")
    assert stored(apiserver, "pytorchjobs") == [] and stored(apiserver, "pods") == []
    assert open_store(store_uri).read_json(run_key("pt33", "status.json"))["state"] == "Cancelled"
    assert backend.status("pt33").state == "Cancelled"
    restarted = backend.submit(spec)
    assert restarted.state == "Pending" and stored(apiserver, "pytorchjobs") == ["pt33"]


def test_trainjob_backend_runs_sft_and_reads_its_rank0_logs(
        apiserver: FakeApiServer, operator: FakeOperator, store_uri: str) -> None:
    backend = make_backend(apiserver, job_kind="trainjob")
    backend.submit(spec_for("sft", store_uri, "sft65", size="65b"))
    assert stored(apiserver, "trainjobs") == ["sft65"] and stored(apiserver, "pytorchjobs") == []
    pods = operator.created("sft65")
    assert len(pods) == 8
    operator.running("sft65")
    operator.log("sft65", "rank 0 says hi")
    assert backend.status("sft65").state == "Running"
    assert list(backend.logs("sft65")) == ["rank 0 says hi"]
    operator.succeeded("sft65")
    assert backend.wait("sft65").state == "Succeeded"


def test_status_of_an_unknown_run_is_a_clear_error(backend: KubernetesBackend) -> None:
    with pytest.raises(UserError, match="no run 'nope' in namespace zh"):
        backend.status("nope")


def test_pipeline_submits_each_stage_after_the_last_succeeded(
        apiserver: FakeApiServer, operator: FakeOperator, backend: KubernetesBackend, store_uri: str) -> None:
    from zhllama.pipeline import run_pipeline

    operator.auto("Succeeded")
    spec = resolve_spec("pipeline", size="tiny", run_id="pipe", values={"store": store_uri, "report": False})
    result = run_pipeline(spec, backend)
    assert result.state == "Succeeded"
    assert stored(apiserver, "jobs") == ["pipe-eval-base", "pipe-eval-pretrain", "pipe-eval-sft", "pipe-merge",
                                          "pipe-prepare", "pipe-quantize", "pipe-tokenizer"]
    prepare = apiserver.objects[("jobs", NAMESPACE, "pipe-prepare")]  # an Indexed Job, walked to Complete
    assert prepare["spec"]["completionMode"] == "Indexed"
    assert (prepare["spec"]["completions"], prepare["status"]["completedIndexes"]) == (2, "0,1")
    assert stored(apiserver, "pytorchjobs") == ["pipe-pretrain", "pipe-sft"]
    # Submitting again attaches to the finished runs: nothing is created twice.
    assert run_pipeline(spec, backend).state == "Succeeded"
    assert stored(apiserver, "pytorchjobs") == ["pipe-pretrain", "pipe-sft"]
