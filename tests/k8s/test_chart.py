"""charts/zhllama: lint, the values schema, a render matrix validated against the real schemas, the spec the
chart computes == the spec Python resolves, `ctl submit --dry-run` == `helm template`, and a golden 48-GPU run."""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml
from click.testing import CliRunner

from tests.k8s.schemas import validation_errors
from zhllama.backends.k8s_chart import chart_dir, chart_values, presets_json, render, rendered_spec, to_yaml
from zhllama.errors import UserError
from zhllama.spec import resolve_spec

GOLDEN = Path(__file__).parent / "golden" / "pretrain-33b-48gpu.yaml"
STAGES = ("tokenizer", "pretrain", "sft", "merge", "quantize", "eval", "generate")
CLUSTER = {  # every cluster knob set at once
    "image": {"tag": "v1.2.3", "pullSecrets": ["regcred"]},
    "s3": {"bucket": "llm-runs", "prefix": "zh", "endpoint": "https://minio.example:9000", "region": "us-west-2",
           "credentialsSecret": {"name": "s3-creds"}},
    "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/zhllama"}},
    "scheduling": {"nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
                   "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                   "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                       "nodeSelectorTerms": [{"matchExpressions": [
                           {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["us-west-2a"]}]}]}}},
                   "priorityClassName": "training"},
    "run": {"restartPolicy": "ExitCode", "backoffLimit": 5, "cleanPodPolicy": "Running",
            "activeDeadlineSeconds": 172800, "ttlSecondsAfterFinished": 3600},
    "nccl": {"debug": "INFO", "socketIfname": "eth0", "ibDisable": False, "ibHca": "mlx5_0,mlx5_1", "efa": True,
             "extraEnv": {"NCCL_P2P_LEVEL": "NVL"}},
    "extraResources": {"vpc.amazonaws.com/efa": 4},
    "addCapabilities": ["IPC_LOCK"],
    "podLabels": {"team": "nlp"}, "podAnnotations": {"sidecar.istio.io/inject": "false"},
}


def _matrix() -> dict[str, dict[str, Any]]:
    points: dict[str, dict[str, Any]] = {}
    for stage in STAGES:
        for size in ("tiny", "smol", "7b", "33b"):
            points[f"{stage}-{size}"] = {"stage": stage, "size": size}
    for stage in ("pretrain", "sft"):
        for bits in (16, 8, 4):
            for backend in ("pytorchjob", "trainjob"):
                gangs = ("none", "kueue") + (("volcano", "scheduler-plugins") if backend == "pytorchjob" else ())
                for gang in gangs:
                    points[f"{stage}-65b-{bits}bit-{backend}-gang-{gang}"] = {
                        "stage": stage, "size": "65b", "bits": bits, "backend": backend,
                        "gang": {"mode": gang, "queue": "" if gang == "none" else "gpu-queue"}}
    for backend in ("pytorchjob", "trainjob"):
        points[f"pretrain-33b-48gpu-{backend}-cluster"] = {
            "stage": "pretrain", "size": "33b", "gpus": 48, "backend": backend, **CLUSTER,
            "gang": {"mode": "kueue", "queue": "gpu-queue", "priorityClass": "high"}}
    points["eval-65b-cluster"] = {"stage": "eval", "size": "65b", **CLUSTER}
    points["merge-7b-no-sa-no-shm"] = {"stage": "merge", "size": "7b", "serviceAccount": {"create": False},
                                       "rbac": {"create": False}, "shm": {"enabled": False}}
    return points


MATRIX = _matrix()


@cache
def rendered(point: str) -> list[tuple[str, dict[str, Any]]]:
    return render(MATRIX[point], release=f"run-{len(point)}", namespace="ml")


def objects(point: str) -> dict[str, dict[str, Any]]:
    return {obj["kind"]: obj for _, obj in rendered(point)}


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    if workload["kind"] == "PyTorchJob":
        replicas = workload["spec"]["pytorchReplicaSpecs"].values()
        return [c for replica in replicas for c in replica["template"]["spec"]["containers"]]
    return workload["spec"]["template"]["spec"]["containers"]


