"""bench/gpu.py's CPU smoke mode: the same code path as the GPU benchmark (real diffusers pipeline, real Wan config
cut to 2 layers, random prompt embeddings, FBC, the planner's estimate), at 64x64 on the CPU."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_gpu_bench_smoke_mode_runs_on_the_cpu_and_writes_its_table(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--smoke", "--models", "wan2.1-t2v-1.3b"],
                       capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [line for line in r.stdout.splitlines() if line.startswith("| wan2.1-t2v-1.3b")]
    modes = {row.split("|")[4].strip(): row for row in rows}
    assert set(modes) == {"resident", "fbc", "group_offload"}
    assert "4/4" in modes["resident"]  # 2 steps x cond/uncond: the last block computed every time
    assert "needs a GPU" in modes["group_offload"]
    table = (tmp_path / "gpu_table.md").read_text()
    assert "est/measured" in table and table.count("| wan2.1-t2v-1.3b") == 3
    assert (tmp_path / "gpu_runs.json").is_file()
