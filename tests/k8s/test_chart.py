"""charts/zhllama: lint, the values schema, a render matrix validated against the real schemas, the spec in the
ConfigMap == the spec Python resolved, `helm template` of `ctl values` == `ctl submit --dry-run`, and a golden
48-GPU run."""

from __future__ import annotations

import hashlib
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
from zhllama.backends.k8s_chart import chart_dir, chart_values, render, render_notes, to_yaml
from zhllama.cli.main import cli
from zhllama.errors import UserError
from zhllama.spec import StageSpec, resolve_spec, spec_from_json
from zhllama.spec.presets import deep_merge

GOLDEN = Path(__file__).parent / "golden" / "pretrain-33b-48gpu.yaml"
GOLDEN_PREPARE = Path(__file__).parent / "golden" / "prepare-33b-indexed.yaml"
STORE = "s3://llm-runs/zh"
STAGES = ("tokenizer", "prepare", "pretrain", "sft", "merge", "quantize", "eval", "generate")
CLUSTER = {  # every cluster knob set at once
    "image": {"tag": "v1.2.3", "pullSecrets": ["regcred"]},
    "s3": {"endpoint": "https://minio.example:9000", "region": "us-west-2", "credentialsSecret": {"name": "s3-creds"}},
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
    """Point name -> the spec to resolve (stage, size, --set flags) and the cluster values to render it with."""
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
                        "stage": stage, "size": "65b", "sets": [f"bits={bits}"], "cluster": {
                            "backend": backend, "gang": {"mode": gang, "queue": "" if gang == "none" else "gpu-queue"}}}
    for backend in ("pytorchjob", "trainjob"):
        gang = {"mode": "kueue", "queue": "gpu-queue", "priorityClass": "high"}
        points[f"pretrain-33b-48gpu-{backend}-cluster"] = {
            "stage": "pretrain", "size": "33b", "sets": ["resources.nodes=6"],
            "cluster": {"backend": backend, **CLUSTER, "gang": gang}}
    points["eval-65b-cluster"] = {"stage": "eval", "size": "65b", "cluster": CLUSTER}
    points["prepare-33b-cluster"] = {"stage": "prepare", "size": "33b", "cluster": {**CLUSTER, "gang": {
        "mode": "kueue", "queue": "cpu-queue"}}}
    points["merge-7b-no-sa-no-shm"] = {"stage": "merge", "size": "7b", "cluster": {
        "serviceAccount": {"create": False}, "rbac": {"create": False}, "shm": {"enabled": False}}}
    return points


MATRIX = _matrix()


@cache
def resolved(point: str) -> StageSpec:
    where = MATRIX[point]
    return resolve_spec(where["stage"], size=where["size"], run_id=f"run-{len(point)}", values={"store": STORE},
                        sets=where.get("sets", []))


@cache
def rendered(point: str) -> list[tuple[str, dict[str, Any]]]:
    spec = resolved(point)
    return render(chart_values(spec, MATRIX[point].get("cluster")), release=spec.run_id, namespace="ml")


def objects(point: str) -> dict[str, dict[str, Any]]:
    return {obj["kind"]: obj for _, obj in rendered(point)}


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    if workload["kind"] == "PyTorchJob":
        replicas = workload["spec"]["pytorchReplicaSpecs"].values()
        return [c for replica in replicas for c in replica["template"]["spec"]["containers"]]
    return workload["spec"]["template"]["spec"]["containers"]


def ctl(*args: str) -> str:
    """The real CLI's output; a failing command fails the test with its one-line error."""
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def ctl_error(*args: str) -> str:
    """The one-line error of a CLI command that must fail as a user error (exit 2)."""
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def helm_template(values: dict[str, Any], release: str) -> list[tuple[str, dict[str, Any]]]:
    """What `helm template RELEASE charts/zhllama -f ...` renders, straight through Helm's Go SDK (not ctl)."""
    with helm_python.Chart.load(str(chart_dir())) as chart:
        manifests = chart.render(values, name=release, namespace="ml")
    return [(name, doc) for name, text in sorted(manifests.items()) if not name.endswith("NOTES.txt")
            for doc in yaml.safe_load_all(text) if doc]


