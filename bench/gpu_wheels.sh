#!/usr/bin/env bash
# Wheels for bench/gpu_check.sh on an offline GPU machine (x86_64 Linux), into OUT (default bench/wheels), and
# their total size: it must stay under the 64 MiB a device call carries.
#
#   bench/gpu_wheels.sh [OUT] [--python-version 3.12]
#
# Versions are the ones CI tests with (images/constraints.txt); DeepSpeed is built here as a pure-Python wheel
# (DS_BUILD_OPS=0, against this venv's torch). bitsandbytes (about 60 MiB alone) does not fit beside the rest:
# it is left out unless BITSANDBYTES=1, and the quantized check then says it did not run.
set -euo pipefail
cd "$(dirname "$0")/.."

out=bench/wheels
python_version=3.12
while [ $# -gt 0 ]; do
  case "$1" in
    --python-version) python_version="$2"; shift ;;
    *) out="$1" ;;
  esac
  shift
done
mkdir -p "$out"
# The version CI tests with: images/constraints.txt, else the one in .venv (pydantic needs its exact pydantic-core).
pin() {
  grep -i "^$1==" images/constraints.txt \
    || .venv/bin/pip show "$1" 2>/dev/null | awk -v name="$1" '/^Version:/ {print name "==" $2; found=1} END {if (!found) print name}'
}

packages="pydantic pydantic-core annotated-types typing-inspection boto3 botocore s3transfer jmespath sentencepiece
psutil tensorboard tensorboard-data-server grpcio protobuf markdown werkzeug absl-py liger-kernel"
[ "${BITSANDBYTES:-0}" = 1 ] && packages="$packages bitsandbytes"
for package in $packages; do
  .venv/bin/pip download -q --no-deps --only-binary=:all: --platform manylinux2014_x86_64 \
    --platform manylinux_2_28_x86_64 --platform any --implementation cp --python-version "$python_version" \
    -d "$out" "$(pin "$package")"
done
DS_BUILD_OPS=0 .venv/bin/pip wheel -q --no-deps --no-build-isolation -w "$out" "$(pin deepspeed)"

bytes=$(du -cb "$out"/*.whl | tail -1 | cut -f1)
echo "{\"wheels\": $(ls "$out"/*.whl | wc -l), \"mib\": $((bytes / 1048576))}"
if [ "$bytes" -gt $((64 * 1048576)) ]; then
  echo "gpu_wheels.sh: $out holds $((bytes / 1048576)) MiB, over the 64 MiB a device call carries" >&2
  exit 1
fi
