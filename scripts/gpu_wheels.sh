#!/usr/bin/env bash
# Fill .whl/ (git-ignored) with the Python 3.12 x86-64 wheels an offline GPU host lacks, for `make bench-gpu` there:
# ../shared/gpu/make-wheels.sh (deepspeed, megatron-core, webdataset, open_clip_torch and their small dependencies)
# plus pytest with pluggy, iniconfig, pygments (the GPU kernel tests) and regex (open_clip's tokenizer). Run where pip reaches the registry; carry
# .whl with the working tree (the device tool's `carry`).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-.whl}
bash ../shared/gpu/make-wheels.sh "$dir" > /dev/null
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$dir" \
  pytest pluggy iniconfig pygments regex
ls -1 "$dir"
du -sh "$dir"
