"""A PyTorchJob's pods on loopback, against a real S3 server that counts each pod's requests itself.

What a cluster does, reproduced on one machine:
- The container command line and environment are the chart's (charts/zhllama, rendered through
  zhllama.backends.k8s_chart), plus the variables the Kubeflow training operator sets on a PyTorchJob pod
  (pkg/controller.v1/pytorch/envvar.go and master.go of kubeflow/training-operator v1.9): PET_NNODES,
  PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_ADDR, PET_MASTER_PORT, MASTER_ADDR, MASTER_PORT, WORLD_SIZE,
  RANK, PYTHONUNBUFFERED. `$(VAR)` references in the command are expanded as the kubelet does.
- Each pod has its own disk: /scratch (the chart's ZHLLAMA_WORKDIR, HOME, ZHLLAMA_CACHE), /etc/zhllama (the
  ConfigMap's spec.json) and /tmp map to the pod's own directory; a restarted pod gets fresh, empty ones.
- Each pod talks to its own `rclone serve s3 -vv` endpoint (AWS_ENDPOINT_URL), all of them over the same root
  directory, so one bucket is shared and every pod's GET/HEAD/PUT requests are in its own server's log. The
  counts come from those logs, never from the project's own counters. `--dir-cache-time 1ms` keeps the servers
  consistent with each other (their directory caches would otherwise hide what another server just wrote).

The fault scenario over these pods is in scenario.py (its checks in pod_checks.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from tests.e2e.s3_servers import BUCKET, S3_KEY, S3_SECRET, S3Server, Traffic, aws_env, free_port

SECRET_NAME = "zhllama-s3"
"""The Secret the rendered pods read their S3 credentials from (resolved here, as the kubelet would)."""
NAMESPACE = "zhllama-e2e"

OperatorEnv = Callable[["RenderedJob", "PodSlot", int], dict[str, str]]


def code_root() -> Path:
    """The checkout whose zhllama this process imports: its jobs/ and charts/ go with that code."""
    import zhllama

    return Path(zhllama.__file__).resolve().parents[2]


# --- the rendered job ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PodSlot:
    role: str
    """Master or Worker, the PyTorchJob replica type."""
    index: int
    """The replica's index within its type."""

    @property
    def rank(self) -> int:
        """The pod's replica rank, as the operator computes it (workers come after the master)."""
        return self.index + (1 if self.role == "Worker" else 0)

    @property
    def name(self) -> str:
        return f"{self.role.lower()}-{self.index}"


@dataclass
class RenderedJob:
    """What the chart rendered for one run: the ConfigMap's spec.json and the PyTorchJob's pod templates."""

    run_id: str
    spec_json: str
    nproc_per_node: str
    replicas: dict[str, int]
    containers: dict[str, dict[str, Any]]
    """Replica type -> the pod template's container (command, env, workingDir)."""
    secrets: dict[str, dict[str, str]]

    @property
    def slots(self) -> list[PodSlot]:
        return [PodSlot(role, index) for role in ("Master", "Worker") for index in range(self.replicas.get(role, 0))]


def render_job(spec: Any, endpoint: str) -> RenderedJob:
    """Render charts/zhllama for `spec` (a TrainSpec) as `ctl submit` does, with an S3 endpoint and Secret."""
    from zhllama.backends.k8s_chart import chart_values, render

    cluster = {"s3": {"endpoint": endpoint, "region": "us-east-1", "credentialsSecret": {"name": SECRET_NAME}}}
    objects = render(chart_values(spec, cluster), release=spec.run_id, namespace=NAMESPACE)
    config = next(o for _, o in objects if o["kind"] == "ConfigMap" and "spec.json" in o.get("data", {}))
    job = next(o for _, o in objects if o["kind"] == "PyTorchJob")
    replicas = job["spec"]["pytorchReplicaSpecs"]
    return RenderedJob(
        run_id=spec.run_id,
        spec_json=config["data"]["spec.json"],
        nproc_per_node=str(job["spec"]["nprocPerNode"]),
        replicas={role: int(r["replicas"]) for role, r in replicas.items()},
        containers={role: r["template"]["spec"]["containers"][0] for role, r in replicas.items()},
        secrets={SECRET_NAME: {"AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET}},
    )


def operator_env(job: RenderedJob, slot: PodSlot, master_port: int) -> dict[str, str]:
    """The training operator's setPodEnv for a PyTorchJob with a Master (v1.9; master address on loopback).

    WORLD_SIZE is replicas x nprocPerNode there (training-operator >= 1.8; older releases set the number of pods).
    torchrun sets each worker's own RANK and WORLD_SIZE, so the processes never see these two.
    """
    pods = sum(job.replicas.values())
    nproc = int(job.nproc_per_node) if job.nproc_per_node.isdigit() else 1
    return {
        "PYTHONUNBUFFERED": "1",
        "MASTER_PORT": str(master_port), "PET_MASTER_PORT": str(master_port),
        "MASTER_ADDR": "127.0.0.1", "PET_MASTER_ADDR": "127.0.0.1",
        "WORLD_SIZE": str(pods * nproc), "RANK": str(slot.rank), "PET_NODE_RANK": str(slot.rank),
        "PET_NPROC_PER_NODE": job.nproc_per_node, "PET_NNODES": str(pods),
    }


_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command and args (unknown references stay as written)."""
    return _REF.sub(lambda m: env.get(m.group(1), m.group(0)), value)


# --- pods ----------------------------------------------------------------------------------------------------------


@dataclass
class Pod:
    slot: PodSlot
    directory: Path
    """The pod's own disk: scratch/ (/scratch), etc/zhllama/ (the ConfigMap), tmp/."""
    server: S3Server
    command: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self, cwd: Path) -> None:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.command, env=self.env, cwd=cwd, stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)

    def kill(self) -> None:
        """SIGKILL the pod's whole process tree (torchrun starts every worker in its own process group)."""
        if self.process is None:
            return
        try:
            children = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        groups = {self.process.pid}
        for child in children:
            with contextlib.suppress(ProcessLookupError, psutil.NoSuchProcess):
                groups.add(os.getpgid(child.pid))
        for group in groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        self.process.wait()

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]


