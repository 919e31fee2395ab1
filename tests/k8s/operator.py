"""Plays the cluster's controllers on FakeApiServer: the training operator (PyTorchJob), Trainer v2 (TrainJob),
the Job controller and the kubelet. Tests call one step at a time (created, running, restarting, succeeded,
failed, ...) or `auto()` to walk every new job to an outcome. Every object it writes is validated by the
server against the real schemas, statuses included.

An Indexed Job gets one pod per completion index, as the Job controller makes them: named
`<job>-<index>-<suffix>`, the index in the batch.kubernetes.io/job-completion-index label and annotation and in
JOB_COMPLETION_INDEX, hostname `<job>-<index>`. `index_succeeded` / `index_failed` finish one share (a failure
within backoffLimitPerIndex gets a new pod for that index); the Job is Complete when every index succeeded, and
Failed (FailedIndexes) once an index used its retries and no pod is left running.
"""

from __future__ import annotations

import copy
import itertools
import threading
import time
from typing import Any

from tests.k8s.apiserver import FakeApiServer, timestamp

Obj = dict[str, Any]
WORKLOADS = ("pytorchjobs", "trainjobs", "jobs")
INDEX_KEY = "batch.kubernetes.io/job-completion-index"
FAILURE_COUNT_KEY = "batch.kubernetes.io/job-index-failure-count"
TERMINAL = ("Succeeded", "Failed")


def is_indexed(workload: Obj) -> bool:
    return workload["kind"] == "Job" and workload["spec"].get("completionMode") == "Indexed"


def index_of(pod: Obj) -> int:
    return int(pod["metadata"]["annotations"][INDEX_KEY])


def compressed(indexes: set[int]) -> str:
    """The Job status text form of indexes: "1,3-5,7"."""
    runs: list[list[int]] = []
    for index in sorted(indexes):
        if runs and index == runs[-1][-1] + 1:
            runs[-1].append(index)
        else:
            runs.append([index])
    return ",".join(str(r[0]) if len(r) == 1 else f"{r[0]},{r[1]}" if len(r) == 2 else f"{r[0]}-{r[-1]}"
                    for r in runs)


