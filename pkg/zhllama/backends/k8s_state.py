"""What state a run on Kubernetes is in, and why: read from its job object, its pods and their events.

Pure functions over the API's JSON (dicts), so every rule here is testable without a cluster. The job's
conditions say where the run is; the pods and events say why it is stuck or why it failed, in the words a
person acts on: Unschedulable, ImagePullBackOff, QuotaExceeded, OOMKilled, exit code N, DeadlineExceeded,
BackoffLimitExceeded. An Indexed Job (prepare's workers) is a Job whose progress is its completed shares and whose
failure names the failed index.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from zhllama.run import RunState, RunStatus

Obj = dict[str, Any]

CANCELLED_ANNOTATION = "zhllama.io/cancelled"
KIND_ANNOTATION = "zhllama.io/workload-kind"
INDEX_KEY = "batch.kubernetes.io/job-completion-index"
"""The label and annotation Kubernetes puts on each pod of an Indexed Job: its completion index."""
WAITING_PROBLEMS = ("ImagePullBackOff", "ErrImagePull", "InvalidImageName", "CreateContainerConfigError",
                    "CreateContainerError", "CrashLoopBackOff")


@dataclass(frozen=True)
class WorkloadKind:
    """How ctl finds one kind of job object and its pods."""

    kind: str
    group: str
    version: str
    plural: str
    container: str
    """The training container's name, whose log `ctl logs` prints."""
    pod_selector: str
    """Label selector (with {run}) of the run's pods."""
    master_selector: str
    """Label selector (with {run}) of the pod whose log is the run's log."""


WORKLOAD_KINDS: dict[str, WorkloadKind] = {
    "PyTorchJob": WorkloadKind("PyTorchJob", "kubeflow.org", "v1", "pytorchjobs", "pytorch",
                               "zhllama.io/run-id={run}", "zhllama.io/run-id={run},zhllama.io/role=master"),
    "TrainJob": WorkloadKind("TrainJob", "trainer.kubeflow.org", "v1alpha1", "trainjobs", "node",
                             "jobset.sigs.k8s.io/jobset-name={run}",
                             "jobset.sigs.k8s.io/jobset-name={run},batch.kubernetes.io/job-completion-index=0"),
    "Job": WorkloadKind("Job", "batch", "v1", "jobs", "zhllama",
                        "zhllama.io/run-id={run}", "zhllama.io/run-id={run},zhllama.io/role=master"),
}


def is_indexed(workload: Obj | None) -> bool:
    """An Indexed Job: a batch/v1 Job with completionMode Indexed."""
    if not workload or workload.get("kind") != "Job":
        return False
    return (workload.get("spec") or {}).get("completionMode") == "Indexed"


def completion_index(pod: Obj) -> int | None:
    """A pod's completion index (label, or the annotation older clusters set alone); None outside an Indexed Job."""
    meta = pod.get("metadata") or {}
    value = (meta.get("labels") or {}).get(INDEX_KEY, (meta.get("annotations") or {}).get(INDEX_KEY))
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def parse_indexes(text: str | None) -> list[int]:
    """Job status completedIndexes/failedIndexes ("1,3-5,7") as a sorted list."""
    found: set[int] = set()
    for part in filter(None, (text or "").split(",")):
        first, _, last = part.partition("-")
        found.update(range(int(first), int(last or first) + 1))
    return sorted(found)


def log_pod_selector(kind: WorkloadKind, workload: Obj | None) -> str:
    """Label selector (with {run}) of the pods whose log is the run's log: index 0's in an Indexed Job (worker 0
    publishes the dataset), else the kind's master."""
    return f"{kind.pod_selector},{INDEX_KEY}=0" if is_indexed(workload) else kind.master_selector


def true_conditions(obj: Obj | None) -> dict[str, Obj]:
    conditions = ((obj or {}).get("status") or {}).get("conditions") or []
    return {c["type"]: c for c in conditions if c.get("status") == "True"}