class Attempt:
    """One start of every pod of a job (fresh disks, fresh S3 servers and logs), as the operator (re)creates them."""

    def __init__(self, cluster: PodCluster, job: RenderedJob, name: str) -> None:
        self.cluster = cluster
        self.job = job
        self.name = name
        self.directory = cluster.work / job.run_id / name
        if self.directory.exists():
            raise FileExistsError(f"{self.directory}: an attempt's pods start with empty disks")
        self.directory.mkdir(parents=True)
        self.pods: list[Pod] = []
        self.started = 0.0
        self.stopped = False

    def start(self) -> Attempt:
        master_port = free_port()
        for slot in self.job.slots:
            directory = self.directory / slot.name
            server = S3Server.start(self.cluster.s3_root, self.directory / f"s3-{slot.name}.log")
            self.pods.append(self._pod(slot, directory, server, master_port))
        self.started = time.time()
        for pod in self.pods:
            pod.start(self.cluster.code)
        return self

    def _pod(self, slot: PodSlot, directory: Path, server: S3Server, master_port: int) -> Pod:
        code = self.cluster.code
        mounts = {"/scratch": directory / "scratch", "/etc/zhllama": directory / "etc" / "zhllama", "/app": code}
        for path in (directory / "scratch", directory / "etc" / "zhllama", directory / "tmp"):
            path.mkdir(parents=True)
        (directory / "etc" / "zhllama" / "spec.json").write_text(self.job.spec_json, encoding="utf-8")

        def mapped(value: str) -> str:
            for mount, local in mounts.items():
                if value == mount or value.startswith(f"{mount}/"):
                    return str(local) + value[len(mount):]
            return value

        container = self.job.containers[slot.role]
        python = Path(sys.executable)
        # The image's environment: the venv's interpreter, one thread per process (two shared cores), no hub.
        env = {"PATH": f"{python.parent}:/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
               "PYTHONPATH": str(code / "pkg"), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
               "HF_HUB_OFFLINE": "1", "TMPDIR": str(directory / "tmp")}
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = mapped(str(item["value"]))
            else:
                ref = item["valueFrom"]["secretKeyRef"]
                env[item["name"]] = self.job.secrets[ref["name"]][ref["key"]]
        if "AWS_ENDPOINT_URL" not in env:
            raise AssertionError("the chart rendered no AWS_ENDPOINT_URL for the pods")
        env["AWS_ENDPOINT_URL"] = server.endpoint  # the pod's own server, so that its requests are its own
        env.update(operator_env(self.job, slot, master_port))
        command = [mapped(expand(arg, env)) for arg in container["command"]]
        launcher = {"torchrun": [sys.executable, "-m", "torch.distributed.run"], "python": [sys.executable]}
        command = [*launcher.get(command[0], [command[0]]), *command[1:]]
        if any("$(" in arg for arg in command):
            raise AssertionError(f"unexpanded references in the pod command: {command}")
        return Pod(slot, directory, server, command, env, self.directory / f"{slot.name}.log")

    def running(self) -> bool:
        return any(p.process is not None and p.process.poll() is None for p in self.pods)

    def wait(self, timeout_s: float) -> dict[str, int]:
        """Exit codes by pod name; every pod is killed at the deadline. The servers are stopped after."""
        deadline = time.monotonic() + timeout_s
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.2)
        codes: dict[str, int] = {}
        for pod in self.pods:
            assert pod.process is not None
            if pod.process.poll() is None:
                pod.kill()
            codes[pod.slot.name] = pod.process.returncode
        self.stop_servers()
        return codes

    def check(self, timeout_s: float) -> None:
        codes = self.wait(timeout_s)
        failed = {name: rc for name, rc in codes.items() if rc != 0}
        if failed:
            tails = "\n".join(f"--- {p.slot.name} ---\n{p.log_tail()}" for p in self.pods)
            raise AssertionError(f"{self.job.run_id}/{self.name}: pods failed {failed}\n{tails}")

    def kill(self, order: list[int] | None = None, pause_s: float = 1.0) -> None:
        """SIGKILL the pods in `order` (indexes into .pods), `pause_s` apart; then stop the servers."""
        for n, index in enumerate(order if order is not None else list(range(len(self.pods)))):
            if n:
                time.sleep(pause_s)
            self.pods[index].kill()
        for pod in self.pods:
            pod.kill()
        self.stop_servers()

    def stop_servers(self) -> None:
        for pod in self.pods:
            pod.server.stop()
        self.stopped = True

    def traffic(self) -> dict[str, Traffic]:
        """Each pod's requests, from its own server's log (after the servers have stopped)."""
        return {pod.slot.name: pod.server.traffic(self.cluster.prefix) for pod in self.pods}


