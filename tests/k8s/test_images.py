"""images/: what can be checked without a container engine. Pinned bases, a non-root user, no credentials, the
project from pyproject.toml installed with every dependency pinned, and the entrypoints the chart and the
images name exist and answer --help."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((ROOT / "images").glob("*.Dockerfile"))
STAGES = ("tokenizer", "pretrain", "sft", "merge", "quantize", "eval", "generate")


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def test_both_images_exist() -> None:
    assert [p.name for p in DOCKERFILES] == ["tools.Dockerfile", "train.Dockerfile"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_base_image_is_pinned_to_an_exact_tag(dockerfile: Path) -> None:
    bases = [args.split()[0] for keyword, args in instructions(dockerfile) if keyword == "FROM"]
    assert bases
    for base in bases:
        name, _, tag = base.partition("@")[0].rpartition(":")
        assert name and tag != "latest" and re.search(r"\d+\.\d+", tag), f"{base} is not pinned to a version"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_runs_as_a_non_root_user_with_the_cli_entrypoint(dockerfile: Path) -> None:
    steps = instructions(dockerfile)
    user = [args for keyword, args in steps if keyword == "USER"][-1]
    assert user.split(":")[0] not in ("root", "0") and int(user.split(":")[0]) >= 1000
    assert ("ENTRYPOINT", '["python", "-m", "zhllama.cli.main"]') in steps
    assert ("COPY", "jobs /app/jobs") in steps


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_no_credentials_are_baked_in(dockerfile: Path) -> None:
    for keyword, args in instructions(dockerfile):
        if keyword in ("ENV", "ARG", "LABEL"):
            assert not re.search(r"(SECRET|TOKEN|PASSWORD|ACCESS_KEY|CREDENTIAL)", args, re.IGNORECASE), args


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_installs_this_project_with_every_dependency_pinned(dockerfile: Path) -> None:
    steps = instructions(dockerfile)
    assert ("COPY", "pyproject.toml README.md /app/") in steps and ("COPY", "pkg /app/pkg") in steps
    installs = [args for keyword, args in steps
                if keyword == "RUN" and 'pip install -c /tmp/constraints.txt "/app[eval]"' in args]
    assert installs, "the image must pip install the project (/app, its pyproject.toml) with the exam harness " \
        "under the constraints"
    torch = [args for keyword, args in steps if keyword == "RUN" and '"torch==${TORCH_VERSION}"' in args]
    assert torch and ("ARG", "TORCH_VERSION=2.13.0") in steps


def test_constraints_pin_every_dependency_of_pyproject() -> None:
    pins = {}
    for line in (ROOT / "images" / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            requirement = Requirement(line)
            assert len(requirement.specifier) == 1 and next(iter(requirement.specifier)).operator == "==", line
            pins[requirement.name.lower()] = requirement
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == "zhllama"
    # The images install the eval extra (the exam harness), so it is pinned like the rest.
    for dependency in map(Requirement, [*project["dependencies"], *project["optional-dependencies"]["eval"]]):
        if dependency.name == "torch":  # pinned by TORCH_VERSION, from the CUDA or CPU wheel index
            continue
        assert dependency.name.lower() in pins, f"{dependency.name} is not pinned in images/constraints.txt"
        pinned = next(iter(pins[dependency.name.lower()].specifier)).version
        assert dependency.specifier.contains(pinned), f"{dependency.name}=={pinned} does not satisfy {dependency}"
    assert {"deepspeed", "bitsandbytes", "flash-attn"} <= set(pins)


# One interpreter runs every entrypoint's --help (as __main__, like `python jobs/<stage>.py --help`), so torch
# and transformers are imported once rather than eight times.
HELP_ALL = """
import runpy, sys
for path in sys.argv[1:]:
    sys.argv = [path, "--help"]
    try:
        if path.endswith(".py"):
            runpy.run_path(path, run_name="__main__")
        else:
            runpy.run_module(path, run_name="__main__")
    except SystemExit as done:
        if done.code not in (0, None):
            raise
    print(f"== {path} answered --help", flush=True)
"""


def test_the_entrypoints_the_chart_and_images_name_answer_help() -> None:
    entrypoints = [str(ROOT / "jobs" / f"{stage}.py") for stage in STAGES] + ["zhllama.cli.main"]
    result = subprocess.run([sys.executable, "-c", HELP_ALL, *entrypoints], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    for entrypoint in entrypoints:
        assert f"== {entrypoint} answered --help" in result.stdout
    assert result.stdout.count("usage:") + result.stdout.count("Usage:") == len(entrypoints)
