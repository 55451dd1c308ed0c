#!/usr/bin/env bash
# Wheels that the GPU machine's Python 3.12 lacks (grain and the two packages it needs beyond
# what that image has), for gpu_check's grain loader figures, into DIR/wheels:
#   bash benchmarks/fetch_device_wheels.sh .gpu     # -> .gpu/wheels (.gpu/ is git-ignored)
# There, before the check:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/wheels/*.whl
#   export PYTHONPATH=/tmp/site:.
set -euo pipefail
dest="${1:?usage: fetch_device_wheels.sh DIR}/wheels"
mkdir -p "$dest"
python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$dest" grain==0.2.18 array-record==0.8.6 portpicker==1.6.0
ls "$dest"
