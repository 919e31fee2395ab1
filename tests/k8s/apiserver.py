"""A Kubernetes API server for the tests: real HTTP on 127.0.0.1, the REST paths and JSON the kubernetes client
speaks, and the behaviour ctl depends on.

- objects are stored per (resource, namespace, name) with a cluster-wide resourceVersion;
- create validates against the real schemas (tests/k8s/schemas.py; 422 Invalid) and answers 409 on a name
  already taken; merge-patch and json-patch (a dict sent as json-patch is a 400, as on a real server);
- list with label / field selectors; watch from a resourceVersion with bookmarks; `expire_watches()` compacts
  history so open and later watches from an older version get 410 Gone;
- pod logs (current and previous container, follow streams until the container stops);
- deleting an object deletes what it owns (ownerReferences), like the garbage collector.

The operator's side (pods, conditions) is played by tests/k8s/operator.py through the same store.
"""

from __future__ import annotations

import datetime
import itertools
import json
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from tests.k8s.schemas import validation_errors

Obj = dict[str, Any]


@dataclass(frozen=True)
class Resource:
    api_version: str
    kind: str

    @property
    def prefix(self) -> str:
        return "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"


RESOURCES = {
    "configmaps": Resource("v1", "ConfigMap"),
    "serviceaccounts": Resource("v1", "ServiceAccount"),
    "pods": Resource("v1", "Pod"),
    "events": Resource("v1", "Event"),
    "jobs": Resource("batch/v1", "Job"),
    "roles": Resource("rbac.authorization.k8s.io/v1", "Role"),
    "rolebindings": Resource("rbac.authorization.k8s.io/v1", "RoleBinding"),
    "pytorchjobs": Resource("kubeflow.org/v1", "PyTorchJob"),
    "trainjobs": Resource("trainer.kubeflow.org/v1alpha1", "TrainJob"),
}


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def status(self) -> Obj:
        return {"apiVersion": "v1", "kind": "Status", "status": "Failure", "message": self.message,
                "reason": self.reason, "code": self.code, "metadata": {}}


