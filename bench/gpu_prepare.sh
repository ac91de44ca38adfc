#!/usr/bin/env bash
# Wheels for running bench/gpu.py on the lent GPU machine (nvidia-h200: Python 3.12 with torch, transformers,
# accelerate, huggingface-hub, pillow, requests, regex, safetensors... but no diffusers and no pydantic; no network).
# The list of what that image holds is /work/.library/device/KINDS.md; the install recipe is the device README's.
#
#   bash bench/gpu_prepare.sh            # here → bench/wheels/ (gitignored, ≈ 11 MB)
#   device run, carry ["bench/wheels"], timeout_s 540, command:
#     python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
#       bench/wheels/*.whl && export PYTHONPATH=/tmp/site && python3 bench/gpu.py
#
# PYVER=3.11 bash bench/gpu_prepare.sh builds the same set for this machine's Python, to test the install offline in
# a venv holding only torch, transformers and accelerate.
set -euo pipefail
cd "$(dirname "$0")"
PYVER="${PYVER:-3.12}"
PIP="${PIP:-../.venv/bin/pip}"
rm -rf wheels && mkdir -p wheels
# one version of each, no dependencies: exactly what the image lacks (pydantic needs typing-extensions >= 4.16)
"$PIP" download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d wheels \
  diffusers==0.42.1 importlib_metadata==8.7.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types \
  typing-inspection typing-extensions==4.16.0 2>/dev/null
ls wheels
du -sh wheels
