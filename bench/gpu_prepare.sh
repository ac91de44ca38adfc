#!/usr/bin/env bash
# Wheels for running bench/gpu.py on the lent GPU machine (Python 3.12, torch/transformers/accelerate installed,
# no diffusers/pydantic, no network). Run here, then carry bench/wheels (gitignored) with the device tool:
#
#   bash bench/gpu_prepare.sh            # → bench/wheels/ (≈ 15 MB)
#   device run, carry ["bench/wheels"], timeout_s 540:
#     pip install -q --no-index --find-links bench/wheels diffusers==0.42.1 pydantic && \
#     python bench/gpu.py --models wan2.1-t2v-1.3b,ltx-video-2b --sizes 480p,720p --steps 3
#
# pip resolves against what the machine already has and takes from bench/wheels only what is missing.
# PYVER=3.11 bash bench/gpu_prepare.sh builds the same set for this machine's Python (to test the install offline).
set -euo pipefail
cd "$(dirname "$0")"
PYVER="${PYVER:-3.12}"
PIP="${PIP:-../.venv/bin/pip}"
rm -rf wheels && mkdir -p wheels
"$PIP" download -q --no-deps -d wheels diffusers==0.42.1 2>/dev/null
"$PIP" download -q --no-deps --only-binary=:all: --python-version "$PYVER" --platform manylinux2014_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d wheels \
  pydantic pydantic-core annotated-types typing-inspection typing-extensions importlib_metadata zipp lazy-importer \
  requests urllib3 idna charset-normalizer certifi pillow regex filelock safetensors 2>/dev/null
ls wheels
du -sh wheels
