#!/usr/bin/env bash
# The GPU check of the training paths (bench/gpu_check.py): JSON lines on stdout, logs on stderr, within 570 s.
#
#   bench/gpu_check.sh --cpu [--wheels DIR]   tiny shapes on this machine, with the project's .venv (or $PYTHON)
#   bench/gpu_check.sh [--wheels DIR]         on the GPU machine (python3 there, or $PYTHON): installs what it
#                                             lacks from DIR (default bench/wheels, made by bench/gpu_wheels.sh)
#
# A device call: bash bench/gpu_wheels.sh here, then run `bash bench/gpu_check.sh` with carry ["bench/wheels"] and
# timeout_s 600. zhllama itself runs from pkg/ (PYTHONPATH) without its dependencies: offline there is no build
# backend to install it with, and the tree that travels is always the code under test. Each missing module is
# installed from DIR only where the interpreter lacks it; the required ones (zhllama.train's import-time needs)
# stop the check when they cannot be installed, the optional ones (DeepSpeed, Liger, bitsandbytes) say so in a line
# and their check reports it.
set -uo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
budget_s=${GPU_CHECK_BUDGET_S:-570}

cpu=0
wheels=""
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) cpu=1 ;;
    --wheels) wheels="$2"; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1 (use --cpu and/or --wheels DIR)" >&2; exit 2 ;;
  esac
  shift
done
if [ "$cpu" = 1 ]; then
  python=${PYTHON:-.venv/bin/python}
else
  python=${PYTHON:-python3}
  wheels=${wheels:-bench/wheels}
fi

line() { echo "{\"check\": \"install\", $1}"; }

has_module() {  # find_spec of a dotted name imports its parents, which may be what is missing
  "$python" -c "import importlib.util, sys
try: sys.exit(importlib.util.find_spec('$1') is None)
except ImportError: sys.exit(1)" 2>/dev/null
}

# install MODULE PACKAGE required|optional [pip options]: from $wheels, only where MODULE does not import.
install() {
  local module=$1 package=$2 need=$3
  shift 3
  if has_module "$module"; then
    return 0
  fi
  if "$python" -m pip install -q --no-index --no-cache-dir --no-compile --find-links "$wheels" "$@" "$package" >&2
  then
    line "\"package\": \"$package\", \"installed\": true"
    return 0
  fi
  line "\"package\": \"$package\", \"installed\": false, \"needed\": \"$need\", \"wheels\": \"$wheels\""
  [ "$need" = optional ]
}

if [ -n "$wheels" ]; then
  if [ ! -d "$wheels" ]; then
    echo "gpu_check.sh: no wheel directory $wheels; make it with bench/gpu_wheels.sh $wheels and carry it" >&2
    exit 2
  fi
  failed=0
  # pydantic through pip's resolver: pydantic-core must be the exact version it names, typing-extensions new enough.
  install pydantic pydantic required || failed=1
  for pair in yaml:pyyaml tqdm:tqdm psutil:psutil sentencepiece:sentencepiece google.protobuf:protobuf \
              absl:absl-py tensorboard:tensorboard; do
    install "${pair%%:*}" "${pair#*:}" required --no-deps || failed=1
  done
  if [ "$failed" = 1 ]; then
    echo "gpu_check.sh: a required package did not install; rebuild $wheels with bench/gpu_wheels.sh" >&2
    exit 2
  fi
  # Not through the resolver: it would walk the image's torch too, whose needs are not all in $wheels.
  for pair in hjson:hjson einops:einops msgpack:msgpack ninja:ninja cpuinfo:py-cpuinfo deepspeed:deepspeed; do
    install "${pair%%:*}" "${pair#*:}" optional --no-deps
  done
  install liger_kernel liger-kernel optional --no-deps  # torch and triton are the image's
  install bitsandbytes bitsandbytes optional --no-deps
fi

left=$((budget_s - (SECONDS - started)))
export PYTHONPATH=$PWD/pkg${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
# The script stops starting runs 30 s before the end; timeout only catches a run that hangs.
exec timeout --kill-after=10 "$left" "$python" bench/gpu_check.py $([ "$cpu" = 1 ] && echo --cpu) \
  --budget-s $((left - 30))