def timestamp() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _matches(obj: Obj, labels: str | None, fields: str | None) -> bool:
    for term in filter(None, (labels or "").split(",")):
        key, _, value = term.partition("=")
        if (obj["metadata"].get("labels") or {}).get(key) != value:
            return False
    for term in filter(None, (fields or "").split(",")):
        path, _, value = term.partition("=")
        current: Any = obj
        for part in path.split("."):
            current = current.get(part) if isinstance(current, dict) else None
        if current != value:
            return False
    return True


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class FakeApiServer:
    def __init__(self, bookmark_seconds: float = 0.2) -> None:
        self.objects: dict[tuple[str, str, str], Obj] = {}
        self.history: list[tuple[int, str, str, str, Obj]] = []  # (rv, resource, namespace, type, object)
        self.version = itertools.count(1)
        self.resource_version = 0
        self.compacted = 0
        self.epoch = 0
        self.logs: dict[tuple[str, str, str], dict[str, list[str]]] = {}
        self.requests: list[tuple[str, str]] = []
        self.bookmark_seconds = bookmark_seconds
        self.lock = threading.Condition()
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._http.daemon_threads = True
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._http.server_address[1]}"

    def start(self) -> FakeApiServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        with self.lock:
            self.epoch += 1
            self.lock.notify_all()
        self._http.shutdown()
        self._http.server_close()

    # -- storage (the HTTP handler and the operator both go through these) ---------------------------------

    def _record(self, resource: str, namespace: str, event: str, obj: Obj) -> None:
        self.resource_version = next(self.version)
        obj["metadata"]["resourceVersion"] = str(self.resource_version)
        self.history.append((self.resource_version, resource, namespace, event, json.loads(json.dumps(obj))))
        self.lock.notify_all()

    def _checked(self, obj: Obj) -> Obj:
        errors = validation_errors(obj)
        if errors:
            raise ApiError(422, "Invalid", f"{obj.get('kind')} {obj['metadata'].get('name')!r} is invalid: "
                           + "; ".join(errors))
        return obj

    def create(self, resource: str, namespace: str, obj: Obj) -> Obj:
        with self.lock:
            meta = obj.setdefault("metadata", {})
            name = meta.get("name", "")
            if (resource, namespace, name) in self.objects:
                raise ApiError(409, "AlreadyExists", f'{resource} "{name}" already exists')
            meta.update(namespace=namespace, uid=str(uuid.uuid4()), creationTimestamp=timestamp(), generation=1)
            self.objects[(resource, namespace, name)] = self._checked(obj)
            self._record(resource, namespace, "ADDED", obj)
            return obj

    def get(self, resource: str, namespace: str, name: str) -> Obj:
        try:
            return self.objects[(resource, namespace, name)]
        except KeyError:
            raise ApiError(404, "NotFound", f'{resource} "{name}" not found') from None

    def update(self, resource: str, namespace: str, name: str, change: Any) -> Obj:
        """Apply `change` (a function of the stored object returning the new one) and record MODIFIED."""
        with self.lock:
            current = json.loads(json.dumps(self.get(resource, namespace, name)))
            updated = self._checked(change(current))
            self.objects[(resource, namespace, name)] = updated
            self._record(resource, namespace, "MODIFIED", updated)
            return updated

    def delete(self, resource: str, namespace: str, name: str) -> Obj:
        with self.lock:
            obj = self.get(resource, namespace, name)
            del self.objects[(resource, namespace, name)]
            self._record(resource, namespace, "DELETED", obj)
            owned = [key for key, child in self.objects.items()
                     if any(ref.get("uid") == obj["metadata"]["uid"]
                            for ref in child["metadata"].get("ownerReferences") or [])]
            for child_resource, child_namespace, child_name in owned:
                self.delete(child_resource, child_namespace, child_name)
            return obj

    def list(self, resource: str, namespace: str, labels: str | None = None, fields: str | None = None) -> Obj:
        with self.lock:
            items = [obj for (res, ns, _), obj in sorted(self.objects.items())
                     if res == resource and ns == namespace and _matches(obj, labels, fields)]
            kind = RESOURCES[resource]
            return {"apiVersion": kind.api_version, "kind": f"{kind.kind}List",
                    "metadata": {"resourceVersion": str(self.resource_version)}, "items": items}

    def expire_watches(self) -> None:
        """Compact history: watches from any version seen so far end with 410 Gone, as after etcd compaction."""
        with self.lock:
            self.compacted = self.resource_version
            self.history.clear()
            self.epoch += 1
            self.lock.notify_all()

    def watch_events(self, resource: str, namespace: str, since: int, labels: str | None, fields: str | None,
                     timeout: float, bookmarks: bool) -> Any:
        """Events after `since` as they happen; an ERROR 410 when the history they need is gone."""
        gone = {"type": "ERROR", "object": ApiError(410, "Expired", f"too old resource version: {since} "
                                                    f"({self.compacted})").status()}
        deadline = time.monotonic() + timeout
        with self.lock:
            if since < self.compacted:
                yield gone
                return
            epoch = self.epoch
        cursor, last_bookmark = since, time.monotonic()
        while time.monotonic() < deadline:
            with self.lock:
                if self.epoch != epoch:
                    gone["object"]["message"] = f"too old resource version: {cursor} ({self.compacted})"
                    yield gone
                    return
                pending = [(rv, event, obj) for rv, res, ns, event, obj in self.history
                           if rv > cursor and res == resource and ns == namespace and _matches(obj, labels, fields)]
                if not pending:
                    self.lock.wait(timeout=min(self.bookmark_seconds, max(0.0, deadline - time.monotonic())))
                current = self.resource_version
            for rv, event, obj in pending:
                cursor = rv
                yield {"type": event, "object": obj}
            if bookmarks and time.monotonic() - last_bookmark >= self.bookmark_seconds:
                kind = RESOURCES[resource]
                cursor = max(cursor, current)
                yield {"type": "BOOKMARK", "object": {"apiVersion": kind.api_version, "kind": kind.kind,
                                                      "metadata": {"resourceVersion": str(cursor)}}}
                last_bookmark = time.monotonic()

    # -- pod logs ------------------------------------------------------------------------------------------

    def append_log(self, namespace: str, pod: str, container: str, *lines: str) -> None:
        with self.lock:
            self.logs.setdefault((namespace, pod, container), {"current": [], "previous": []})["current"].extend(lines)
            self.lock.notify_all()

    def rotate_log(self, namespace: str, pod: str, container: str) -> None:
        """A container restart: its log becomes the previous one."""
        with self.lock:
            log = self.logs.setdefault((namespace, pod, container), {"current": [], "previous": []})
            log["previous"], log["current"] = log["current"], []

    def container_stopped(self, namespace: str, pod: str, container: str) -> bool:
        obj = self.objects.get(("pods", namespace, pod))
        if obj is None:
            return True
        for status in (obj.get("status") or {}).get("containerStatuses") or []:
            if status["name"] == container:
                return "terminated" in (status.get("state") or {})
        return False