def test_lint_reports_no_errors() -> None:
    report = helm_python.lint(str(chart_dir()), strict=True)
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert report["total_charts_linted"] == 1
    assert problems == []


@pytest.mark.parametrize("point", sorted(MATRIX))
def test_every_rendered_object_is_valid(point: str) -> None:
    found = rendered(point)
    kinds = sorted(obj["kind"] for _, obj in found)
    assert "ConfigMap" in kinds and sum(k in ("PyTorchJob", "TrainJob", "Job") for k in kinds) == 1
    errors = {f"{obj['kind']}/{obj['metadata']['name']}": validation_errors(obj) for _, obj in found}
    assert {name: errs for name, errs in errors.items() if errs} == {}


@pytest.mark.parametrize("point", sorted(p for p in MATRIX if "cluster" not in p and "gpus" not in MATRIX[p]))
def test_chart_spec_equals_the_python_resolved_spec(point: str) -> None:
    values = MATRIX[point]
    sets = [f"bits={values['bits']}"] if "bits" in values else []
    expected = resolve_spec(values["stage"], size=values["size"], run_id=f"run-{len(point)}", sets=sets)
    assert rendered_spec(rendered(point)) == expected


def test_pretrain_33b_is_six_pods_of_eight_gpus_in_8_bits_with_zero2() -> None:
    found = objects("pretrain-33b-48gpu-pytorchjob-cluster")
    job = found["PyTorchJob"]
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert (replicas["Master"]["replicas"], replicas["Worker"]["replicas"]) == (1, 5)
    assert job["spec"]["nprocPerNode"] == "8"
    for container in containers(job):
        assert container["name"] == "pytorch"
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
        assert container["command"][:2] == ["torchrun", "--nnodes=$(PET_NNODES)"]
        env = {e["name"]: e for e in container["env"]}
        assert env["NCCL_SOCKET_IFNAME"]["value"] == "eth0" and env["FI_PROVIDER"]["value"] == "efa"
        assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "s3-creds",
                                                                            "key": "AWS_SECRET_ACCESS_KEY"}
    pod = replicas["Worker"]["template"]["spec"]
    shm = next(v for v in pod["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"]["medium"] == "Memory"
    assert pod["securityContext"]["runAsNonRoot"]
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    spec = json.loads(found["ConfigMap"]["data"]["spec.json"])
    assert (spec["bits"], spec["zero_stage"], spec["resources"]["nodes"], spec["store"]) == (8, 2, 6, "s3://llm-runs/zh")
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"


def test_single_pod_stages_are_jobs_and_trainjob_replaces_pytorchjob() -> None:
    job = objects("merge-7b")["Job"]
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][:2] == ["python", "/app/jobs/merge.py"]
    assert job["spec"]["template"]["spec"]["containers"][0]["image"].startswith("ghcr.io/zhllama/zhllama-tools:")
    trainjob = objects("sft-65b-4bit-trainjob-gang-kueue")["TrainJob"]
    assert trainjob["spec"]["trainer"]["numNodes"] == 8 and trainjob["spec"]["trainer"]["numProcPerNode"] == 8
    assert json.loads(objects("sft-65b-4bit-trainjob-gang-kueue")["ConfigMap"]["data"]["spec.json"])["bits"] == 4
    volcano = objects("pretrain-65b-8bit-pytorchjob-gang-volcano")["PyTorchJob"]
    assert volcano["spec"]["runPolicy"]["schedulingPolicy"] == {"minAvailable": 8, "queue": "gpu-queue"}
    master = volcano["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert master["schedulerName"] == "volcano"


def test_golden_48_gpu_pretrain() -> None:
    values = {"stage": "pretrain", "size": "33b", "bits": 8, "gpus": 48,
              "s3": {"bucket": "llm-runs", "prefix": "zh", "credentialsSecret": {"name": "s3-creds"}},
              "nccl": {"socketIfname": "eth0"}}
    text = to_yaml(render(values, release="pt33-48", namespace="ml"))
    if os.environ.get("ZHLLAMA_UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), "rendering changed: review it, then ZHLLAMA_UPDATE_GOLDEN=1 pytest tests/k8s"


def test_ctl_dry_run_prints_what_helm_template_renders() -> None:
    from zhllama.cli.main import cli

    result = CliRunner().invoke(cli, ["submit", "pretrain", "--size", "33b", "--bits", "8", "--run-id", "pt33",
                                      "--store", "s3://llm-runs/zh", "-n", "ml", "--dry-run"])
    assert result.exit_code == 0, result.output
    ctl_objects = list(yaml.safe_load_all(result.output))
    with helm_python.Chart.load(str(chart_dir())) as chart:
        manifests = chart.render({"stage": "pretrain", "size": "33b", "bits": 8,
                                  "s3": {"bucket": "llm-runs", "prefix": "zh"}}, name="pt33", namespace="ml")
    helm_objects = [doc for name, text in sorted(manifests.items()) if not name.endswith("NOTES.txt")
                    for doc in yaml.safe_load_all(text) if doc]
    assert ctl_objects == helm_objects
    assert [o["kind"] for o in ctl_objects] == ["ConfigMap", "PyTorchJob", "Role", "RoleBinding", "ServiceAccount"]


def test_helm_set_strings_give_the_spec_of_ctl_set() -> None:
    sets = ["lr=0.001", "max_steps=10", "lora.r=16", "resources.memory=500Gi", "data=[s3://b/zh.txt]"]
    values = {"stage": "sft", "size": "13b", **helm_python.parse_set_string(
        "overrides.lr=0.001,overrides.max_steps=10,overrides.lora.r=16,overrides.resources.memory=500Gi,"
        "overrides.data={s3://b/zh.txt}")}
    expected = resolve_spec("sft", size="13b", run_id="sft13", sets=sets)
    assert rendered_spec(render(values, release="sft13", namespace="ml")) == expected
    assert chart_values(expected)["overrides"] == {"lr": 0.001, "max_steps": 10, "lora": {"r": 16},
                                                   "resources": {"memory": "500Gi"}, "data": ["s3://b/zh.txt"]}


@pytest.mark.parametrize(("values", "message"), [
    ({"run": {"backoffLimit": "three"}}, "backoffLimit"),
    ({"nodeSelector": {"gpu": "h100"}}, "nodeSelector"),
    ({"bits": 3}, "bits"),
    ({"overrides": {"max_step": 10}}, "overrides.max_step: the pretrain spec has no field \"max_step\""),
    ({"overrides": {"lr": "fast"}}, "overrides.lr: expected a number, got \"fast\""),
    ({"size": "33b", "gpus": 44}, "gpus: 44 is not a positive multiple of the 8 GPUs per node; use e.g. 48"),
    ({"stage": "merge", "bits": 8}, "bits: only pretrain and sft"),
    ({"gang": {"mode": "kueue"}}, "gang.queue"),
])
def test_bad_values_are_rejected_with_a_readable_message(values: dict[str, Any], message: str) -> None:
    with pytest.raises(UserError) as caught:
        render({"stage": "pretrain", "size": "7b", **values}, release="bad", namespace="ml")
    text = str(caught.value)
    assert message in text and "\n" not in text


def test_chart_presets_are_generated_from_the_python_presets() -> None:
    path = chart_dir() / "files" / "presets.json"
    assert path.read_text() == presets_json(), "stale: run `ctl chart-presets` (k8s_chart.write_chart_presets)"


def test_no_secret_values_in_any_rendered_object() -> None:
    for point in MATRIX:
        for _, obj in rendered(point):
            text = yaml.safe_dump(obj)
            assert "kind: Secret" not in text
            for container in (containers(obj) if obj["kind"] in ("PyTorchJob", "Job") else []):
                for env in container["env"]:
                    if env["name"].startswith("AWS_") and env["name"] not in ("AWS_REGION", "AWS_ENDPOINT_URL"):
                        assert "value" not in env and "secretKeyRef" in env["valueFrom"]
