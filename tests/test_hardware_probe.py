"""What the hardware probe reports must be what generation can use.

The hardware boundary is faked here, as the hardware module is designed for: a fake ``nvidia-smi`` on PATH (an
NVIDIA GPU this CPU-only torch cannot use), cgroup files in a temporary folder (container limits) and the CPU
affinity. Everything else — doctor, planning, generation, the job service — is real.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import run_cli
from localvideo import hardware
from localvideo.hardware import GB

GiB = 2**30
FAKE_GPU = "NVIDIA GeForce RTX 4090"


@pytest.fixture()
def fake_nvidia_smi(tmp_path) -> dict:
    """A PATH on which `nvidia-smi` answers like a machine with one 24 GB RTX 4090."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "nvidia-smi"
    exe.write_text(f"#!/bin/sh\necho '0, {FAKE_GPU}, 24564, 24000, 8.9'\n")
    exe.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def _cpu_torch() -> bool:
    import torch

    return torch.version.cuda is None or not torch.cuda.is_available()


needs_cpu_torch = pytest.mark.skipif(not _cpu_torch(), reason="this torch can use CUDA")


@needs_cpu_torch
def test_a_gpu_this_torch_cannot_use_is_not_planned_for_and_doctor_says_how_to_fix_it(fake_nvidia_smi):
    r = run_cli("doctor", "--json", env_extra=fake_nvidia_smi)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    hw = d["hardware"]
    assert hw["gpus"] == [] and [g["name"] for g in hw["unusable_gpus"]] == [FAKE_GPU]
    note = next(n for n in hw["notes"] if FAKE_GPU in n)
    assert "has no CUDA: running on the CPU" in note and "pip install torch --index-url" in note
    fits = {m["model"]: m for m in d["models"]}
    assert fits["tiny-wan"]["fits"] and fits["tiny-wan"]["strategy"] == "resident"
    assert not fits["wan2.1-t2v-14b"]["fits"] and "RAM" in fits["wan2.1-t2v-14b"]["reason"]  # planned for the CPU
    text = run_cli("doctor", env_extra=fake_nvidia_smi).stdout
    assert f"{FAKE_GPU}, 25.8 GB: not usable by this torch" in text and "has no CUDA" in text
    assert "cuda:0" not in text


@needs_cpu_torch
def test_the_plan_for_a_real_model_says_the_gpu_is_there_but_this_torch_cannot_use_it(fake_nvidia_smi):
    r = run_cli("generate", "a fox", "--model", "wan2.1-t2v-1.3b", "--frames", "17", "--width", "480", "--height",
                "320", "--dry-run", "--json", env_extra=fake_nvidia_smi)
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)["plan"]
    note = next(n for n in json.loads(run_cli("doctor", "--json", env_extra=fake_nvidia_smi).stdout)["hardware"]
                ["notes"] if FAKE_GPU in n)
    assert plan["device"] == "cpu" and note + " A real model on the CPU takes hours per clip." in plan["warnings"]
    assert not any(w.startswith("No GPU") for w in plan["warnings"])


@needs_cpu_torch
def test_generate_on_a_machine_whose_gpu_this_torch_cannot_use_runs_on_the_cpu(fake_nvidia_smi, tmp_path):
    out = tmp_path / "kite.mp4"
    r = run_cli("generate", "a kite", "--model", "tiny-wan", "--steps", "1", "--frames", "5", "--width", "64",
                "--height", "64", "--seed", "2", "--output", str(out), "--json", env_extra=fake_nvidia_smi)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    d = json.loads(r.stdout)
    assert d["metadata"]["device"] == "cpu" and d["frames"] == 5 and out.is_file()


@needs_cpu_torch
def test_the_job_service_reports_the_unusable_gpu_and_plans_for_the_cpu(fake_nvidia_smi, monkeypatch):
    from localvideo.jobs.service import JobService
    from localvideo.settings import get_settings

    monkeypatch.setenv("PATH", fake_nvidia_smi["PATH"])
    svc = JobService(get_settings(), workers=1)
    system = svc.system()  # what GET /v1/system returns
    assert system["hardware"]["gpus"] == [] and any("has no CUDA" in n for n in system["hardware"]["notes"])
    rows = {m["id"]: m for m in svc.models()}  # GET /v1/models
    assert rows["tiny-wan"]["fits"] and rows["tiny-wan"]["strategy"] == "resident"


def test_doctor_prints_torch_diffusers_and_transformers_versions_and_the_torch_build():
    from importlib import metadata

    import torch

    r = run_cli("doctor", "--json")
    assert r.returncode == 0, r.stderr
    libs = json.loads(r.stdout)["software"]
    build = (f"cuda {torch.version.cuda}" if torch.version.cuda else
             f"rocm {torch.version.hip}" if getattr(torch.version, "hip", None) else "cpu")
    assert libs == {"torch": metadata.version("torch"), "diffusers": metadata.version("diffusers"),
                    "transformers": metadata.version("transformers"), "torch_build": build}
    text = run_cli("doctor").stdout
    assert f"torch {libs['torch']}" in text and f"diffusers {libs['diffusers']}" in text
    assert f"transformers {libs['transformers']}" in text


# -- container limits -------------------------------------------------------------------------------------------

