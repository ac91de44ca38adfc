#!/usr/bin/env bash
# Set up (with test dependencies), then run the whole test suite offline on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
export HF_HUB_OFFLINE=1
.venv/bin/python -m pytest "$@"
