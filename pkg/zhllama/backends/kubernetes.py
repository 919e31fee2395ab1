"""Run stages on a Kubernetes cluster: the objects come from charts/zhllama, created with the kubernetes client.

A run is its rendered objects, all named after the run id: a ConfigMap `<run>-spec` holding the spec (and its
digest, which makes submit idempotent), a ServiceAccount + Role + RoleBinding, and the job object (PyTorchJob,
TrainJob or Job; an Indexed Job for prepare). The ConfigMap outlives a cancel so `ctl status` can still say
Cancelled.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from zhllama.backends.k8s_chart import chart_values, load_values_file, render, render_notes, to_yaml
from zhllama.backends.k8s_state import (
    CANCELLED_ANNOTATION,
    KIND_ANNOTATION,
    WAITING_PROBLEMS,
    WORKLOAD_KINDS,
    WorkloadKind,
    derive_status,
    is_indexed,
    log_pod_selector,
)
from zhllama.errors import UserError
from zhllama.run import RunRecord, RunStatus, attached, now, open_run, read_record, reconcile, transition
from zhllama.spec import StageSpec
from zhllama.spec.presets import deep_merge
from zhllama.store import ArtifactStore, open_store

Obj = dict[str, Any]
DIGEST_ANNOTATION = "zhllama.io/spec-sha256"
GONE = 410
GONE_VERSION = "gone"
"""What `_changes` yields when the watched resourceVersion was compacted away."""


class KubernetesBackend:
    def __init__(
        self,
        namespace: str | None = None,
        job_kind: str = "pytorchjob",
        values_files: Sequence[str | Path] = (),
        *,
        api_client: client.ApiClient | None = None,
        watch_timeout_seconds: int = 10,
        store_uri: str | None = None,
    ) -> None:
        """`values_files`: chart values for cluster settings; `api_client`: a configured client (default:
        the kubeconfig's current context, or the in-cluster service account)."""
        self._namespace = namespace
        self.job_kind = job_kind
        self.cluster_values: Obj = {}
        for path in values_files:
            self.cluster_values = deep_merge(self.cluster_values, load_values_file(Path(path)))
        self._api_client = api_client
        self.watch_timeout_seconds = watch_timeout_seconds
        self.store_uri = store_uri

    # -- connection ---------------------------------------------------------------------------------------

    @cached_property
    def api(self) -> client.ApiClient:
        if self._api_client is not None:
            return self._api_client
        try:
            config.load_kube_config()
        except config.ConfigException:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                raise UserError("no Kubernetes cluster configured: set KUBECONFIG or run `kubectl config "
                                "use-context`") from None
        return client.ApiClient()

    @cached_property
    def namespace(self) -> str:
        if self._namespace:
            return self._namespace
        try:
            _, context = config.list_kube_config_contexts()
            return str(context.get("context", {}).get("namespace") or "default")
        except config.ConfigException:
            return "default"

    @cached_property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    # -- submit -------------------------------------------------------------------------------------------

    def objects(self, spec: StageSpec) -> list[tuple[str, Obj]]:
        """The run's objects rendered from the chart, which carries `spec` into its ConfigMap unchanged."""
        values = chart_values(spec, {**self.cluster_values, "backend": self.job_kind})
        return render(values, release=spec.run_id, namespace=self.namespace)

    def render(self, spec: StageSpec) -> str:
        """`--dry-run`: the manifests, as `helm template` prints them."""
        return to_yaml(self.objects(spec))

    def submit(self, spec: StageSpec, *, force: bool = False, verify: bool = False) -> RunStatus:
        """Create the run's objects; the same spec again attaches, a different one needs `force`.

        A finished run that did not succeed (failed, cancelled) is started again as its next attempt: its old
        objects go first, since the operator would not rerun a finished job (training resumes from checkpoints).
        """
        objects = [obj for _, obj in self.objects(spec)]
        store = open_store(spec.store)
        digest = _configmap(objects)["metadata"]["annotations"][DIGEST_ANNOTATION]
        existing = self._get_configmap(spec.run_id)
        if existing is not None:
            same = (existing["metadata"].get("annotations") or {}).get(DIGEST_ANNOTATION) == digest
            if not same and not force:
                raise UserError(
                    f"run {spec.run_id} already exists in namespace {self.namespace} with a different spec; "
                    "pass --force to replace it, or choose another --run-id"
                )
            current = attached(store, spec, self.status, verify_full=verify) if same else None
            if current is not None:
                return current
            self._delete_objects(spec.run_id)
        _, mine = open_run(store, spec, backend="kubernetes", force=force, namespace=self.namespace)
        if mine:  # else another submit of this spec created the attempt an instant ago, and its objects
            for obj in objects:
                self._create(obj)
        return self.status(spec.run_id)

    def notes(self, spec: StageSpec) -> str:
        """The chart's NOTES.txt for the run: the commands that follow it."""
        return render_notes(chart_values(spec, {**self.cluster_values, "backend": self.job_kind}),
                            release=spec.run_id, namespace=self.namespace)

    def _annotate(self, run_id: str, annotations: dict[str, str | None]) -> None:
        """Merge-patch the spec ConfigMap's annotations (None removes one)."""
        self.core.patch_namespaced_config_map(f"{run_id}-spec", self.namespace,
                                              {"metadata": {"annotations": annotations}},
                                              _content_type="application/merge-patch+json")

    def _create(self, obj: Obj) -> None:
        try:
            self._creator(obj)(obj)
        except ApiException as err:
            if err.status != 409:  # 409: already there from an earlier submit of this same spec
                raise UserError(f"creating {obj['kind']} {obj['metadata']['name']}: {_api_message(err)}") from None

    def _creator(self, obj: Obj) -> Callable[[Obj], Any]:
        ns, kind = self.namespace, obj["kind"]
        if kind in WORKLOAD_KINDS and kind != "Job":
            w = WORKLOAD_KINDS[kind]
            return lambda body: client.CustomObjectsApi(self.api).create_namespaced_custom_object(
                w.group, w.version, ns, w.plural, body)
        rbac, batch = client.RbacAuthorizationV1Api(self.api), client.BatchV1Api(self.api)
        # The typed APIs take the rendered dicts as they are (Any: their stubs name the model classes).
        creators: dict[str, Callable[[Any], Any]] = {
            "ConfigMap": lambda body: self.core.create_namespaced_config_map(ns, body),
            "ServiceAccount": lambda body: self.core.create_namespaced_service_account(ns, body),
            "Role": lambda body: rbac.create_namespaced_role(ns, body),
            "RoleBinding": lambda body: rbac.create_namespaced_role_binding(ns, body),
            "Job": lambda body: batch.create_namespaced_job(ns, body),
        }
        if kind not in creators:
            raise UserError(f"the chart rendered a {kind}, which ctl does not know how to create")
        return creators[kind]

    def _delete_objects(self, run_id: str, timeout_seconds: float = 120) -> None:
        """Delete the run's objects and wait until they are gone, so their names can be reused."""
        kind = self._kind(run_id)
        self._delete_workload(run_id, kind)
        self.core.delete_namespaced_config_map(f"{run_id}-spec", self.namespace)
        deadline = time.monotonic() + timeout_seconds
        while self._get_workload(run_id, kind) is not None:
            if time.monotonic() > deadline:
                raise UserError(f"{kind.kind} {run_id} is still being deleted; try again in a minute")
            time.sleep(0.5)

    # -- reading a run ------------------------------------------------------------------------------------

    def _get_configmap(self, run_id: str) -> Obj | None:
        try:
            found = self.core.read_namespaced_config_map(f"{run_id}-spec", self.namespace)
        except ApiException as err:
            if err.status == 404:
                return None
            raise
        return _as_dict(self.api, found)

    def _configmap_or_fail(self, run_id: str) -> Obj:
        found = self._get_configmap(run_id)
        if found is None:
            raise UserError(f"no run {run_id!r} in namespace {self.namespace} (no ConfigMap {run_id}-spec); "
                            "`ctl status` lists the runs")
        return found

    def _kind(self, run_id: str, configmap: Obj | None = None) -> WorkloadKind:
        annotations = (configmap or self._configmap_or_fail(run_id))["metadata"].get("annotations") or {}
        return WORKLOAD_KINDS[annotations.get(KIND_ANNOTATION, "Job")]

    def _list_workloads(self, kind: WorkloadKind, run_id: str, **kwargs: Any) -> Any:
        selector = f"metadata.name={run_id}"
        if kind.kind == "Job":
            return client.BatchV1Api(self.api).list_namespaced_job(self.namespace, field_selector=selector, **kwargs)
        return client.CustomObjectsApi(self.api).list_namespaced_custom_object(
            kind.group, kind.version, self.namespace, kind.plural, field_selector=selector, **kwargs)

    def _get_workload(self, run_id: str, kind: WorkloadKind) -> Obj | None:
        items = _as_dict(self.api, self._list_workloads(kind, run_id)).get("items") or []
        return items[0] if items else None

    def _delete_workload(self, run_id: str, kind: WorkloadKind) -> None:
        options = client.V1DeleteOptions(propagation_policy="Background")
        try:
            if kind.kind == "Job":
                client.BatchV1Api(self.api).delete_namespaced_job(run_id, self.namespace, body=options)
            else:
                client.CustomObjectsApi(self.api).delete_namespaced_custom_object(
                    kind.group, kind.version, self.namespace, kind.plural, run_id, body=options)
        except ApiException as err:
            if err.status != 404:
                raise

    def _pods(self, selector: str) -> list[Obj]:
        pods = _as_dict(self.api, self.core.list_namespaced_pod(self.namespace, label_selector=selector))
        return sorted(pods.get("items") or [], key=lambda p: p["metadata"].get("creationTimestamp") or "")

    def observe(self, record: RunRecord) -> RunStatus | None:
        """The run's state from its job object, pods and events; None when it has no objects here."""
        run_id = record.run_id
        configmap = self._get_configmap(run_id)
        if configmap is None:
            return None
        kind = self._kind(run_id, configmap)
        workload = self._get_workload(run_id, kind)
        pods = self._pods(kind.pod_selector.format(run=run_id)) if workload is not None else []
        events = _as_dict(self.api, self.core.list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.name={run_id}")).get("items") or []
        stage = configmap["metadata"].get("labels", {}).get("zhllama.io/stage", "")
        return derive_status(run_id, stage, configmap, workload, pods, events)

    def _run_store(self, run_id: str) -> ArtifactStore:
        """The store the run records itself in: the one it was asked about, else its spec's."""
        if self.store_uri is not None:
            return open_store(self.store_uri)
        spec = json.loads(self._configmap_or_fail(run_id)["data"]["spec.json"])
        return open_store(spec["store"])

    def status(self, run_id: str) -> RunStatus:
        store = self._run_store(run_id)
        record = read_record(store, run_id)
        return reconcile(store, record, self.observe(record))

    def list_runs(self) -> list[RunStatus]:
        """Every zhllama run in the namespace (one per spec ConfigMap)."""
        configmaps = _as_dict(self.api, self.core.list_namespaced_config_map(
            self.namespace, label_selector="app.kubernetes.io/name=zhllama")).get("items") or []
        return [self.status(cm["metadata"]["labels"]["zhllama.io/run-id"]) for cm in configmaps]

    def watch(self, run_id: str) -> Iterator[RunStatus]:
        """Each new state of the run until it finishes.

        Lists the job object, then watches it from that resourceVersion (with bookmarks, so a quiet watch
        still advances); a 410 Gone (the version was compacted away) lists again. A watch ends every
        watch_timeout_seconds so that changes seen only on pods (an image pull failing) show up too.
        """
        kind = self._kind(run_id)
        last: RunStatus | None = None
        version: str | None = None
        while True:
            if version is None:
                version = _as_dict(self.api, self._list_workloads(kind, run_id))["metadata"]["resourceVersion"]
            for change in self._changes(run_id, kind, version):
                if isinstance(change, str):
                    version = None if change == GONE_VERSION else change
                    continue
                if change != last:
                    yield change
                    last = change
                if change.finished:
                    return

    def _changes(self, run_id: str, kind: WorkloadKind, version: str) -> Iterator[RunStatus | str]:
        """The run's status now, then after each event of one watch; the newer resourceVersions as strings."""
        yield self.status(run_id)
        try:
            for event in watch.Watch().stream(
                lambda **kw: self._list_workloads(kind, run_id, **kw), resource_version=version,
                allow_watch_bookmarks=True, timeout_seconds=self.watch_timeout_seconds,
            ):
                yield event["raw_object"]["metadata"]["resourceVersion"]
                if event["type"] != "BOOKMARK":
                    yield self.status(run_id)
        except ApiException as err:
            if err.status != GONE:
                raise
            yield GONE_VERSION  # too old: list again and watch from the fresh version

    def wait(self, run_id: str) -> RunStatus:
        """Block until the run finishes (watching, not polling)."""
        final = self.status(run_id)
        for final in self.watch(run_id):  # noqa: B007 (the last state seen is the answer)
            pass
        return final

    # -- logs and cancel ----------------------------------------------------------------------------------

    def logs(self, run_id: str, *, follow: bool = False, previous: bool = False) -> Iterator[str]:
        """The master pod's log (its previous container's with `previous`, after a restart).

        In an Indexed Job the log is index 0's newest pod; `previous` is that index's pod before it (its pods
        never restart in place: each retry is a new pod)."""
        kind = self._kind(run_id)
        workload = self._get_workload(run_id, kind)
        selector = log_pod_selector(kind, workload).format(run=run_id)
        if previous and is_indexed(workload):
            earlier = self._pods(selector)[:-1]
            if not earlier:
                raise UserError(f"run {run_id}: index 0 has had one pod only; no previous attempt to show")
            yield from self._read_log(earlier[-1]["metadata"]["name"], kind.container, previous=False)
            return
        pod = self._master_pod(run_id, selector, wait=follow and not previous)
        name = pod["metadata"]["name"]
        if follow and not previous:
            yield from watch.Watch().stream(self.core.read_namespaced_pod_log, name=name, namespace=self.namespace,
                                            container=kind.container)
            return
        yield from self._read_log(name, kind.container, previous=previous)

    def _read_log(self, pod: str, container: str, *, previous: bool) -> Iterator[str]:
        try:
            text = self.core.read_namespaced_pod_log(pod, self.namespace, container=container, previous=previous)
        except ApiException as err:
            raise UserError(f"logs of pod {pod}: {_api_message(err)}") from None
        yield from str(text).splitlines()

    def _master_pod(self, run_id: str, selector: str, *, wait: bool) -> Obj:
        while True:
            pods = self._pods(selector)
            if pods:
                pod = pods[-1]  # the newest: a Job retried with restartPolicy Never has several
                states = [c.get("state") or {} for c in (pod.get("status") or {}).get("containerStatuses") or []]
                waiting = [s["waiting"].get("reason") for s in states if "waiting" in s]
                if any(reason in WAITING_PROBLEMS for reason in waiting):
                    raise UserError(f"pod {pod['metadata']['name']} cannot start: {waiting[0]}; "
                                    f"see `ctl status {run_id}`")
                if not wait or (states and not waiting):
                    return pod
            elif not wait:
                raise UserError(f"run {run_id} has no pod yet: {self.status(run_id).line()}")
            if self.status(run_id).finished and not pods:
                raise UserError(f"run {run_id} finished and its pods are gone (cleanPodPolicy / ttl)")
            time.sleep(1.0)

    def cancel(self, run_id: str) -> RunStatus:
        """Stop the run: record the cancel, delete its job object (and so its pods), mark the ConfigMap."""
        current = self.status(run_id)
        if current.finished:
            return current
        configmap = self._configmap_or_fail(run_id)
        transition(self._run_store(run_id), run_id, "Cancelled", by="cancel", reason="Cancelled",
                   message="stopped by ctl cancel")
        self._annotate(run_id, {CANCELLED_ANNOTATION: now()})
        self._delete_workload(run_id, self._kind(run_id, configmap))
        return self.status(run_id)


def _configmap(objects: Sequence[Obj]) -> Obj:
    return next(o for o in objects if o["kind"] == "ConfigMap")


def _as_dict(api: client.ApiClient, value: Any) -> Obj:
    """API answers as plain JSON dicts (typed APIs return models, custom objects dicts already)."""
    return value if isinstance(value, dict) else api.sanitize_for_serialization(value)


def _api_message(err: ApiException) -> str:
    try:
        return str(json.loads(err.body or "").get("message") or err.reason)
    except (TypeError, ValueError):
        return f"{err.status} {err.reason}"