class ApiHandler(BaseHTTPRequestHandler):
    """One request against `api`, the FakeApiServer a subclass binds (see `_handler`)."""

    api: FakeApiServer
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # Headers and body go out as separate writes: without this, Nagle + delayed ACK add 40 ms a request.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _route(self) -> tuple[str, str, str | None, str | None, dict[str, str]]:
        url = urlparse(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        parts = url.path.strip("/").split("/")
        base = 2 if parts[0] == "api" else 3
        if len(parts) < base + 3 or parts[base] != "namespaces":
            raise ApiError(404, "NotFound", f"no route for {url.path}")
        namespace, resource = parts[base + 1], parts[base + 2]
        if resource not in RESOURCES or not url.path.startswith(RESOURCES[resource].prefix + "/"):
            raise ApiError(404, "NotFound", f"the server could not find the requested resource {url.path}")
        name = parts[base + 3] if len(parts) > base + 3 else None
        sub = parts[base + 4] if len(parts) > base + 4 else None
        return resource, namespace, name, sub, query

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"null")

    def _send(self, code: int, payload: Any, content_type: str = "application/json") -> None:
        data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, chunks: Any, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for chunk in chunks:
                data = chunk.encode()
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True

    def _handle(self, method: str) -> None:
        self.api.requests.append((method, self.path))
        try:
            resource, namespace, name, sub, query = self._route()
            body = self._body() if method in ("POST", "PATCH", "PUT", "DELETE") else None
            if method == "GET" and sub == "log":
                return self._log(namespace, name or "", query)
            if method == "GET" and name is None and query.get("watch") in ("true", "1"):
                events = self.api.watch_events(
                    resource, namespace, int(query.get("resourceVersion") or 0), query.get("labelSelector"),
                    query.get("fieldSelector"), float(query.get("timeoutSeconds") or 30),
                    query.get("allowWatchBookmarks") == "true")
                return self._stream((json.dumps(e) + "\n" for e in events), "application/json")
            if method == "GET" and name is None:
                return self._send(200, self.api.list(resource, namespace, query.get("labelSelector"),
                                                   query.get("fieldSelector")))
            if method == "GET":
                return self._send(200, self.api.get(resource, namespace, name or ""))
            if method == "POST":
                return self._send(201, self.api.create(resource, namespace, body))
            if method == "PATCH":
                return self._send(200, self.api.update(resource, namespace, name or "", self._patcher(body)))
            if method == "DELETE":
                return self._send(200, self.api.delete(resource, namespace, name or ""))
            raise ApiError(405, "MethodNotAllowed", f"{method} is not supported here")
        except ApiError as err:
            self._send(err.code, err.status())

    def _patcher(self, body: Any) -> Any:
        content_type = self.headers.get("Content-Type", "")
        if content_type == "application/json-patch+json" and not isinstance(body, list):
            raise ApiError(400, "BadRequest", "json patch must be a list of operations")
        if content_type == "application/json-patch+json":
            raise ApiError(415, "UnsupportedMediaType", "this test server applies merge patches only")
        return lambda current: merge_patch(current, body)

    def _log(self, namespace: str, pod: str, query: dict[str, str]) -> None:
        self.api.get("pods", namespace, pod)
        container = query.get("container", "")
        log = self.api.logs.get((namespace, pod, container), {"current": [], "previous": []})
        if query.get("previous") == "true":
            if not log["previous"]:
                raise ApiError(400, "BadRequest",
                               f'previous terminated container "{container}" in pod "{pod}" not found')
            return self._send(200, "".join(line + "\n" for line in log["previous"]), "text/plain")
        if query.get("follow") != "true":
            return self._send(200, "".join(line + "\n" for line in log["current"]), "text/plain")

        def follow() -> Any:
            sent, deadline = 0, time.monotonic() + 30
            while time.monotonic() < deadline:
                with self.api.lock:
                    lines = self.api.logs.get((namespace, pod, container), {"current": []})["current"]
                    fresh, sent = lines[sent:], len(lines)
                    stopped = self.api.container_stopped(namespace, pod, container)
                    if not fresh and not stopped:
                        self.api.lock.wait(timeout=0.2)
                yield from (line + "\n" for line in fresh)
                if stopped and not fresh:
                    return

        self._stream(follow(), "text/plain")

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")



def _handler(server: FakeApiServer) -> type[BaseHTTPRequestHandler]:
    return type("Handler", (ApiHandler,), {"api": server})
