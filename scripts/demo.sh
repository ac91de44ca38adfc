#!/usr/bin/env bash
# Set up, then make a video offline with a tiny built-in model (random weights: the video is noise, but every step
# — planning, a real diffusers pipeline, H.264 encoding, metadata — is the real thing).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
.venv/bin/localvideo doctor
# --overwrite: the demo's own file, replaced on each run (without it an existing output is refused)
.venv/bin/localvideo generate "a red fox trotting through fresh snow at dawn" --model tiny-wan --seed 42 \
  --output "${1:-outputs/demo.mp4}" --overwrite