def test_lint_reports_no_errors() -> None:
    spec = resolve_spec("pretrain", size="33b", run_id="lint", values={"store": STORE})
    report = helm_python.lint(str(chart_dir()), chart_values(spec), strict=True)
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


@pytest.mark.parametrize("point", sorted(MATRIX))
def test_the_configmap_holds_exactly_the_resolved_spec(point: str) -> None:
    configmap = objects(point)["ConfigMap"]
    text = configmap["data"]["spec.json"]
    assert json.loads(text) == resolved(point).model_dump(mode="json")
    assert spec_from_json(json.loads(text)) == resolved(point)
    # The digest ctl compares on re-submit is the one of what the pods read.
    digest = hashlib.sha256(text.rstrip("\n").encode()).hexdigest()
    assert configmap["metadata"]["annotations"]["zhllama.io/spec-sha256"] == digest


def test_ctl_set_flags_reach_the_configmap_as_python_resolved_them() -> None:
    sets = ["lr=0.001", "max_steps=10", "lora.r=16", "resources.memory=500Gi", "data=[s3://b/zh.txt]"]
    values = helm_python.values_from_yaml(ctl("values", "sft", "--size", "13b", "--run-id", "sft13", "--store", STORE,
                                *[arg for s in sets for arg in ("--set", s)]))
    expected = resolve_spec("sft", size="13b", run_id="sft13", sets=sets, values={"store": STORE})
    assert values["spec"] == expected.model_dump(mode="json")
    configmap = next(obj for _, obj in helm_template(values, "sft13") if obj["kind"] == "ConfigMap")
    assert json.loads(configmap["data"]["spec.json"]) == expected.model_dump(mode="json")


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
        assert "/app/jobs/pretrain.py" in container["command"]
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
    assert (spec["bits"], spec["zero_stage"], spec["resources"]["nodes"], spec["store"]) == (8, 2, 6, STORE)
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    spec = resolved("pretrain-33b-48gpu-pytorchjob-cluster")
    notes = render_notes(chart_values(spec), release=spec.run_id, namespace="ml")
    assert f"pretrain run {spec.run_id} (size 33b, 8-bit base, 6 pod(s) x 8 GPU(s))" in notes
    assert "WARNING" not in notes


