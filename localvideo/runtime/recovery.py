"""Runs that survive running out of memory.

The ladder: on a typed ``torch.OutOfMemoryError`` (never a substring match on a message), free memory and step
down one rung at a time, with a bounded number of attempts:

1. VAE tiling — for an OOM while decoding: the decode alone is retried, tiled, from the kept latents; for an OOM
   while the VAE encodes an image-to-video conditioning image/video: the run is retried with a tiled encode;
2. a stronger offload — model → group (block) → group (leaf) → sequential (on a CPU-only machine: group
   block → group leaf);
3. fewer frames (to ~60 %, on the model's frame rule: 81 → 49);
4. a lower resolution (to ~75 % per side, on the model's size multiple).

Rungs that cannot lower the failing phase are skipped (tiling does not help loading or the transformer). Every rung
taken is recorded in the plan (``plan.degraded``) and so in the MP4 tags and sidecar. Denoised latents are saved
to disk before decoding; when decoding fails for good, the error names ``localvideo decode FILE`` to finish later.
A cancel while decoding (checked before each VAE decoder block) is a cancel like any other: the caller discards the
saved latents (:func:`localvideo.generation.render`), as a cancel while denoising leaves none.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..catalog import ModelSpec
from ..errors import DoesNotFit, GenerationFailed
from ..planner import CPU_STRATEGIES, GPU_STRATEGIES, Plan, replan, snap_size
from . import latents as latents_io
from . import runner
from .cache import PipelineCache
from .cache import free_memory as release

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 6
FRAME_FACTOR = 0.6
SIZE_FACTOR = 0.75
PHASE_WORDS = {"load": "loading", "denoise": "denoising", "decode": "decoding", "text": "encoding the prompt",
               "encode": "VAE-encoding the conditioning image"}
# Progress message while this job waits for a cached pipeline another job is using (phase "queued", job running)
WAITING_FOR_MODEL = "Waiting for the model: another job is using it."


@dataclass
class Outcome:
    frames: object  # np.ndarray (F, H, W, 3)
    plan: Plan  # the plan that produced the frames (degraded rungs recorded in plan.degraded)
    load_s: float
    denoise_s: float
    decode_s: float
    cache_hit: bool
    attempts: int
    latents_path: Path | None
    ooms: list[str] = field(default_factory=list)


def _oom_type():
    import torch

    return torch.OutOfMemoryError


def free_memory(cache: PipelineCache | None = None, key=None) -> None:
    """Drop the pipeline that ran out of memory (if any), then free what torch holds."""
    if cache is not None and key is not None and key in cache:
        cache.evict(key)  # frees memory itself
    else:
        release()


def next_rung(plan: Plan, spec: ModelSpec, phase: str) -> Plan | None:
    """The plan one rung down the ladder for an OOM in ``phase``, or None when the ladder is exhausted."""
    why = f"after OOM while {PHASE_WORDS.get(phase, phase)}"
    if phase == "decode" and not plan.vae_tiling:
        return replan(plan, spec, vae_tiling=True, degraded=f"VAE tiling on {why} (denoising kept)")
    if phase == "encode" and not plan.vae_tiling:
        return replan(plan, spec, vae_tiling=True, degraded=f"VAE tiling on {why}")
    order = CPU_STRATEGIES if plan.device == "cpu" else GPU_STRATEGIES
    if plan.strategy in order:
        later = order[order.index(plan.strategy) + 1:]
        if later:
            return replan(plan, spec, strategy=later[0], degraded=f"strategy {plan.strategy} → {later[0]} {why}")
    rule = spec.frame_rule
    if plan.num_frames > 1:
        target = int((plan.num_frames - 1) * FRAME_FACTOR) + 1
        frames = rule.step * ((target - 1) // rule.step) + 1  # round down onto the rule
        frames = min(frames, plan.num_frames - rule.step)
        if frames >= 1:
            return replan(plan, spec, num_frames=frames, degraded=f"frames {plan.num_frames} → {frames} {why}")
    m = spec.size_multiple
    if not spec.fixed_size and (plan.width > m or plan.height > m):
        w = min(plan.width - m, snap_size(int(plan.width * SIZE_FACTOR), m)) if plan.width > m else plan.width
        h = min(plan.height - m, snap_size(int(plan.height * SIZE_FACTOR), m)) if plan.height > m else plan.height
        return replan(plan, spec, width=max(m, w), height=max(m, h),
                      degraded=f"size {plan.width}x{plan.height} → {max(m, w)}x{max(m, h)} {why}")
    return None


def generate_frames(spec: ModelSpec, model_path: Path, plan: Plan, cache: PipelineCache, *,
                    on_progress=None, cancel=None, guard: runner.MemoryGuard | None = None,
                    latents_path: Path | None = None, max_attempts: int = MAX_ATTEMPTS,
                    inputs=None, latents_extra=None) -> Outcome:
    """Load (warm cache), denoise and decode, walking down the OOM ladder as needed.

    ``inputs`` are extra pipeline inputs (i2v conditioning images): a dict, or a function of the plan so that a
    rung that changes the size gets images fitted to the new size. ``latents_extra`` (a dict, or a function called
    when they are saved) is the run's metadata beyond the plan, kept with the latents so that ``localvideo decode``
    restores it (the prompt as typed, how it was rewritten, the conditioning images).
    """
    OOM = _oom_type()
    attempts, ooms = 0, []
    load_s = 0.0
    t_start = time.perf_counter()

    def waiting(now_waiting: bool) -> None:  # another job is using this pipeline: show the wait, not "loading"
        if on_progress is not None:
            on_progress(runner.Progress("queued" if now_waiting else "loading", 0, plan.steps,
                                        time.perf_counter() - t_start, None,
                                        WAITING_FOR_MODEL if now_waiting else None))

    while True:
        attempts += 1
        key = runner.cache_key(spec, model_path, plan)
        phase = "load"
        try:
            t = time.perf_counter()
            # The pipeline is leased for denoising *and* decoding: no other job runs on it meanwhile (its scheduler
            # keeps per-call state), and it is not evicted under this run. Handed back however the run ends.
            with runner.use_pipeline(cache, spec, model_path, plan, guard, cancel=cancel,
                                     on_wait=waiting) as lease:
                pipe, hit = lease.value, lease.hit
                load_s += time.perf_counter() - t - lease.waited_s
                phase = "denoise"
                den = runner.denoise(pipe, plan, on_progress, cancel, guard,
                                     inputs=inputs(plan) if callable(inputs) else inputs)
                phase = "decode"
                if latents_path is not None:
                    extra = latents_extra() if callable(latents_extra) else latents_extra
                    latents_io.save(latents_path, den.latents, den.generator_state, plan.to_dict(), extra=extra)
                if on_progress is not None:
                    on_progress(runner.Progress("decoding", plan.steps, plan.steps, den.denoise_s, None))
                t = time.perf_counter()
                frames, plan = decode_with_recovery(pipe, spec, plan, den.latents, den.generator,
                                                    den.generator_state, guard=guard, latents_path=latents_path,
                                                    ooms=ooms, cancel=cancel)
                return Outcome(frames, plan, load_s, den.denoise_s, time.perf_counter() - t, hit, attempts,
                               latents_path, ooms)
        except OOM as e:
            phase = getattr(e, "localvideo_phase", phase)  # the VAE encoding an I2V conditioning image/video
            ooms.append(f"{phase}: {str(e).splitlines()[0][:200] if str(e) else 'out of memory'}")
            log.warning("out of memory while %s (attempt %d): %s", PHASE_WORDS[phase], attempts, e)
        # Out of memory. The lease is handed back by now, and the exception (with its frames) is gone: drop this
        # run's references too, so that evicting the pipeline frees it. The eviction waits if another job took the
        # pipeline meanwhile (never freed under a running job).
        pipe = lease = den = None
        free_memory(cache, key)
        lower = next_rung(plan, spec, phase) if attempts < max_attempts else None
        if lower is None:
            raise DoesNotFit(
                f"{spec.id} ran out of memory while {PHASE_WORDS[phase]} {attempts} times; every step down "
                f"the ladder was tried ({'; '.join(plan.degraded) or 'none possible'}).",
                hint="Close other GPU programs, or ask for fewer frames or a smaller size.",
                model=spec.id, degraded=list(plan.degraded))
        plan = lower
        if on_progress is not None:
            on_progress(runner.Progress("loading", 0, plan.steps, 0.0, None))


def decode_with_recovery(pipe, spec: ModelSpec, plan: Plan, latents, generator=None, generator_state=None, *,
                         guard: runner.MemoryGuard | None = None, latents_path: Path | None = None,
                         ooms: list[str] | None = None, cancel=None):
    """Decode; on OOM retry the decode only, tiled. Never re-runs denoising. Returns (frames, plan).

    ``cancel`` stops the decode between VAE decoder blocks (:class:`~localvideo.errors.Cancelled`); the caller
    discards the saved latents then, as after a cancel while denoising."""
    OOM = _oom_type()
    ooms = ooms if ooms is not None else []
    while True:
        try:
            return runner.decode_latents(pipe, plan, latents, generator, generator_state, guard, cancel), plan
        except OOM as e:
            ooms.append(f"decode: {str(e).splitlines()[0][:200] if str(e) else 'out of memory'}")
            free_memory()
            if not plan.vae_tiling:
                plan = next_rung(plan, spec, "decode")
                continue
            # The error promises these latents to the user (localvideo decode FILE): from here on they are theirs.
            latents_io.release(latents_path)
            where = f" The denoised latents are saved at {latents_path}." if latents_path else ""
            raise GenerationFailed(
                f"Decoding ran out of memory even with VAE tiling.{where}",
                hint=(f"Free GPU memory, then finish it with: localvideo decode {latents_path}" if latents_path
                      else "Free GPU memory and try again."),
                latents=str(latents_path) if latents_path else None,
            ) from None