def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _v2(tmp_path, *, rel="/user.slice/app", memory_max="max", current=None, inactive=0, cpu_max="max 100000",
        parent_max=None) -> tuple[Path, Path]:
    """A cgroup v2 tree (under tmp_path/cg) and the /proc/self/cgroup that puts this process in ``rel``."""
    root = tmp_path / "cg"
    _write(root / "cgroup.controllers", "cpu memory pids\n")
    here = root / rel.strip("/")
    _write(here / "memory.max", f"{memory_max}\n")
    _write(here / "memory.current", f"{current if current is not None else GiB // 2}\n")
    _write(here / "memory.stat", f"anon 1000\nfile 2000\ninactive_file {inactive}\nactive_file 5\n")
    _write(here / "cpu.max", f"{cpu_max}\n")
    if parent_max is not None:
        _write(here.parent / "memory.max", f"{parent_max}\n")
    proc = tmp_path / "proc-self-cgroup"
    _write(proc, f"0::{rel}\n")
    return root, proc


def test_a_cgroup_v2_memory_limit_below_the_host_ram_is_the_ram_planned_with(tmp_path):
    import psutil

    root, proc = _v2(tmp_path, memory_max=2 * GiB, current=GiB, inactive=GiB // 4)
    hw = hardware.probe(tmp_path, use_torch=False, cgroup_root=root, proc_self_cgroup=proc)
    assert hw.ram_total_bytes == 2 * GiB and hw.container_memory_bytes == 2 * GiB
    # available: the limit less the working set (usage less inactive page cache), never above the host's
    assert hw.ram_available_bytes == min(psutil.virtual_memory().available, 2 * GiB - (GiB - GiB // 4))
    assert any("container limit applies: 2.1 GB of RAM" in n for n in hw.notes)
    assert hw.to_dict()["container_memory_bytes"] == 2 * GiB


def test_the_tightest_limit_of_the_cgroup_and_its_ancestors_applies(tmp_path):
    root, proc = _v2(tmp_path, memory_max=3 * GiB, parent_max=GiB)
    assert hardware.cgroup_memory(root, proc)[0] == GiB


def test_no_limit_or_a_limit_above_the_host_changes_nothing(tmp_path):
    import psutil

    root, proc = _v2(tmp_path)  # memory.max "max"
    assert hardware.cgroup_memory(root, proc) is None
    root, proc = _v2(tmp_path / "big", memory_max=psutil.virtual_memory().total * 4)
    hw = hardware.probe(tmp_path, use_torch=False, cgroup_root=root, proc_self_cgroup=proc)
    assert hw.ram_total_bytes == psutil.virtual_memory().total and hw.container_memory_bytes is None
    assert not any("container limit" in n for n in hw.notes)


def test_a_cgroup_path_from_the_hosts_view_falls_back_to_the_containers_own_mount(tmp_path):
    """Without a cgroup namespace /proc/self/cgroup names the host's path, which the container's mount lacks."""
    root, proc = _v2(tmp_path, rel="/", memory_max=GiB)
    _write(proc, "0::/kubepods/burstable/pod1/abc\n")
    assert hardware.cgroup_memory(root, proc)[0] == GiB


def test_cgroup_v1_memory_and_cpu_quota(tmp_path):
    root = tmp_path / "cg"
    _write(root / "memory" / "docker" / "abc" / "memory.limit_in_bytes", f"{GiB}\n")
    _write(root / "memory" / "docker" / "abc" / "memory.usage_in_bytes", f"{GiB // 2}\n")
    _write(root / "memory" / "docker" / "abc" / "memory.stat", f"cache 5\ntotal_inactive_file {GiB // 4}\n")
    _write(root / "memory" / "memory.limit_in_bytes", "9223372036854771712\n")  # v1's "no limit"
    _write(root / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_quota_us", "100000\n")
    _write(root / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_period_us", "100000\n")
    proc = tmp_path / "proc-self-cgroup"
    _write(proc, "12:pids:/docker/abc\n4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n")
    assert hardware.cgroup_memory(root, proc) == (GiB, GiB - (GiB // 2 - GiB // 4))
    assert hardware.cgroup_cpus(root, proc) == 1.0
    hw = hardware.probe(tmp_path, use_torch=False, cgroup_root=root, proc_self_cgroup=proc)
    assert hw.ram_total_bytes == GiB and hw.cpu_count == 1


def test_a_cpu_quota_or_affinity_below_the_host_cpus_is_the_cpu_count(tmp_path, monkeypatch):
    host = os.cpu_count()
    root, proc = _v2(tmp_path, cpu_max="50000 100000")  # half a CPU
    hw = hardware.probe(tmp_path, use_torch=False, cgroup_root=root, proc_self_cgroup=proc)
    assert hw.cpu_count == 1
    if host > 1:
        assert hw.container_cpus == 0.5 and any(f"0.5 of the host's {host} CPUs" in n for n in hw.notes)
    root, proc = _v2(tmp_path / "free")  # no quota; the scheduler lets this process use one CPU (taskset)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    hw = hardware.probe(tmp_path, use_torch=False, cgroup_root=root, proc_self_cgroup=proc)
    assert hw.cpu_count == 1


def test_doctor_says_when_a_container_limit_applies(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from localvideo.cli import app

    root, proc = _v2(tmp_path, memory_max=3 * GiB, current=GiB)
    monkeypatch.setattr(hardware, "CGROUP_ROOT", root)
    monkeypatch.setattr(hardware, "PROC_SELF_CGROUP", proc)
    r = CliRunner().invoke(app, ["doctor"])
    assert r.exit_code == 0, r.output
    assert f"of {3 * GiB / GB:.1f} GB (container limit)" in r.output
    assert "A container limit applies: 3.2 GB of RAM" in r.output
    r = CliRunner().invoke(app, ["doctor", "--json"])
    d = json.loads(r.output)
    assert d["hardware"]["container_memory_bytes"] == 3 * GiB and d["hardware"]["ram_total_bytes"] == 3 * GiB
