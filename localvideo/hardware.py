"""What this machine has: GPUs (total/free memory), RAM, disk, CPU — as a plain value that is easy to fake.

``probe()`` asks ``nvidia-smi`` first and falls back to torch (ROCm, Apple MPS) only when torch is installed and no
NVIDIA tool answered. NVIDIA GPUs count only when this torch can use them: a CPU-only torch (the default wheel on
many systems) on a machine with an NVIDIA GPU plans for the CPU, with a note saying how to install a CUDA build.

RAM and CPUs are the smaller of the host's and the container's: the process's cgroup (v2 ``memory.max`` /
``cpu.max``, v1 ``memory.limit_in_bytes`` / ``cpu.cfs_quota_us``) and its CPU affinity. The cgroup files are read
under :data:`CGROUP_ROOT` for the cgroup named in :data:`PROC_SELF_CGROUP` (both can be passed to :func:`probe`).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import platform
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

GB = 1e9
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")
TORCH_INSTALL_HELP = "https://pytorch.org/get-started/locally/"


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
    unusable_gpus: tuple[GPU, ...] = ()  # seen (nvidia-smi) but this torch cannot use them: see notes
    container_memory_bytes: int | None = None  # a cgroup memory limit below the host's RAM (already applied)
    container_cpus: float | None = None  # a cgroup CPU quota or affinity below the host's CPUs (already applied)

    @property
    def has_gpu(self) -> bool:
        return bool(self.gpus)

    @property
    def best_gpu(self) -> GPU | None:
        return max(self.gpus, key=lambda g: g.free_bytes) if self.gpus else None

    @property
    def unusable_gpu_note(self) -> str | None:
        """Why the GPUs in :attr:`unusable_gpus` are not used and how to fix it (the note :func:`probe` wrote, which
        names them); None when every GPU found is usable."""
        if not self.unusable_gpus:
            return None
        names = sorted({g.name for g in self.unusable_gpus})
        note = next((n for n in self.notes if any(name in n for name in names)), None)
        return note or (f"{', '.join(names)} found, but this torch cannot use it: running on the CPU. Install a "
                        f"torch build for this GPU (see {TORCH_INSTALL_HELP}).")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["gpus"] = [asdict(g) | {"device": g.device} for g in self.gpus]
        d["unusable_gpus"] = [asdict(g) for g in self.unusable_gpus]
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


def _torch_cuda_problem(gpus: list[GPU]) -> str | None:
    """Why this torch cannot use the NVIDIA GPUs nvidia-smi listed, as a note for the user; None when it can."""
    import importlib.util

    names = ", ".join(sorted({g.name for g in gpus}))
    if importlib.util.find_spec("torch") is None:
        return (f"{names} found, but torch is not installed: running on the CPU. Install a CUDA build of torch "
                f"(the command for your driver is at {TORCH_INSTALL_HELP}).")
    import torch

    cuda = getattr(torch.version, "cuda", None)
    if not cuda:
        return (f"{names} found, but this torch ({torch.__version__}) has no CUDA: running on the CPU. Install a "
                f"CUDA build of torch: pip install torch --index-url https://download.pytorch.org/whl/cuXXX "
                f"(XXX for your driver, e.g. cu126: see {TORCH_INSTALL_HELP}).")
    try:
        usable = torch.cuda.is_available()
    except Exception as e:  # noqa: BLE001 - a broken driver raises here in some torch versions
        log.warning("torch.cuda.is_available() failed: %s", e)
        usable = False
    if not usable:
        hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
        why = ("CUDA_VISIBLE_DEVICES hides every GPU" if hidden is not None and hidden.strip() in ("", "-1")
               else "the NVIDIA driver is probably too old for it")
        return (f"{names} found, but this torch ({torch.__version__}, CUDA {cuda}) cannot use it ({why}): running "
                f"on the CPU. Update the NVIDIA driver, or install a torch built for an older CUDA (see "
                f"{TORCH_INSTALL_HELP}).")
    return None


# -- container limits (cgroups) ----------------------------------------------------------------------------------

def _cgroup_dirs(root: Path, proc_self_cgroup: Path, controller: str) -> list[Path]:
    """The folders of this process's cgroup for ``controller`` and of its ancestors, innermost first (a limit
    set on any of them applies). Empty when there is no cgroup file system."""
    try:
        lines = proc_self_cgroup.read_text().splitlines()
    except OSError:
        return []
    if (root / "cgroup.controllers").is_file():  # cgroup v2 (unified)
        base, rel = root, next((ln.split(":", 2)[2] for ln in lines if ln.startswith("0::")), "/")
    else:  # cgroup v1: one hierarchy per controller, e.g. "4:memory:/docker/abc" or "3:cpu,cpuacct:/…"
        entry = next((ln.split(":", 2) for ln in lines
                      if ln.count(":") >= 2 and controller in ln.split(":", 2)[1].split(",")), None)
        if entry is None:
            return []
        base = next((root / n for n in (controller, entry[1]) if (root / n).is_dir()), None)
        if base is None:
            return []
        rel = entry[2]
    here = base / rel.strip("/") if rel.strip("/") else base
    if not here.is_dir():  # the path is the host's view (no cgroup namespace): the mount is this container's own
        here = base
    dirs = [here]
    while here != base and base in here.parents:
        here = here.parent
        dirs.append(here)
    return dirs


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().split()
        return int(text[0]) if text and text[0] != "max" else None
    except (OSError, ValueError):
        return None


def _stat_value(path: Path, *keys: str) -> int:
    try:
        for line in path.read_text().splitlines():
            k, _, v = line.partition(" ")
            if k in keys:
                return int(v)
    except (OSError, ValueError):
        pass
    return 0


def cgroup_memory(root: Path | None = None, proc_self_cgroup: Path | None = None) -> tuple[int, int] | None:
    """(limit, available) bytes of the tightest cgroup memory limit on this process, or None when unlimited.

    Available is the limit less the working set (usage less inactive page cache, which the kernel reclaims), as
    container runtimes count it."""
    root, proc = root or CGROUP_ROOT, proc_self_cgroup or PROC_SELF_CGROUP
    best = None
    for d in _cgroup_dirs(root, proc, "memory"):
        if (d / "memory.max").exists() or (d / "memory.current").exists():  # v2
            limit, usage = _read_int(d / "memory.max"), _read_int(d / "memory.current")
            inactive = _stat_value(d / "memory.stat", "inactive_file")
        else:  # v1; "no limit" is a huge number (PAGE_COUNTER_MAX)
            limit, usage = _read_int(d / "memory.limit_in_bytes"), _read_int(d / "memory.usage_in_bytes")
            inactive = _stat_value(d / "memory.stat", "total_inactive_file", "inactive_file")
            if limit is not None and limit >= 2**62:
                limit = None
        if limit is not None and (best is None or limit < best[0]):
            working = max(0, (usage or 0) - inactive)
            best = (limit, max(0, limit - working))
    return best


def cgroup_cpus(root: Path | None = None, proc_self_cgroup: Path | None = None) -> float | None:
    """CPUs the tightest cgroup CPU quota allows (``cpu.max`` / ``cpu.cfs_quota_us``), or None when unlimited."""
    root, proc = root or CGROUP_ROOT, proc_self_cgroup or PROC_SELF_CGROUP
    best = None
    for d in _cgroup_dirs(root, proc, "cpu"):
        quota = period = None
        try:
            if (d / "cpu.max").exists():
                q, _, p = (d / "cpu.max").read_text().strip().partition(" ")
                quota, period = (None if q == "max" else int(q)), int(p or 100000)
            elif (d / "cpu.cfs_quota_us").exists():
                quota, period = _read_int(d / "cpu.cfs_quota_us"), _read_int(d / "cpu.cfs_period_us") or 100000
        except (OSError, ValueError):
            continue
        if quota is not None and quota > 0 and period:
            cpus = quota / period
            best = cpus if best is None else min(best, cpus)
    return best


def _affinity_cpus() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return None


def probe(disk_path: Path | None = None, use_torch: bool = True, *, cgroup_root: Path | None = None,
          proc_self_cgroup: Path | None = None) -> Hardware:
    import psutil

    gpus = _nvidia_smi()
    notes = []
    unusable: list[GPU] = []
    if gpus and use_torch:
        problem = _torch_cuda_problem(gpus)
        if problem:
            unusable, gpus = gpus, []
            notes.append(problem)
    elif not gpus and use_torch:
        gpus = _torch_gpus()
    if not gpus and not unusable:
        notes.append("No GPU found: generation runs on the CPU (fine for tiny models, hours for real ones).")
    vm = psutil.virtual_memory()
    ram_total, ram_available = int(vm.total), int(vm.available)
    mem = cgroup_memory(cgroup_root, proc_self_cgroup)
    container_memory = None
    if mem is not None and mem[0] < ram_total:
        container_memory = mem[0]
        ram_total, ram_available = mem[0], min(ram_available, mem[1])
        notes.append(f"A container limit applies: {mem[0] / GB:.1f} GB of RAM for this process (the host has "
                     f"{vm.total / GB:.1f} GB); plans use the limit.")
    host_cpus = os.cpu_count() or 1
    quota = cgroup_cpus(cgroup_root, proc_self_cgroup)
    cpus = min(host_cpus, _affinity_cpus() or host_cpus, math.ceil(quota) if quota else host_cpus)
    container_cpus = None
    if cpus < host_cpus:
        container_cpus = min(float(cpus), quota) if quota else float(cpus)
        notes.append(f"A CPU limit applies: {container_cpus:g} of the host's {host_cpus} CPUs for this process.")
    path = Path(disk_path) if disk_path else Path.home()
    while not path.exists() and path != path.parent:
        path = path.parent
    disk = shutil.disk_usage(path).free
    return Hardware(
        gpus=tuple(gpus), ram_total_bytes=ram_total, ram_available_bytes=ram_available,
        disk_free_bytes=int(disk), cpu_count=max(1, cpus), cpu_name=_cpu_name(),
        platform=f"{platform.system()} {platform.release()} {platform.machine()}", source="probe", notes=tuple(notes),
        unusable_gpus=tuple(unusable), container_memory_bytes=container_memory, container_cpus=container_cpus,
    )


def software() -> dict:
    """Versions of the libraries generation runs on, and torch's accelerator build ("cuda 12.4", "rocm 6.2",
    "cpu"). The versions come from package metadata; the build needs torch imported (only when installed).
    Read once per process (the libraries this process runs on do not change under it): /v1/system asks each call."""
    return dict(_software())


@functools.cache
def _software() -> dict:
    from importlib import metadata
    import importlib.util

    out: dict = {}
    for name in ("torch", "diffusers", "transformers"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    build = None
    if out["torch"] is not None and importlib.util.find_spec("torch") is not None:
        import torch

        cuda, hip = getattr(torch.version, "cuda", None), getattr(torch.version, "hip", None)
        build = f"cuda {cuda}" if cuda else f"rocm {hip}" if hip else "cpu"
    out["torch_build"] = build
    return out
