"""Behavioural fakes, only at boundaries we cannot cross here (GPU memory)."""

from __future__ import annotations

from localvideo.catalog import ModelSpec
from localvideo.planner import Plan, estimate_memory
from localvideo.runtime.runner import MemoryGuard


def gpu_need(spec: ModelSpec, plan: Plan, phase: str) -> int:
    """What the planner says this phase needs on a GPU (the fake's notion of memory use)."""
    est = estimate_memory(spec, plan.width, plan.height, plan.num_frames, plan.strategy, plan.vae_tiling,
                          compute_dtype=plan.dtype, on_cpu=False)
    return est.phase_bytes(phase)


class SimulatedGPU(MemoryGuard):
    """A GPU with ``budget`` bytes: raises the real ``torch.OutOfMemoryError`` when the planned need of a phase
    exceeds the budget — at load, after denoising step ``at_step``, or before decode (``phases`` picks which)."""

    def __init__(self, spec: ModelSpec, budget: int, phases=("load", "denoise", "decode"), at_step: int = 1):
        self.spec, self.budget, self.phases, self.at_step = spec, int(budget), tuple(phases), at_step
        self.log: list[tuple] = []

    def check(self, phase: str, plan: Plan, step: int | None = None) -> None:
        import torch

        if phase not in self.phases or (phase == "denoise" and step != self.at_step):
            return
        need = gpu_need(self.spec, plan, phase)
        ok = need <= self.budget
        self.log.append((phase, plan.strategy, plan.vae_tiling, plan.num_frames, plan.width, plan.height, ok))
        if not ok:
            raise torch.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate {need - self.budget} bytes (simulated {phase}: needs {need}, "
                f"budget {self.budget})")
