"""prepare on Kubernetes: an Indexed Job of spec.workers pods (completions = parallelism), each pod one share by
its JOB_COMPLETION_INDEX out of ZHLLAMA_WORKERS; the API server holds it to the real Job rules; the run's status
counts the shares done, its log is index 0's, and a failed index is named."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import helm_python
import yaml
from click.testing import CliRunner
from kubernetes import client

from tests.k8s.apiserver import FakeApiServer
from tests.k8s.conftest import NAMESPACE, spec_for
from tests.k8s.operator import FakeOperator
from tests.k8s.schemas import validation_errors
from zhllama.backends.k8s_chart import chart_dir
from zhllama.backends.k8s_state import derive_status, parse_indexes
from zhllama.backends.kubernetes import KubernetesBackend
from zhllama.cli.main import cli
from zhllama.run import read_record
from zhllama.store import open_store

Obj = dict[str, Any]
INDEX = "batch.kubernetes.io/job-completion-index"


def ctl_here(*args: str) -> str:
    """The CLI in this process (click's runner), for commands that need no cluster."""
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def ctl(*args: str) -> str:
    """The real command in its own process, against the cluster of the `kubeconfig` fixture."""
    result = subprocess.run([sys.executable, "-m", "zhllama.cli.main", *args], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def documents(text: str) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def the_job(objects: list[Obj]) -> Obj:
    jobs = [obj for obj in objects if obj["kind"] in ("Job", "PyTorchJob", "TrainJob")]
    assert len(jobs) == 1, [obj["kind"] for obj in jobs]
    return jobs[0]


def test_ctl_submit_prepare_dry_run_prints_an_indexed_job_of_the_33b_presets_32_workers() -> None:
    objects = documents(ctl_here("submit", "prepare", "--size", "33b", "--store", "s3://b/p", "--dry-run"))
    job = the_job(objects)
    spec = job["spec"]
    assert (job["apiVersion"], spec["completionMode"]) == ("batch/v1", "Indexed")
    assert spec["completions"] == spec["parallelism"] == 32
    assert spec["backoffLimitPerIndex"] == 3 and "backoffLimit" not in spec
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"  # per-index retries count failed pods
    [container] = pod["containers"]
    assert container["command"] == ["python", "/app/jobs/prepare.py", "--spec", "/etc/zhllama/spec.json"]
    assert container["image"].startswith("ghcr.io/zhllama/zhllama-tools:")
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["ZHLLAMA_WORKERS"] == "32" and "JOB_COMPLETION_INDEX" not in env  # Kubernetes sets that one
    configmap = next(obj for obj in objects if obj["kind"] == "ConfigMap")
    assert configmap["metadata"]["annotations"]["zhllama.io/workload-kind"] == "Job"
    assert {f"{o['kind']}/{o['metadata']['name']}": validation_errors(o) for o in objects} == {
        f"{o['kind']}/{o['metadata']['name']}": [] for o in objects}


def test_set_workers_is_the_completions_and_ctl_values_with_helm_renders_the_same_objects() -> None:
    flags = ("prepare", "--size", "33b", "--run-id", "prep4", "--store", "s3://b/p", "--set", "workers=4")
    submitted = documents(ctl_here("submit", *flags, "-n", "ml", "--dry-run"))
    job = the_job(submitted)
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 4
    env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["ZHLLAMA_WORKERS"] == "4"
    values = helm_python.values_from_yaml(ctl_here("values", *flags))
    assert values["launch"] == {"distributed": False, "indexed": True, "completions": 4,
                                "entrypoint": "/app/jobs/prepare.py", "nodes": 1, "procsPerNode": 1}
    with helm_python.Chart.load(str(chart_dir())) as chart:
        manifests = chart.render(values, name="prep4", namespace="ml")
    assert "zhllama/templates/job.yaml" not in {n for n, text in manifests.items() if text.strip()}
    helm = [doc for name, text in sorted(manifests.items()) if not name.endswith("NOTES.txt")
            for doc in yaml.safe_load_all(text) if doc]
    assert helm == submitted


def _rendered_job(backend: KubernetesBackend, store_uri: str, run_id: str = "prep4") -> Obj:
    objects = backend.objects(spec_for("prepare", store_uri, run_id, sets=("workers=4",)))
    return copy.deepcopy(next(obj for _, obj in objects if obj["kind"] == "Job"))


def _without(obj: Obj, key: str) -> Obj:
    obj["spec"].pop(key)
    return obj


def _with(obj: Obj, path: str, value: Any) -> Obj:
    *parents, last = path.split(".")
    target = obj
    for part in parents:
        target = target[part]
    target[last] = value
    return obj


INVALID = {  # what a real API server refuses in an Indexed Job, and the words it says it in
    "completion-mode": (lambda job: _with(job, "spec.completionMode", "Indexd"), 'Unsupported value: "Indexd"'),
    "no-completions": (lambda job: _without(job, "completions"),
                       "spec.completions: Required value: when completion mode is Indexed"),
    "per-index-not-indexed": (lambda job: _with(job, "spec.completionMode", "NonIndexed"),
                              "spec.backoffLimitPerIndex: Invalid value: 3: requires indexed completion mode"),
    "unknown-field": (lambda job: _with(job, "spec.backoffLimitPerIdx", 3), "backoffLimitPerIdx"),
    "parallelism-cap": (lambda job: _with(job, "spec.parallelism", 100_001),
                        "spec.parallelism: must be less than or equal to 100000 when completion mode is Indexed"),
    "max-failed-indexes": (lambda job: _with(job, "spec.maxFailedIndexes", 5),
                           "spec.maxFailedIndexes: must be less than or equal to completions"),
    "restart-always": (lambda job: _with(job, "spec.template.spec.restartPolicy", "Always"),
                       "spec.template.spec.restartPolicy"),
    "hostname-too-long": (lambda job: _with(job, "metadata.name", "p" * 62),
                          "invalid DNS label: " + "p" * 62 + "-3"),
    "completions-type": (lambda job: _with(job, "spec.completions", "four"), "completions"),
}


def test_the_api_server_refuses_an_invalid_indexed_job_with_422_and_accepts_the_rendered_one(
        apiserver: FakeApiServer, backend: KubernetesBackend, store_uri: str) -> None:
    answers: dict[str, tuple[int, str]] = {}
    for case, (change, _) in INVALID.items():
        # Raw HTTP, as `kubectl create --validate=false` sends it: the typed client refuses some of these itself.
        request = urllib.request.Request(
            f"{apiserver.url}/apis/batch/v1/namespaces/{NAMESPACE}/jobs", method="POST",
            data=json.dumps(change(_rendered_job(backend, store_uri))).encode(),
            headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(request, timeout=10)
            answers[case] = (201, "created")
        except urllib.error.HTTPError as err:
            answers[case] = (err.code, json.loads(err.read())["message"])
    assert {case: code for case, (code, _) in answers.items()} == {case: 422 for case in INVALID}
    assert [case for case, (_, words) in INVALID.items() if words not in answers[case][1]] == []
    assert not any(resource == "jobs" for resource, _, _ in apiserver.objects)

    # As ctl creates it: the typed client, the rendered dict as the body (its stubs name the model class).
    create: Any = client.BatchV1Api(backend.api).create_namespaced_job
    create(NAMESPACE, _rendered_job(backend, store_uri))
    assert apiserver.objects[("jobs", NAMESPACE, "prep4")]["spec"]["completionMode"] == "Indexed"
    # A real API server allows this too: the controller never runs more pods than indexes are left.
    create(NAMESPACE, _with(_rendered_job(backend, store_uri, "prep4b"), "spec.parallelism", 9))


def test_ctl_submit_prepare_runs_the_indexed_job_to_succeeded_counting_shares(
        kubeconfig: Path, s3_env: str, apiserver: FakeApiServer, operator: FakeOperator,
        backend: KubernetesBackend) -> None:
    store = f"{s3_env}/prep-{id(apiserver)}"
    submitted = ctl("submit", "prepare", "--size", "33b", "--store", store, "--run-id", "prep33", "--set",
                    "workers=4", "-n", NAMESPACE)
    assert "prepare run prep33 (size 33b, 4 pod(s) x 0 GPU(s))" in submitted
    assert "prep33  prepare    Pending (Created" in submitted

    pods = operator.created("prep33")
    assert [name.split("-")[1] for name in pods] == ["0", "1", "2", "3"]
    for index, name in enumerate(pods):
        pod = apiserver.objects[("pods", NAMESPACE, name)]
        assert pod["metadata"]["labels"][INDEX] == pod["metadata"]["annotations"][INDEX] == str(index)
        assert pod["spec"]["hostname"] == f"prep33-{index}"
        env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
        assert env["ZHLLAMA_WORKERS"]["value"] == "4"
        assert env["JOB_COMPLETION_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == f"metadata.annotations['{INDEX}']"
    operator.running("prep33")
    for index in (1, 2, 3):
        operator.index_succeeded("prep33", index)
    operator.log("prep33", "worker 0: 3 files, 2 shards")
    shown = ctl("status", "prep33", "--store", store).splitlines()
    assert shown[0].split() == ["prep33", "prepare", "Running"]
    assert "  workers: 3/4 done" in shown and "  pods: 1 Running, 3 Succeeded" in shown
    assert list(backend.logs("prep33")) == ["worker 0: 3 files, 2 shards"]  # index 0's

    operator.index_succeeded("prep33", 0)
    assert backend.status("prep33").line() == "prep33  prepare    Succeeded"
    record = read_record(open_store(store), "prep33")
    assert record.state == "Succeeded"
    observed = backend.observe(record)
    assert observed is not None and observed.details["workers"] == "4/4 done"


def test_a_failed_index_is_retried_alone_and_the_run_fails_naming_it(
        operator: FakeOperator, backend: KubernetesBackend, store_uri: str) -> None:
    backend.cluster_values = {"run": {"backoffLimit": 1}}
    backend.submit(spec_for("prepare", store_uri, "prep4", sets=("workers=4",)))
    operator.created("prep4")
    operator.running("prep4")
    operator.index_succeeded("prep4", 0)
    retry = operator.index_failed("prep4", 2, exit_code=1, message="bad.jsonl:7: not JSON")
    assert retry is not None and retry.startswith("prep4-2-")  # a new pod for index 2; the others go on
    operator.running("prep4")
    status = backend.status("prep4")
    assert (status.state, status.details["workers"], status.details["failedPods"]) == ("Running", "1/4 done", "1")

    assert operator.index_failed("prep4", 2, exit_code=1, message="bad.jsonl:7: not JSON") is None
    assert backend.status("prep4").details["failedIndexes"] == "2"
    assert backend.status("prep4").state == "Running"  # indexes 1 and 3 still run
    operator.index_succeeded("prep4", 1)
    operator.index_succeeded("prep4", 3)
    status = backend.status("prep4")
    assert (status.state, status.reason) == ("Failed", "ExitCode")
    assert status.message.startswith(f"index 2 of 4 failed: pod {retry} container zhllama exited with code 1: "
                                     "bad.jsonl:7: not JSON (FailedIndexes: Job has failed indexes)")
    record = read_record(open_store(store_uri), "prep4")  # the first reader recorded why
    assert (record.state, record.reason) == ("Failed", "ExitCode") and "index 2 of 4 failed" in record.message


def test_logs_are_index_0s_newest_pod_and_previous_its_pod_before(
        operator: FakeOperator, backend: KubernetesBackend, store_uri: str) -> None:
    backend.submit(spec_for("prepare", store_uri, "prep2", sets=("workers=2",)))
    operator.created("prep2")
    operator.running("prep2")
    operator.log("prep2", "first try")
    operator.index_failed("prep2", 0, reason="OOMKilled", exit_code=137)
    operator.running("prep2")
    operator.log("prep2", "second try")
    assert list(backend.logs("prep2")) == ["second try"]
    assert list(backend.logs("prep2", previous=True)) == ["first try"]
    status = backend.status("prep2")
    assert status.state == "Running" and status.details["workers"] == "0/2 done"


def test_a_cluster_without_per_index_retries_still_gets_the_failed_index_named() -> None:
    """Before Kubernetes 1.29 the API server drops backoffLimitPerIndex: the Job fails on its backoffLimit, with no
    status.failedIndexes, and only the pods' annotations carry their index."""
    job = {"kind": "Job", "spec": {"completionMode": "Indexed", "completions": 8},
           "status": {"succeeded": 5, "completedIndexes": "0-2,4,7", "conditions": [
               {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                "message": "Job has reached the specified backoff limit"}]}}

    def pod(name: str, index: int, phase: str, code: int = 0) -> Obj:
        state = {"terminated": {"reason": "Error" if code else "Completed", "exitCode": code}}
        return {"metadata": {"name": name, "annotations": {INDEX: str(index)}}, "status": {
            "phase": phase, "containerStatuses": [{"name": "zhllama", "state": state}]}}

    pods = [pod("p-3-a", 3, "Failed", 2), pod("p-5-b", 5, "Failed", 1), pod("p-0-c", 0, "Succeeded")]
    status = derive_status("p", "prepare", {"metadata": {}}, job, pods, [])
    assert (status.state, status.reason, status.details["workers"]) == ("Failed", "ExitCode", "5/8 done")
    assert status.message == ("index 3 of 8 failed: pod p-3-a container zhllama exited with code 2 "
                              "(BackoffLimitExceeded: Job has reached the specified backoff limit); "
                              "index 5 failed too")
    assert parse_indexes("0-2,4,7") == [0, 1, 2, 4, 7] and parse_indexes("") == []