class FakeOperator:
    def __init__(self, api: FakeApiServer, namespace: str = "default") -> None:
        self.api, self.namespace = api, namespace
        self._stop = threading.Event()
        self._serial = itertools.count()  # Indexed Job pod name suffixes: an index's retry sorts after its pod

    # -- lookups --------------------------------------------------------------------------------------------

    def workload(self, name: str) -> tuple[str, Obj]:
        for resource in WORKLOADS:
            found = self.api.objects.get((resource, self.namespace, name))
            if found is not None:
                return resource, found
        raise KeyError(f"no job object {name}")

    def pods(self, name: str) -> list[Obj]:
        _, workload = self.workload(name)
        uid = workload["metadata"]["uid"]
        return [obj for (res, ns, _), obj in sorted(self.api.objects.items()) if res == "pods"
                and any(ref["uid"] == uid for ref in obj["metadata"].get("ownerReferences", []))]

    def master(self, name: str) -> Obj:
        """The pod whose log is the run's: the first, or in an Indexed Job index 0's newest."""
        _, workload = self.workload(name)
        if is_indexed(workload):
            return self.index_pods(name, 0)[-1]
        return self.pods(name)[0]

    def index_pods(self, name: str, index: int) -> list[Obj]:
        """An Indexed Job's pods of one completion index, oldest first."""
        return [pod for pod in self.pods(name) if index_of(pod) == index]

    # -- writing --------------------------------------------------------------------------------------------

    def _set_condition(self, name: str, kind: str, reason: str, message: str, *, off: tuple[str, ...] = ()) -> None:
        resource, _ = self.workload(name)

        def change(obj: Obj) -> Obj:
            status = obj.setdefault("status", {})
            conditions = [c for c in status.get("conditions", []) if c["type"] != kind]
            for condition in conditions:
                if condition["type"] in off:
                    condition["status"] = "False"
            conditions.append({"type": kind, "status": "True", "reason": reason, "message": message,
                               "lastTransitionTime": timestamp(), **({"lastUpdateTime": timestamp()}
                                                                     if resource == "pytorchjobs" else {})})
            status["conditions"] = conditions
            if kind in ("Succeeded", "Failed", "Complete") and resource != "trainjobs":
                status["completionTime"] = timestamp()
            if resource == "jobs":
                status["startTime"] = status.get("startTime") or timestamp()
            return obj

        self.api.update(resource, self.namespace, name, change)

    def _pod_status(self, pod: str, phase: str, state: Obj, **extra: Any) -> None:
        def change(obj: Obj) -> Obj:
            previous = (obj.get("status") or {}).get("containerStatuses") or [{}]
            container = obj["spec"]["containers"][0]
            status = {"name": container["name"], "image": container["image"], "imageID": "",
                      "ready": phase == "Running", "restartCount": previous[0].get("restartCount", 0),
                      "state": state, **({"lastState": previous[0]["lastState"]} if "lastState" in previous[0] else {})}
            status.update(extra)
            obj["status"] = {"phase": phase, "containerStatuses": [status],
                             "conditions": [{"type": "PodScheduled", "status": "True"}]}
            return obj

        self.api.update("pods", self.namespace, pod, change)

    # -- the steps ------------------------------------------------------------------------------------------

    def created(self, name: str) -> list[str]:
        """The controller saw the job: its pods exist (Pending), and Created is set. Returns the pod names."""
        resource, workload = self.workload(name)
        owner = {"apiVersion": workload["apiVersion"], "kind": workload["kind"], "name": name,
                 "uid": workload["metadata"]["uid"], "controller": True}
        pods: list[tuple[str, Obj, dict[str, str]]] = []
        if resource == "pytorchjobs":
            for replica_type, replica in workload["spec"]["pytorchReplicaSpecs"].items():
                for index in range(replica["replicas"]):
                    pods.append((f"{name}-{replica_type.lower()}-{index}", replica["template"],
                                 {"training.kubeflow.org/job-name": name,
                                  "training.kubeflow.org/replica-type": replica_type.lower(),
                                  "training.kubeflow.org/replica-index": str(index)}))
        elif resource == "jobs" and is_indexed(workload):
            return [self._index_pod(name, index) for index in range(workload["spec"]["completions"])]
        elif resource == "jobs":
            pods.append((f"{name}-{len(self.api.objects) % 100000:05d}", workload["spec"]["template"],
                         {"batch.kubernetes.io/job-name": name, "job-name": name}))
        else:
            trainer = workload["spec"]["trainer"]
            override = workload["spec"]["podSpecOverrides"][0]
            template = {"metadata": {"labels": dict(workload["spec"].get("labels", {}))},
                        "spec": {"restartPolicy": "OnFailure", "serviceAccountName": override["serviceAccountName"],
                                 "volumes": override["volumes"],
                                 "containers": [{"name": "node", "image": trainer["image"],
                                                 "command": trainer["command"], "env": trainer["env"],
                                                 "resources": trainer["resourcesPerNode"],
                                                 "volumeMounts": override["containers"][0]["volumeMounts"]}]}}
            for index in range(trainer["numNodes"]):
                pods.append((f"{name}-node-0-{index}", template,
                             {"jobset.sigs.k8s.io/jobset-name": name,
                              "batch.kubernetes.io/job-completion-index": str(index)}))
        for pod_name, template, labels in pods:
            self.api.create("pods", self.namespace, {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod_name, "labels": {**template["metadata"].get("labels", {}), **labels},
                             "ownerReferences": [owner]},
                "spec": copy.deepcopy(template["spec"]),
                "status": {"phase": "Pending"},
            })
        if resource != "jobs":
            self._set_condition(name, "Created", f"{workload['kind']}Created", f"{workload['kind']} {name} is created.")
        return [pod_name for pod_name, _, _ in pods]

    def _index_pod(self, name: str, index: int, failures: int = 0) -> str:
        """One pod of an Indexed Job, as the Job controller creates it; returns its name."""
        _, workload = self.workload(name)
        template = copy.deepcopy(workload["spec"]["template"])
        spec = template["spec"]
        spec["hostname"] = f"{name}-{index}"
        for container in spec["containers"]:
            container.setdefault("env", []).append({"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": {
                "fieldPath": f"metadata.annotations['{INDEX_KEY}']"}}})
        annotations = {**template["metadata"].get("annotations", {}), INDEX_KEY: str(index)}
        if workload["spec"].get("backoffLimitPerIndex") is not None:
            annotations[FAILURE_COUNT_KEY] = str(failures)
        pod_name = f"{name}-{index}-{next(self._serial):05d}"
        self.api.create("pods", self.namespace, {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod_name, "annotations": annotations,
                         "labels": {**template["metadata"].get("labels", {}), "batch.kubernetes.io/job-name": name,
                                    "job-name": name, INDEX_KEY: str(index)},
                         "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": name,
                                              "uid": workload["metadata"]["uid"], "controller": True}]},
            "spec": spec,
            "status": {"phase": "Pending"},
        })
        return pod_name

    def _index_status(self, name: str, failed_indexes: set[int]) -> None:
        """The Job's status from its pods, as the Job controller counts them."""
        pods = self.pods(name)
        done = {index_of(p) for p in pods if p["status"].get("phase") == "Succeeded"}
        status = {"active": sum(p["status"].get("phase") not in TERMINAL for p in pods),
                  "ready": sum(p["status"].get("phase") == "Running" for p in pods),
                  "succeeded": len(done), "completedIndexes": compressed(done),
                  "failed": sum(p["status"].get("phase") == "Failed" for p in pods)}
        if failed_indexes:
            status["failedIndexes"] = compressed(failed_indexes)

        def change(obj: Obj) -> Obj:
            current = obj.get("status") or {}
            obj["status"] = {**current, "startTime": current.get("startTime") or timestamp(), **status}
            return obj

        self.api.update("jobs", self.namespace, name, change)

    def _failed_indexes(self, name: str) -> set[int]:
        _, workload = self.workload(name)
        found: set[int] = set()
        for part in filter(None, ((workload.get("status") or {}).get("failedIndexes") or "").split(",")):
            first, _, last = part.partition("-")
            found.update(range(int(first), int(last or first) + 1))
        return found

    def _finish_indexed(self, name: str) -> None:
        """Complete once every index succeeded; Failed once an index failed and nothing is left running."""
        _, workload = self.workload(name)
        status = workload.get("status") or {}
        if status.get("succeeded") == workload["spec"]["completions"]:
            self._set_condition(name, "SuccessCriteriaMet", "CompletionsReached", "Reached expected number of "
                                "succeeded pods")
            self._set_condition(name, "Complete", "CompletionsReached", "Reached expected number of succeeded pods")
        elif status.get("failedIndexes") and not status.get("active"):
            self._set_condition(name, "FailureTarget", "FailedIndexes", "Job has failed indexes")
            self._set_condition(name, "Failed", "FailedIndexes", "Job has failed indexes")

    def index_succeeded(self, name: str, index: int) -> None:
        """One share is done: its pod exits 0 (the Job is Complete after the last)."""
        pod = self.index_pods(name, index)[-1]
        self._pod_status(pod["metadata"]["name"], "Succeeded", {"terminated": {
            "reason": "Completed", "exitCode": 0, "finishedAt": timestamp()}})
        self._index_status(name, self._failed_indexes(name))
        self._finish_indexed(name)

    def index_failed(self, name: str, index: int, reason: str = "Error", exit_code: int = 1,
                     message: str = "") -> str | None:
        """The pod of one index fails: within backoffLimitPerIndex the index gets a new pod (returned), past it
        the index is failed (the Job is Failed once no other pod is running)."""
        _, workload = self.workload(name)
        pod = self.index_pods(name, index)[-1]
        terminated = {"reason": reason, "exitCode": exit_code, "finishedAt": timestamp(),
                      **({"message": message} if message else {})}
        self._pod_status(pod["metadata"]["name"], "Failed", {"terminated": terminated})
        failures = int(pod["metadata"]["annotations"].get(FAILURE_COUNT_KEY, "0")) + 1
        failed_indexes = self._failed_indexes(name)
        retry = None
        if failures <= workload["spec"].get("backoffLimitPerIndex", 0):
            retry = self._index_pod(name, index, failures)
        else:
            failed_indexes.add(index)
        self._index_status(name, failed_indexes)
        self._finish_indexed(name)
        return retry

    def unschedulable(self, name: str, message: str) -> None:
        for pod in self.pods(name):
            self.api.update("pods", self.namespace, pod["metadata"]["name"], lambda obj: {**obj, "status": {
                "phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                                                    "reason": "Unschedulable", "message": message}]}})

    def image_pull_backoff(self, name: str) -> None:
        pod = self.master(name)
        image = pod["spec"]["containers"][0]["image"]
        self._pod_status(pod["metadata"]["name"], "Pending", {"waiting": {
            "reason": "ImagePullBackOff", "message": f'Back-off pulling image "{image}"'}})

    def event(self, name: str, reason: str, message: str) -> None:
        resource, workload = self.workload(name)
        self.api.create("events", self.namespace, {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{name}.{len(self.api.history)}"},
            "involvedObject": {"apiVersion": workload["apiVersion"], "kind": workload["kind"], "name": name,
                               "namespace": self.namespace, "uid": workload["metadata"]["uid"]},
            "reason": reason, "message": message, "type": "Warning", "count": 1,
            "firstTimestamp": timestamp(), "lastTimestamp": timestamp(),
            "source": {"component": f"{resource}-controller"},
        })

    def running(self, name: str) -> None:
        resource, workload = self.workload(name)
        for pod in self.pods(name):
            if is_indexed(workload) and pod.get("status", {}).get("phase") in TERMINAL:
                continue  # a finished share stays finished
            self._pod_status(pod["metadata"]["name"], "Running", {"running": {"startedAt": timestamp()}})
        if is_indexed(workload):
            self._index_status(name, self._failed_indexes(name))
        if resource == "pytorchjobs":
            self._set_condition(name, "Running", "PyTorchJobRunning", f"PyTorchJob {name} is running.",
                                off=("Restarting",))

    def log(self, name: str, *lines: str) -> None:
        pod = self.master(name)
        self.api.append_log(self.namespace, pod["metadata"]["name"], pod["spec"]["containers"][0]["name"], *lines)

    def restarting(self, name: str, reason: str = "OOMKilled", exit_code: int = 137) -> None:
        """The master container died and is restarted in place (restartPolicy OnFailure)."""
        pod = self.master(name)
        pod_name, container = pod["metadata"]["name"], pod["spec"]["containers"][0]["name"]
        restarts = ((pod.get("status") or {}).get("containerStatuses") or [{}])[0].get("restartCount", 0)
        self.api.rotate_log(self.namespace, pod_name, container)
        self._pod_status(pod_name, "Running", {"running": {"startedAt": timestamp()}}, restartCount=restarts + 1,
                         lastState={"terminated": {"reason": reason, "exitCode": exit_code,
                                                   "finishedAt": timestamp()}})
        if self.workload(name)[0] == "pytorchjobs":
            self._set_condition(name, "Restarting", "PyTorchJobRestarting",
                                f"PyTorchJob {name} is restarting because 1 Master replica(s) failed.",
                                off=("Running",))

    def succeeded(self, name: str) -> None:
        _, workload = self.workload(name)
        if is_indexed(workload):  # every share still to do succeeds
            for index in range(workload["spec"]["completions"]):
                if self.index_pods(name, index)[-1]["status"].get("phase") not in TERMINAL:
                    self.index_succeeded(name, index)
            return
        for pod in self.pods(name):
            self._pod_status(pod["metadata"]["name"], "Succeeded", {"terminated": {
                "reason": "Completed", "exitCode": 0, "finishedAt": timestamp()}})
        resource, workload = self.workload(name)
        if resource == "jobs":
            self.api.update("jobs", self.namespace, name, lambda obj: {**obj, "status": {"succeeded": 1}})
        kind = {"pytorchjobs": "Succeeded", "jobs": "Complete", "trainjobs": "Complete"}[resource]
        self._set_condition(name, kind, f"{workload['kind']}Succeeded", f"{workload['kind']} {name} succeeded.",
                            off=("Running",))

    def failed(self, name: str, reason: str = "OOMKilled", exit_code: int = 137, job_reason: str = "") -> None:
        """The master container died for good; the job is Failed (job_reason e.g. DeadlineExceeded). In an
        Indexed Job: index 0 fails past its retries and the other shares finish."""
        _, workload = self.workload(name)
        if is_indexed(workload) and not job_reason:
            while self.index_failed(name, 0, reason, exit_code) is not None:
                pass
            self.succeeded(name)
            return
        pod = self.master(name)
        self._pod_status(pod["metadata"]["name"], "Failed", {"terminated": {
            "reason": reason, "exitCode": exit_code, "finishedAt": timestamp()}})
        resource, workload = self.workload(name)
        if resource == "jobs":
            job_reason = job_reason or "BackoffLimitExceeded"
            message = {"BackoffLimitExceeded": "Job has reached the specified backoff limit",
                       "DeadlineExceeded": "Job was active longer than specified deadline"}[job_reason]
            self.api.update("jobs", self.namespace, name, lambda obj: {**obj, "status": {"failed": 1}})
        elif job_reason == "DeadlineExceeded":
            message = f"{workload['kind']} {name} has failed because it was active longer than specified deadline"
        else:
            message = f"{workload['kind']} {name} is failed because 1 Master replica(s) failed."
        self._set_condition(name, "Failed", job_reason or f"{workload['kind']}Failed", message, off=("Running",))

    # -- autopilot ------------------------------------------------------------------------------------------

    def auto(self, outcome: str = "Succeeded", step_seconds: float = 0.05) -> FakeOperator:
        """Walk every new job to `outcome` (Succeeded or Failed) in a background thread."""

        def loop() -> None:
            seen: set[str] = set()
            while not self._stop.is_set():
                names = [name for (res, ns, name) in list(self.api.objects) if res in WORKLOADS
                         and ns == self.namespace and name not in seen]
                for name in names:
                    seen.add(name)
                    self.created(name)
                    time.sleep(step_seconds)
                    self.running(name)
                    self.log(name, f"{name}: step 1/1 loss 1.23")
                    time.sleep(step_seconds)
                    (self.succeeded if outcome == "Succeeded" else self.failed)(name)
                time.sleep(step_seconds)

        threading.Thread(target=loop, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()
