#!/usr/bin/env bash
# Wheels for bench/gpu_check.sh on the offline GPU machine (x86_64 Linux, its python3), into OUT (default
# bench/wheels, git-ignored; name it in the device call's carry), and the size of what the call then carries.
#
#   bench/gpu_wheels.sh [OUT] [--python-version 3.12] [--no-bitsandbytes]
#
# What goes in, for a machine with torch, transformers, peft and accelerate (KINDS.md lists the rest of its image):
#   required  pydantic, resolved with its own needs (pydantic-core must be the exact version pydantic names);
#   fallback  what zhllama.train imports at import time or writes metrics with (pyyaml, tqdm, psutil, sentencepiece,
#             protobuf, tensorboard with absl-py): the image has them, gpu_check.sh installs one only where it lacks it;
#   optional  DeepSpeed, built here as a pure-Python wheel (DS_BUILD_OPS=0), with its needs: hjson, which the image
#             lacks, and einops, msgpack, ninja, py-cpuinfo (1 MiB), which it has; liger-kernel; bitsandbytes
#             (about 41 MiB, so the first to drop when the tree grows).
# Versions: images/constraints.txt (the training image's), else this .venv's, else the newest.
# Fails when the wheels plus the working tree that travels are over the 64 MiB a device call carries.
set -euo pipefail
cd "$(dirname "$0")/.."

out=bench/wheels
python_version=3.12
bitsandbytes=1
while [ $# -gt 0 ]; do
  case "$1" in
    --python-version) python_version="$2"; shift ;;
    --no-bitsandbytes) bitsandbytes=0 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    -*) echo "gpu_wheels.sh: unknown option $1" >&2; exit 2 ;;
    *) out="$1" ;;
  esac
  shift
done
mkdir -p "$out"
rm -f "$out"/*.whl  # one version of each: sizes add up, and an old pydantic-core would not match
pip=(.venv/bin/python -m pip)

pin() {
  grep -i -m1 "^$1==" images/constraints.txt \
    || "${pip[@]}" show "$1" 2>/dev/null | awk -v name="$1" '/^Version:/ {print name "==" $2; found=1}
                                                             END {if (!found) print name}'
}

download() {  # binary wheels for the GPU machine's interpreter; pip matches each manylinux tag exactly
  "${pip[@]}" download -q --only-binary=:all: --implementation cp --python-version "$python_version" \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d "$out" "$@"
}

download "$(pin pydantic)"
optional="hjson einops msgpack ninja py-cpuinfo liger-kernel"
[ "$bitsandbytes" = 1 ] && optional="$optional bitsandbytes"
for package in pyyaml tqdm psutil sentencepiece protobuf tensorboard absl-py $optional; do
  download --no-deps "$(pin "$package")"
done
DS_BUILD_OPS=0 "${pip[@]}" wheel -q --no-deps --no-build-isolation -w "$out" "$(pin deepspeed)"

wheels=$(du -cb "$out"/*.whl | tail -1 | cut -f1)
# The device call carries the working tree (tracked and untracked files that git does not ignore) with OUT.
tree=$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
limit=$((64 * 1048576))
echo "{\"wheels\": $(ls "$out"/*.whl | wc -l), \"wheels_mib\": $((wheels / 1048576)), \"tree_mib\": $((tree / 1048576)),"\
" \"carried_mib\": $(((wheels + tree) / 1048576)), \"limit_mib\": 64, \"bitsandbytes\": $([ "$bitsandbytes" = 1 ] \
&& echo true || echo false)}"
ls -s --block-size=K "$out"/*.whl >&2
if [ $((wheels + tree)) -gt "$limit" ]; then
  echo "gpu_wheels.sh: $out ($((wheels / 1048576)) MiB) and the tree ($((tree / 1048576)) MiB) are over the 64 MiB" \
    "a device call carries; rerun with --no-bitsandbytes" >&2
  exit 1
fi