class PodCluster:
    """A shared bucket (one directory served by one rclone per pod), and the code the pods run."""

    def __init__(self, work: Path, prefix: str = "e2e", code: Path | None = None) -> None:
        self.work = work
        self.prefix = prefix.strip("/")
        self.code = code or code_root()
        self.s3_root = work / "s3"
        (self.s3_root / BUCKET).mkdir(parents=True, exist_ok=True)
        self.control = S3Server.start(self.s3_root, work / "s3-control.log")
        """This process's own endpoint (publishing inputs); its log is not any pod's."""

    @property
    def store_uri(self) -> str:
        return f"s3://{BUCKET}/{self.prefix}"

    @property
    def bucket_dir(self) -> Path:
        """The store's objects as files (reading them here makes no S3 request)."""
        return self.s3_root / BUCKET / self.prefix

    def close(self) -> None:
        self.control.stop()

    def publish_inputs(self, artifacts: dict[str, Path]) -> dict[str, str]:
        """Upload local directories as artifacts under inputs/<name>; returns name -> store:// URI."""
        from zhllama.store import open_store

        with aws_env(self.control.endpoint):
            store = open_store(self.store_uri)
            for name, local in artifacts.items():
                store.publish_dir(local, f"inputs/{name}", progress=False)
        return {name: f"store://inputs/{name}" for name in artifacts}

    def spec(self, run_id: str, **values: Any) -> Any:
        from zhllama.spec import resolve_spec

        return resolve_spec("pretrain", size="tiny", run_id=run_id, values={"store": self.store_uri, **values})

    def render(self, spec: Any) -> RenderedJob:
        return render_job(spec, self.control.endpoint)

    def attempt(self, job: RenderedJob, name: str) -> Attempt:
        return Attempt(self, job, name).start()

    # --- the store, read from the files ---------------------------------------------------------------------

    def objects(self, under: str = "") -> dict[str, int]:
        """Store key -> size of every object under `under` now (rclone's temporary upload files left out)."""
        root = self.bucket_dir / under if under else self.bucket_dir
        if not root.is_dir():
            return {}
        return {str(path.relative_to(self.bucket_dir)): path.stat().st_size for path in sorted(root.rglob("*"))
                if path.is_file() and not path.name.startswith(".rclone_temp")}

    def read_json(self, key: str) -> Any:
        return json.loads((self.bucket_dir / key).read_text(encoding="utf-8"))

    def checkpoint_steps(self, run_id: str) -> list[int]:
        root = self.bucket_dir / "runs" / run_id / "checkpoints"
        found = (re.fullmatch(r"step-(\d+)", p.name) for p in root.iterdir()) if root.is_dir() else iter(())
        return sorted(int(m.group(1)) for m in found if m)

    def complete_steps(self, run_id: str) -> list[int]:
        """Steps whose rank-0 share has its manifest: rank 0 publishes its manifest last, after every other share."""
        root = self.bucket_dir / "runs" / run_id / "checkpoints"
        return [s for s in self.checkpoint_steps(run_id) if (root / f"step-{s}" / "rank-0" / "manifest.json").exists()]

    def metrics(self, run_id: str) -> list[dict[str, Any]]:
        text = (self.bucket_dir / "runs" / run_id / "metrics" / "metrics.jsonl").read_text(encoding="utf-8")
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def adapter_record(self, run_id: str) -> dict[str, Any]:
        record: dict[str, Any] = self.read_json(f"runs/{run_id}/outputs/adapter/zhllama_adapter.json")
        return record
