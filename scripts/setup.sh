#!/usr/bin/env bash
# Idempotent set-up: a virtualenv in .venv with CPU torch (2.13.0 from the local wheel cache where present) and
# localvideo installed in editable mode. Pass "test" to include the test dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
fi
# An unpinned torch would pull a multi-GB CUDA build; on a GPU machine install your CUDA torch first.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/pip install -q "torch==${LOCALVIDEO_TORCH_VERSION:-2.13.0}"
fi
extras=""
[ "${1:-}" = "test" ] && extras="[test,cluster]"  # the tests also run the ray executor on a local Ray instance
.venv/bin/pip install -q -e ".${extras}"
