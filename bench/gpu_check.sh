#!/usr/bin/env bash
# The GPU check of the training paths (bench/gpu_check.py), at most 10 minutes, JSON lines on stdout.
#
#   bench/gpu_check.sh --cpu               tiny shapes on this machine, with the project's .venv
#   bench/gpu_check.sh [--wheels DIR]      on a GPU machine without network: installs what it lacks from DIR
#                                          (default bench/wheels, made by bench/gpu_wheels.sh), then runs
#
# The GPU machine is expected to have torch with CUDA, transformers, peft and accelerate, and none of zhllama's
# other dependencies. zhllama itself runs from pkg/ (PYTHONPATH): no build backend is needed offline.
set -euo pipefail
cd "$(dirname "$0")/.."

cpu=0
wheels=bench/wheels
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) cpu=1 ;;
    --wheels) wheels="$2"; shift ;;
    *) echo "gpu_check.sh: unknown argument $1 (use --cpu or --wheels DIR)" >&2; exit 2 ;;
  esac
  shift
done

if [ "$cpu" = 1 ]; then
  exec timeout 600 "${PYTHON:-.venv/bin/python}" bench/gpu_check.py --cpu
fi

python=${PYTHON:-python}
# What zhllama.train imports (pydantic, boto3 through the store, sentencepiece, psutil) and writes its metrics with
# (tensorboard): required. DeepSpeed, Liger and bitsandbytes: each check says so when its package is absent.
required="pydantic pydantic-core annotated-types typing-inspection boto3 botocore s3transfer jmespath sentencepiece
psutil tensorboard tensorboard-data-server grpcio protobuf markdown werkzeug absl-py"
optional="deepspeed liger-kernel bitsandbytes"
if [ ! -d "$wheels" ]; then
  echo "gpu_check.sh: no wheel directory $wheels; make it with bench/gpu_wheels.sh $wheels" >&2
  exit 2
fi
for package in $required; do
  "$python" -m pip install -q --no-index --no-deps --find-links "$wheels" "$package" >&2 \
    || { echo "gpu_check.sh: $package is not in $wheels; rebuild it with bench/gpu_wheels.sh" >&2; exit 2; }
done
for package in $optional; do
  "$python" -m pip install -q --no-index --no-deps --find-links "$wheels" "$package" >&2 \
    || echo "{\"check\": \"install\", \"package\": \"$package\", \"installed\": false}"
done
PYTHONPATH=pkg${PYTHONPATH:+:$PYTHONPATH} exec timeout 600 "$python" bench/gpu_check.py