def test_single_pod_stages_are_jobs_and_trainjob_replaces_pytorchjob() -> None:
    job = objects("merge-7b")["Job"]
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][:2] == ["python", "/app/jobs/merge.py"]
    assert job["spec"]["template"]["spec"]["containers"][0]["image"].startswith("ghcr.io/zhllama/zhllama-tools:")
    assert objects("merge-7b")["ConfigMap"]["metadata"]["annotations"]["zhllama.io/workload-kind"] == "Job"
    trainjob = objects("sft-65b-4bit-trainjob-gang-kueue")["TrainJob"]
    assert trainjob["spec"]["trainer"]["numNodes"] == 8 and trainjob["spec"]["trainer"]["numProcPerNode"] == 8
    assert json.loads(objects("sft-65b-4bit-trainjob-gang-kueue")["ConfigMap"]["data"]["spec.json"])["bits"] == 4
    volcano = objects("pretrain-65b-8bit-pytorchjob-gang-volcano")["PyTorchJob"]
    assert volcano["spec"]["runPolicy"]["schedulingPolicy"] == {"minAvailable": 8, "queue": "gpu-queue"}
    master = volcano["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert master["schedulerName"] == "volcano"


def test_processes_per_pod_come_from_the_spec_rule_in_python() -> None:
    spec = resolve_spec("pretrain", size="tiny", run_id="cpu2", values={"store": STORE},
                        sets=["resources.nodes=2", "resources.nproc_per_node=3"])
    launch = chart_values(spec)["launch"]
    assert launch == {"distributed": True, "indexed": False, "completions": 1, "entrypoint": "/app/jobs/pretrain.py",
                      "nodes": 2, "procsPerNode": spec.resources.procs_per_node}
    job = next(obj for _, obj in render(chart_values(spec), release="cpu2", namespace="ml")
               if obj["kind"] == "PyTorchJob")
    assert job["spec"]["nprocPerNode"] == str(spec.resources.procs_per_node) == "3"


def test_golden_48_gpu_pretrain_and_ctl_dry_run_print_what_helm_template_renders(tmp_path: Path) -> None:
    cluster = {"s3": {"credentialsSecret": {"name": "s3-creds"}}, "nccl": {"socketIfname": "eth0"}}
    cluster_file = tmp_path / "cluster.yaml"
    cluster_file.write_text(yaml.safe_dump(cluster))
    flags = ("pretrain", "--size", "33b", "--bits", "8", "--gpus", "48", "--run-id", "pt33-48", "--store", STORE)
    run_values = helm_python.values_from_yaml(ctl("values", *flags))  # as `helm -f` reads it
    assert sorted(run_values) == ["launch", "spec"]
    helm_text = to_yaml(helm_template(deep_merge(cluster, run_values), "pt33-48"))
    if os.environ.get("ZHLLAMA_UPDATE_GOLDEN"):
        GOLDEN.write_text(helm_text)
    assert helm_text == GOLDEN.read_text(), "rendering changed: review, then ZHLLAMA_UPDATE_GOLDEN=1 pytest tests/k8s"

    dry_run = ctl("submit", *flags, "-n", "ml", "--values", str(cluster_file), "--dry-run")
    assert dry_run.startswith(helm_text)
    memory_plan = dry_run.removeprefix(helm_text).splitlines()
    assert memory_plan and all(line.startswith("# ") for line in memory_plan)


def test_golden_prepare_33b_indexed_job_and_ctl_dry_run_print_what_helm_template_renders() -> None:
    flags = ("prepare", "--size", "33b", "--run-id", "prep33", "--store", STORE)
    run_values = helm_python.values_from_yaml(ctl("values", *flags))
    assert run_values["launch"] == {"distributed": False, "indexed": True, "completions": 32,
                                    "entrypoint": "/app/jobs/prepare.py", "nodes": 1, "procsPerNode": 1}
    helm_text = to_yaml(helm_template(run_values, "prep33"))
    if os.environ.get("ZHLLAMA_UPDATE_GOLDEN"):
        GOLDEN_PREPARE.write_text(helm_text)
    assert helm_text == GOLDEN_PREPARE.read_text(), "rendering changed: review, then ZHLLAMA_UPDATE_GOLDEN=1 pytest " \
        "tests/k8s/test_chart.py -k golden"
    assert ctl("submit", *flags, "-n", "ml", "--dry-run") == helm_text  # no memory plan: no GPUs
    job = next(obj for _, obj in helm_template(run_values, "prep33") if obj["kind"] == "Job")
    assert validation_errors(job) == []


def test_ctl_values_prints_only_the_values_ctl_owns() -> None:
    text = ctl("values", "merge", "--size", "7b", "--run-id", "m7", "--store", STORE)
    assert text.startswith("# helm install m7 charts/zhllama -f")
    values = yaml.safe_load(text)
    assert values["launch"] == {"distributed": False, "indexed": False, "completions": 1,
                                "entrypoint": "/app/jobs/merge.py", "nodes": 1, "procsPerNode": 1}
    assert values["spec"]["run_id"] == "m7" and values["spec"]["store"] == STORE


def test_ctl_values_refuses_a_pipeline_and_a_store_inside_the_pod() -> None:
    line = ctl_error("values", "pipeline", "--store", STORE)
    assert "pipeline has no chart of its own" in line and "ctl submit pipeline" in line
    assert "store: file://" in ctl_error("values", "merge", "--store", "file:///tmp/artifacts")


def test_ctl_submit_pipeline_dry_run_prints_every_steps_manifests() -> None:
    text = ctl("submit", "pipeline", "--size", "tiny", "--run-id", "pipe", "--store", STORE, "-n", "ml",
               "--set", "stages=[tokenizer,pretrain]", "--dry-run")
    assert "# pipeline step tokenizer: run pipe-tokenizer" in text
    configmaps = [doc["metadata"]["name"] for doc in yaml.safe_load_all(text) if doc and doc["kind"] == "ConfigMap"]
    assert configmaps == ["pipe-tokenizer-spec", "pipe-pretrain-spec"]


@pytest.mark.parametrize("key", ["spec", "launch"])
def test_a_values_file_that_sets_what_ctl_computes_is_refused_in_one_line(key: str, tmp_path: Path) -> None:
    values_file = tmp_path / "cluster.yaml"
    values_file.write_text(yaml.safe_dump({key: {"run_id": "other"}, "image": {"tag": "v1"}}))
    line = ctl_error("submit", "merge", "--store", STORE, "-n", "ml", "--values", str(values_file), "--dry-run")
    assert f"chart values {key}: ctl computes these from the spec" in line


def test_a_values_files_bucket_becomes_the_store_and_stays_out_of_the_chart(tmp_path: Path) -> None:
    values_file = tmp_path / "cluster.yaml"
    values_file.write_text(yaml.safe_dump({"s3": {"bucket": "llm-runs", "region": "us-west-2"}}))
    env = {"ZHLLAMA_STORE": None}
    result = CliRunner(env=env).invoke(cli, ["submit", "merge", "--run-id", "m7", "-n", "ml", "--values",
                                             str(values_file), "--dry-run"])
    assert result.exit_code == 0, result.output
    configmap = next(doc for doc in yaml.safe_load_all(result.output) if doc and doc["kind"] == "ConfigMap")
    assert json.loads(configmap["data"]["spec.json"])["store"] == "s3://llm-runs/zhllama"


@pytest.mark.parametrize(("cluster", "message"), [
    ({"run": {"backoffLimit": "three"}}, "backoffLimit"),
    ({"nodeSelector": {"gpu": "h100"}}, "nodeSelector"),
    ({"s3": {"endpoint": "minio:9000"}}, "endpoint"),
    ({"gang": {"mode": "kueue"}}, "gang.queue"),
])
def test_bad_cluster_values_are_rejected_with_a_readable_message(cluster: dict[str, Any], message: str) -> None:
    spec = resolve_spec("pretrain", size="7b", run_id="bad", values={"store": STORE})
    with pytest.raises(UserError) as caught:
        render(chart_values(spec, cluster), release="bad", namespace="ml")
    text = str(caught.value)
    assert message in text and "\n" not in text


def test_the_schema_rejects_values_without_the_resolved_spec() -> None:
    launch = chart_values(resolve_spec("merge", run_id="m7", values={"store": STORE}))["launch"]
    with pytest.raises(UserError) as caught:
        render({"launch": launch}, release="m7", namespace="ml")
    assert "spec" in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(UserError, match="run_id"):
        render({"launch": launch, "spec": {"stage": "merge"}}, release="m7", namespace="ml")


def test_no_secret_values_in_any_rendered_object() -> None:
    for point in MATRIX:
        for _, obj in rendered(point):
            text = yaml.safe_dump(obj)
            assert "kind: Secret" not in text
            for container in (containers(obj) if obj["kind"] in ("PyTorchJob", "Job") else []):
                for env in container["env"]:
                    if env["name"].startswith("AWS_") and env["name"] not in ("AWS_REGION", "AWS_ENDPOINT_URL"):
                        assert "value" not in env and "secretKeyRef" in env["valueFrom"]