def derive_status(run_id: str, stage: str, spec_configmap: Obj, workload: Obj | None,
                  pods: Sequence[Obj], events: Sequence[Obj]) -> RunStatus:
    """The run's state from its ConfigMap (always there), job object (None once deleted), pods and events."""
    annotations = spec_configmap.get("metadata", {}).get("annotations") or {}
    if CANCELLED_ANNOTATION in annotations:
        when = annotations[CANCELLED_ANNOTATION]
        return RunStatus(run_id, "Cancelled", "Cancelled", f"cancelled by ctl cancel at {when}", stage=stage)
    if workload is None:
        return RunStatus(run_id, "Unknown", "JobDeleted",
                         "the job object is gone (deleted, or expired after ttlSecondsAfterFinished); "
                         "the outcome is in the store's runs/<id>/status.json", stage=stage)
    details = _details(workload, pods)
    conditions = true_conditions(workload)

    def status(state: RunState, reason: str = "", message: str = "") -> RunStatus:
        return RunStatus(run_id, state, reason, message, stage=stage, details=details)

    if "Succeeded" in conditions or "Complete" in conditions:
        return status("Succeeded")
    if "Failed" in conditions:
        reason, message = (indexed_failure(conditions["Failed"], workload, pods) if is_indexed(workload)
                           else failure_reason(conditions["Failed"], pods))
        return status("Failed", reason, message)
    if "Suspended" in conditions:
        return status("Pending", "Queued", conditions["Suspended"].get("message") or "the job is suspended "
                      "(waiting for quota in its Kueue queue)")
    if "Restarting" in conditions:
        reason, message = last_termination(pods)
        return status("Restarting", reason or "Restarting", message or conditions["Restarting"].get("message", ""))
    stuck = pending_reason(pods, events)
    if stuck is not None:
        return status("Pending", *stuck)
    if "Running" in conditions or _all_running(pods) or (is_indexed(workload) and _some_share_started(pods)):
        return status("Running")
    return status("Pending", "Created", "the job exists; its pods are being created")


def _all_running(pods: Sequence[Obj]) -> bool:
    return bool(pods) and all(p.get("status", {}).get("phase") == "Running" for p in pods)


def _some_share_started(pods: Sequence[Obj]) -> bool:
    """An Indexed Job runs while any of its shares runs or is done (the others may still be starting)."""
    return any(p.get("status", {}).get("phase") in ("Running", "Succeeded") for p in pods)


def _details(workload: Obj, pods: Sequence[Obj]) -> dict[str, str]:
    details = {"kind": workload.get("kind", "")}
    status = workload.get("status") or {}
    for key in ("startTime", "completionTime"):
        if status.get(key):
            details[key] = str(status[key])
    if is_indexed(workload):
        completions = (workload.get("spec") or {}).get("completions") or 0
        done = len(parse_indexes(status.get("completedIndexes"))) or int(status.get("succeeded") or 0)
        details["workers"] = f"{done}/{completions} done"
        if status.get("failed"):  # its pods never restart in place: a retry is a new pod after a failed one
            details["failedPods"] = str(status["failed"])
        if status.get("failedIndexes"):
            details["failedIndexes"] = str(status["failedIndexes"])
    if pods:
        phases: dict[str, int] = {}
        for pod in pods:
            phase = pod.get("status", {}).get("phase", "Unknown")
            phases[phase] = phases.get(phase, 0) + 1
        details["pods"] = ", ".join(f"{n} {phase}" for phase, n in sorted(phases.items()))
        restarts = sum(c.get("restartCount", 0) for pod in pods for c in _containers(pod))
        if restarts:
            details["restarts"] = str(restarts)
    return details


def _containers(pod: Obj) -> list[Obj]:
    return list((pod.get("status") or {}).get("containerStatuses") or [])


