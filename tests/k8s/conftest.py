"""Fixtures for the Kubernetes tests: the chart rendered through Helm's Go SDK, and a real-HTTP API server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from tests.k8s.apiserver import FakeApiServer
from tests.k8s.operator import FakeOperator
from zhllama.backends.kubernetes import KubernetesBackend
from zhllama.spec import StageSpec, resolve_spec

NAMESPACE = "zh"


@pytest.fixture
def apiserver() -> Iterator[FakeApiServer]:
    server = FakeApiServer().start()
    yield server
    server.stop()


@pytest.fixture
def kubeconfig(apiserver: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A kubeconfig whose current context is the in-test API server, as `kubectl config` would write it (for
    `ctl` run in its own process: the kubernetes client reads KUBECONFIG when it is imported)."""
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": apiserver.url}}],
        "users": [{"name": "test", "user": {"token": "test-token"}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test", "namespace": NAMESPACE}}],
    }))
    monkeypatch.setenv("KUBECONFIG", str(path))
    return path


@pytest.fixture
def operator(apiserver: FakeApiServer) -> Iterator[FakeOperator]:
    playing = FakeOperator(apiserver, NAMESPACE)
    yield playing
    playing.stop()


def make_backend(apiserver: FakeApiServer, job_kind: str = "pytorchjob") -> KubernetesBackend:
    configuration = client.Configuration()
    configuration.host = apiserver.url
    return KubernetesBackend(namespace=NAMESPACE, job_kind=job_kind, api_client=client.ApiClient(configuration),
                             watch_timeout_seconds=2)


@pytest.fixture
def backend(apiserver: FakeApiServer) -> KubernetesBackend:
    return make_backend(apiserver)


@pytest.fixture
def store_uri(tmp_path: Path) -> str:
    return f"file://{tmp_path / 'store'}"


def spec_for(stage: str, store_uri: str, run_id: str, size: str = "33b", sets: tuple[str, ...] = ()) -> StageSpec:
    return resolve_spec(stage, size=size, run_id=run_id, values={"store": store_uri}, sets=list(sets))
