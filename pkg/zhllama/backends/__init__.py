"""Where runs execute: this machine (backends.local) or Kubernetes (backends.kubernetes), one Backend interface.

May import: zhllama.run, zhllama.spec, zhllama.store, zhllama.errors; the kubernetes client and Helm SDK only in
backends.kubernetes / backends.k8s_chart. Must not import: cli, pipeline, or any stage package.
"""

from __future__ import annotations

from zhllama.backends.base import Backend
from zhllama.run import RunRecord, RunStatus, list_records, read_record
from zhllama.store import open_store


def backend_for(record: RunRecord, store_uri: str, namespace: str | None = None) -> Backend:
    """The backend a run was started with, as its record says."""
    if record.backend == "kubernetes":
        from zhllama.backends.kubernetes import KubernetesBackend  # the kubernetes client only when needed

        return KubernetesBackend(namespace=namespace or record.namespace, store_uri=store_uri)
    from zhllama.backends.local import LocalBackend

    return LocalBackend(store_uri)


def backend_of_run(run_id: str, store_uri: str, namespace: str | None = None) -> Backend:
    return backend_for(read_record(open_store(store_uri), run_id), store_uri, namespace)


def list_runs(store_uri: str, namespace: str | None = None) -> list[RunStatus]:
    """Every run in the store, each reconciled through its own backend: what `ctl ls` shows."""
    return [
        backend_for(record, store_uri, namespace).status(record.run_id)
        for record in list_records(open_store(store_uri))
    ]


__all__ = ["Backend", "backend_for", "backend_of_run", "list_runs"]
