"""What this machine has: GPUs (total/free memory), RAM, disk, CPU — as a plain value that is easy to fake.

``probe()`` asks ``nvidia-smi`` first (fast, no torch import) and falls back to torch (ROCm, Apple MPS) only when
torch is installed and no NVIDIA tool answered.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

GB = 1e9


@dataclass(frozen=True)
class GPU:
    index: int
    name: str
    total_bytes: int
    free_bytes: int
    backend: str = "cuda"  # cuda | rocm | mps
    capability: str | None = None

    @property
    def device(self) -> str:
        return "mps" if self.backend == "mps" else f"cuda:{self.index}"


@dataclass(frozen=True)
class Hardware:
    gpus: tuple[GPU, ...] = ()
    ram_total_bytes: int = 0
    ram_available_bytes: int = 0
    disk_free_bytes: int = 0
    cpu_count: int = 1
    cpu_name: str = ""
    platform: str = ""
    source: str = "probe"
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def has_gpu(self) -> bool:
        return bool(self.gpus)

    @property
    def best_gpu(self) -> GPU | None:
        return max(self.gpus, key=lambda g: g.free_bytes) if self.gpus else None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["gpus"] = [asdict(g) | {"device": g.device} for g in self.gpus]
        return d

    @classmethod
    def assumed(cls, vram_gb: float | None, ram_gb: float = 64.0, disk_gb: float = 500.0, cpus: int = 8) -> "Hardware":
        """A hypothetical machine ("what would fit on a 24 GB GPU?"); ``vram_gb=None`` means CPU only."""
        gpus = ()
        if vram_gb:
            b = int(vram_gb * GB)
            gpus = (GPU(0, f"assumed {vram_gb:g} GB GPU", b, b),)
        return cls(gpus, int(ram_gb * GB), int(ram_gb * GB), int(disk_gb * GB), cpus, "assumed", "assumed", "assumed")


def _nvidia_smi() -> list[GPU]:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=index,name,memory.total,memory.free,compute_cap", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError) as e:  # driver missing, GPU lost, ...
        log.warning("nvidia-smi failed: %s", e)
        return []
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 4:
            continue
        try:
            gpus.append(GPU(int(parts[0]), parts[1], int(float(parts[2]) * 2**20), int(float(parts[3]) * 2**20),
                            "cuda", parts[4] if len(parts) > 4 else None))
        except ValueError:
            continue
    return gpus


def _torch_gpus() -> list[GPU]:
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return []
    import torch

    gpus = []
    if torch.cuda.is_available():
        backend = "rocm" if getattr(torch.version, "hip", None) else "cuda"
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            p = torch.cuda.get_device_properties(i)
            gpus.append(GPU(i, p.name, int(total), int(free), backend, f"{p.major}.{p.minor}"))
    elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        import psutil

        vm = psutil.virtual_memory()  # unified memory
        gpus.append(GPU(0, "Apple MPS", int(vm.total), int(vm.available), "mps"))
    return gpus


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def probe(disk_path: Path | None = None, use_torch: bool = True) -> Hardware:
    import psutil

    gpus = _nvidia_smi()
    notes = []
    if not gpus and use_torch:
        gpus = _torch_gpus()
    if not gpus:
        notes.append("No GPU found: generation runs on the CPU (fine for tiny models, hours for real ones).")
    vm = psutil.virtual_memory()
    path = Path(disk_path) if disk_path else Path.home()
    while not path.exists() and path != path.parent:
        path = path.parent
    disk = shutil.disk_usage(path).free
    return Hardware(
        gpus=tuple(gpus), ram_total_bytes=int(vm.total), ram_available_bytes=int(vm.available),
        disk_free_bytes=int(disk), cpu_count=os.cpu_count() or 1, cpu_name=_cpu_name(),
        platform=f"{platform.system()} {platform.release()} {platform.machine()}", source="probe", notes=tuple(notes),
    )