def pending_reason(pods: Sequence[Obj], events: Sequence[Obj]) -> tuple[str, str] | None:
    """Why pods are not running yet, if something is in the way (not just slow)."""
    for pod in pods:
        for container in _containers(pod):
            waiting = (container.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in WAITING_PROBLEMS:
                return waiting["reason"], f"pod {pod['metadata']['name']}: {waiting.get('message', '')}".strip()
    for pod in pods:
        for condition in (pod.get("status") or {}).get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
                return condition.get("reason") or "Unschedulable", condition.get("message", "")
    for event in sorted(events, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "", reverse=True):
        message = event.get("message", "")
        if event.get("type") == "Warning" and "exceeded quota" in message:
            return "QuotaExceeded", message
        if event.get("type") == "Warning" and event.get("reason") in ("FailedCreate", "FailedCreatePod"):
            return event["reason"], message
    return None


def last_termination(pods: Sequence[Obj]) -> tuple[str, str]:
    """The most telling container termination among the pods: (reason, message)."""
    found: list[tuple[int, int, str, str]] = []
    for pod in pods:
        for container in _containers(pod):
            for age, state in enumerate((container.get("state") or {}, container.get("lastState") or {})):
                terminated = state.get("terminated")
                if not terminated or terminated.get("exitCode", 0) == 0:
                    continue
                reason = terminated.get("reason") or "Error"
                reason = "ExitCode" if reason == "Error" else reason  # "Error" says less than the code
                code = terminated.get("exitCode")
                message = f"pod {pod['metadata']['name']} container {container.get('name')} exited with code {code}"
                if reason == "OOMKilled":
                    message += ": out of memory; raise resources.memory or lower micro_batch_size"
                elif terminated.get("message"):
                    message += f": {terminated['message'].strip().splitlines()[-1]}"
                # The latest termination first; among those, an OOM kill explains more than the generic
                # errors of the pods that lost their peer.
                found.append((age, 0 if reason == "OOMKilled" else 1, reason, message))
    if not found:
        return "", ""
    _, _, reason, message = min(found)
    return reason, message


def failure_reason(condition: Obj, pods: Sequence[Obj]) -> tuple[str, str]:
    """(reason, message) for a Failed run: the deadline or backoff limit, and what the containers died of."""
    text = condition.get("message", "")
    reason = condition.get("reason", "") or "Failed"
    lowered = text.lower()
    if reason == "DeadlineExceeded" or "deadline" in lowered:
        reason = "DeadlineExceeded"
    elif reason == "BackoffLimitExceeded" or "backoff limit" in lowered:
        reason = "BackoffLimitExceeded"
    container_reason, container_message = last_termination(pods)
    if container_reason and reason not in ("DeadlineExceeded",):
        # The containers' cause (OOMKilled, exit code) is what the user fixes; the job's reason is context.
        return container_reason, f"{container_message} ({reason}: {text})" if text else container_message
    return reason, text or container_message


def indexed_failure(condition: Obj, workload: Obj, pods: Sequence[Obj]) -> tuple[str, str]:
    """(reason, message) for a Failed Indexed Job, naming the failed index and what its pods died of.

    The failed indexes are the Job's status.failedIndexes (per-index retries used up), else the indexes of its
    failed pods (a cluster that applied the Job's backoffLimit instead)."""
    status = workload.get("status") or {}
    failed = parse_indexes(status.get("failedIndexes")) or sorted(
        {i for p in pods if (i := completion_index(p)) is not None and p.get("status", {}).get("phase") == "Failed"})
    if not failed:
        return failure_reason(condition, pods)
    first = failed[0]
    attempts = [p for p in pods if completion_index(p) == first]  # oldest first: its last retry says most
    reason, message = failure_reason(condition, attempts[-1:] if last_termination(attempts[-1:])[0] else attempts)
    completions = (workload.get("spec") or {}).get("completions")
    rest = failed[1:]
    others = f"; index{'es' if len(rest) > 1 else ''} {','.join(map(str, rest))} failed too" if rest else ""
    return reason, f"index {first} of {completions} failed: {message}{others}"
