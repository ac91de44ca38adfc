"""The runner: load a diffusers pipeline, apply the plan's memory strategy, run it with progress and cancellation.

Cancellation raises :class:`~localvideo.errors.Cancelled` from ``callback_on_step_end``, which leaves the
pipeline before VAE decode (setting ``pipe._interrupt`` would still decode). The decode that follows checks the same
cancel before it starts and before each VAE decoder block (:func:`localvideo.runtime.decode.cancellable`).
"""

from __future__ import annotations

import contextlib

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..catalog import ModelSpec
from ..errors import Cancelled, GenerationFailed, InvalidRequest
from ..planner import NEEDS_ACCELERATOR, Plan
from .cache import PipelineCache
from .decode import CANCELLED_WHILE_DECODING, DECODABLE, cancellable, decode

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Progress:
    phase: str  # loading | denoising | decoding | encoding | done
    step: int = 0
    total: int = 0
    elapsed_s: float = 0.0
    eta_s: float | None = None
    message: str | None = None  # one true sentence when the phase alone would mislead (e.g. waiting for the model)

    def to_dict(self) -> dict:
        return {"phase": self.phase, "step": self.step, "total": self.total,
                "elapsed_s": round(self.elapsed_s, 3), "eta_s": None if self.eta_s is None else round(self.eta_s, 3),
                "message": self.message}


ProgressFn = Callable[[Progress], None]
CancelCheck = Callable[[], bool] | threading.Event | None


@dataclass
class RunOutput:
    frames: Any  # np.ndarray (F, H, W, 3) float32 in [0, 1]
    load_s: float
    denoise_s: float
    decode_s: float
    cache_hit: bool


def _is_cancelled(cancel: CancelCheck) -> bool:
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event):
        return cancel.is_set()
    return bool(cancel())


def _torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _module_bytes(pipe) -> int:
    import torch

    total = 0
    for comp in pipe.components.values():
        if isinstance(comp, torch.nn.Module):
            total += sum(p.numel() * p.element_size() for p in comp.parameters())
            total += sum(b.numel() * b.element_size() for b in comp.buffers())
    return total


def load_pipeline(spec: ModelSpec, path: Path, plan: Plan):
    """Load the pipeline from a local folder (never the network) with per-component dtypes."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    cls = getattr(diffusers, plan.pipeline, None) or diffusers.DiffusionPipeline  # t2v or i2v class
    dtypes: dict[str, Any] = {"default": _torch_dtype(plan.dtype)}
    for comp, name in spec.component_dtypes.items():
        # keep fp32 islands (e.g. Wan's VAE); other overrides follow the plan's dtype on CPU
        dtypes[comp] = _torch_dtype(name if (name == "float32" or plan.device != "cpu") else plan.dtype)
    from . import options  # quantization, LoRAs, attention backend, compile (localvideo.runtime.options)

    try:
        task_kwargs = spec.i2v_load_kwargs if plan.task == "i2v" else {}
        pipe = cls.from_pretrained(str(path), dtype=dtypes, local_files_only=True, **task_kwargs,
                                   **options.load_kwargs(path, plan))
    except OSError as e:
        raise GenerationFailed(f"Could not load {spec.id} from {path}: {e}",
                               hint=f"The files may be incomplete; run `localvideo models pull {spec.id}` again.") from e
    pipe.set_progress_bar_config(disable=True)
    options.before_strategy(pipe, plan)
    apply_strategy(pipe, plan)
    options.after_strategy(pipe, plan)
    return pipe


def apply_strategy(pipe, plan: Plan) -> None:
    import torch

    device = plan.device
    on_accel = device != "cpu"
    if plan.strategy in NEEDS_ACCELERATOR and not on_accel:
        raise InvalidRequest(f"The {plan.strategy} strategy needs a GPU and this plan runs on the CPU.",
                             hint="Use --strategy auto.")
    if plan.strategy == "resident":
        pipe.to(device)
    elif plan.strategy == "model_offload":
        pipe.enable_model_cpu_offload(device=device)
    elif plan.strategy == "sequential_offload":
        pipe.enable_sequential_cpu_offload(device=device)
    elif plan.strategy in ("group_offload", "group_offload_leaf"):
        use_stream = device.startswith("cuda") and torch.cuda.is_available()
        block = plan.strategy == "group_offload"
        pipe.enable_group_offload(onload_device=torch.device(device), offload_device=torch.device("cpu"),
                                  offload_type="block_level" if block else "leaf_level",
                                  num_blocks_per_group=1 if block else None, use_stream=use_stream,
                                  exclude_modules=["vae"])
        if hasattr(pipe, "vae"):
            pipe.vae.to(device)
    else:
        raise InvalidRequest(f"Unknown memory strategy '{plan.strategy}'.")


def cache_key(spec: ModelSpec, path: Path, plan: Plan) -> tuple:
    from .options import pipeline_key

    return (spec.id, str(path), plan.dtype, plan.device, plan.strategy) + pipeline_key(plan) + (plan.pipeline,)


def get_pipeline(cache: PipelineCache, spec: ModelSpec, path: Path, plan: Plan, guard: "MemoryGuard | None" = None):
    """``(pipeline, was_cached)`` without a lease: only for a caller that is the cache's sole user (scripts, tests).
    Anything that may run beside other jobs uses :func:`use_pipeline`. A pipeline whose load fails (e.g. out of
    memory) never enters the cache."""
    return cache.get_or_load(cache_key(spec, path, plan), lambda: _load_sized(spec, path, plan, guard))


def use_pipeline(cache: PipelineCache, spec: ModelSpec, path: Path, plan: Plan, guard: "MemoryGuard | None" = None,
                 *, cancel: CancelCheck = None, on_wait: Callable[[bool], None] | None = None):
    """Lease the plan's pipeline for a ``with`` block (a :class:`~localvideo.runtime.cache.Lease`: ``.value``,
    ``.hit``, ``.waited_s``): no other job runs on it meanwhile, and it is not evicted under this one. Waits while
    another job uses it (``on_wait(True)`` when the wait begins, ``on_wait(False)`` when it ends; ``cancel`` stops
    the wait with :class:`~localvideo.errors.Cancelled`)."""
    return cache.use(cache_key(spec, path, plan), lambda: _load_sized(spec, path, plan, guard), cancel=cancel,
                     on_wait=on_wait)


def _load_sized(spec: ModelSpec, path: Path, plan: Plan, guard: "MemoryGuard | None" = None):
    pipe = load_pipeline(spec, path, plan)
    if guard is not None:
        guard.check("load", plan)
    return pipe, _module_bytes(pipe)


class MemoryGuard:
    """Hook at the GPU-memory boundary, called at load, after each denoising step and before decode.

    The real GPU needs none (torch raises ``torch.OutOfMemoryError`` itself); tests install a behavioural budget
    that raises the same error when the plan's estimate for that phase exceeds it.
    """

    def check(self, phase: str, plan: Plan, step: int | None = None) -> None:  # pragma: no cover - interface
        return None


def _configure_for_run(pipe, plan: Plan) -> None:
    from .options import configure_run

    configure_run(pipe, plan)  # step cache (removed when the plan has none) and LoRA weights
    vae = getattr(pipe, "vae", None)
    if vae is not None:
        if plan.vae_tiling and hasattr(vae, "enable_tiling"):
            vae.enable_tiling()
        elif hasattr(vae, "disable_tiling"):
            vae.disable_tiling()
    sched = pipe.scheduler
    if plan.flow_shift is not None:
        for key in ("flow_shift", "shift"):
            if key in sched.config and not sched.config.get("use_dynamic_shifting", False):
                if float(sched.config[key]) != float(plan.flow_shift):
                    pipe.scheduler = type(sched).from_config(sched.config, **{key: plan.flow_shift})
                break


def call_kwargs(pipe, plan: Plan) -> dict:
    """Keyword arguments for ``pipe(...)``: the common ones plus those this pipeline class accepts."""
    import inspect

    accepted = set(inspect.signature(pipe.__call__).parameters)
    kw: dict[str, Any] = {
        "prompt": plan.prompt,
        "negative_prompt": plan.negative_prompt or None,
        "height": plan.height,
        "width": plan.width,
        "num_frames": plan.num_frames,
        "num_inference_steps": plan.steps,
        "guidance_scale": plan.guidance,
        "output_type": "latent" if plan.family in DECODABLE else "np",
    }
    if plan.max_sequence_length is not None:
        kw["max_sequence_length"] = plan.max_sequence_length
    if "frame_rate" in accepted:
        kw["frame_rate"] = int(round(plan.fps))
    kw.update(plan.call_kwargs)
    return {k: v for k, v in kw.items() if k in accepted}


@dataclass
class Denoised:
    latents: Any  # torch.Tensor as the pipeline returns it for output_type="latent"
    generator: Any  # the torch.Generator, in the state the pipeline left it (LTX draws decode noise from it)
    generator_state: Any
    denoise_s: float


@contextlib.contextmanager
def _encode_phase(pipe, plan: Plan, guard: MemoryGuard | None):
    """While the pipeline runs, its VAE's ``encode`` (image-to-video conditioning) is a phase of its own: the guard
    checks it, and an out-of-memory error raised inside it carries ``localvideo_phase = "encode"`` so that recovery
    tries VAE tiling first (a tiled encode needs a fraction of the memory). The pipeline is leased to this run
    alone (see ``use_pipeline``), so wrapping its VAE for the call's duration is safe."""
    import torch

    vae = getattr(pipe, "vae", None)
    if vae is None or not callable(getattr(vae, "encode", None)):
        yield
        return
    own = "encode" in vars(vae)
    inner = vae.encode

    def encode(*args, **kwargs):
        try:
            if guard is not None:
                guard.check("encode", plan)
            return inner(*args, **kwargs)
        except torch.OutOfMemoryError as e:
            e.localvideo_phase = "encode"
            raise

    vae.encode = encode
    try:
        yield
    finally:
        if own:
            vae.encode = inner
        else:
            del vae.encode


def denoise(pipe, plan: Plan, on_progress: ProgressFn | None = None, cancel: CancelCheck = None,
            guard: MemoryGuard | None = None, inputs: dict | None = None) -> Denoised:
    """Run the denoising loop and stop before the VAE: returns latents. Same plan (and seed) → same latents."""
    import torch

    if plan.family not in DECODABLE:
        raise GenerationFailed(f"localvideo cannot decode latents of the '{plan.family}' family.")
    _configure_for_run(pipe, plan)
    kwargs = call_kwargs(pipe, plan) | (inputs or {})  # inputs: conditioning images (PIL) for i2v
    generator = torch.Generator("cpu").manual_seed(plan.seed)
    t0 = time.perf_counter()

    def emit(p: Progress) -> None:
        if on_progress is not None:
            on_progress(p)

    def on_step_end(_pipe, i, _t, cb_kwargs):
        now = time.perf_counter()
        done = i + 1
        per_step = (now - t0) / done
        emit(Progress("denoising", done, plan.steps, now - t0, per_step * (plan.steps - done)))
        if _is_cancelled(cancel):
            raise Cancelled("Generation cancelled; no video was written.")
        if guard is not None:
            guard.check("denoise", plan, step=done)
        return {}

    if _is_cancelled(cancel):
        raise Cancelled("Generation cancelled before it started; no video was written.")
    emit(Progress("denoising", 0, plan.steps, 0.0, None))
    with torch.inference_mode(), _encode_phase(pipe, plan, guard):
        out = pipe(generator=generator, callback_on_step_end=on_step_end,
                   callback_on_step_end_tensor_inputs=["latents"], **kwargs)
    latents = out.frames
    if not torch.isfinite(latents).all():
        raise GenerationFailed("Denoising produced NaN/Inf latents; no video was written.",
                               hint="Try another dtype or fewer steps; report the plan if it repeats.")
    return Denoised(latents, generator, generator.get_state(), time.perf_counter() - t0)


def decode_latents(pipe, plan: Plan, latents, generator=None, generator_state=None,
                   guard: MemoryGuard | None = None, cancel: CancelCheck = None):
    """VAE-decode latents for this plan; returns float32 frames (F, H, W, 3) in [0, 1].

    ``cancel`` is checked before the decode and before each VAE decoder block (:class:`Cancelled`)."""
    import numpy as np

    if _is_cancelled(cancel):
        raise Cancelled(CANCELLED_WHILE_DECODING)
    vae = pipe.vae
    if plan.vae_tiling and hasattr(vae, "enable_tiling"):
        vae.enable_tiling()
    elif hasattr(vae, "disable_tiling"):
        vae.disable_tiling()
    if generator is not None and generator_state is not None:
        generator.set_state(generator_state)  # a retried decode draws the same noise as the first try
    if guard is not None:
        guard.check("decode", plan)
    with cancellable(vae, cancel):
        frames = decode(pipe, latents, plan.family, num_frames=plan.num_frames, height=plan.height, width=plan.width,
                        generator=generator, decode_timestep=plan.call_kwargs.get("decode_timestep"),
                        decode_noise_scale=plan.call_kwargs.get("decode_noise_scale"))
    if _is_cancelled(cancel):
        raise Cancelled(CANCELLED_WHILE_DECODING)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise GenerationFailed(f"The VAE returned frames of shape {frames.shape}, expected (F, H, W, 3).")
    if not np.isfinite(frames).all():
        raise GenerationFailed("The VAE produced NaN/Inf pixels; no video was written.",
                               hint="Try a float32 VAE; report the plan if it repeats.")
    return frames


def run(pipe, plan: Plan, on_progress: ProgressFn | None = None, cancel: CancelCheck = None,
        cache_hit: bool = False, load_s: float = 0.0, inputs: dict | None = None) -> RunOutput:
    """Denoise then decode, without recovery (the OOM ladder lives in :mod:`localvideo.runtime.recovery`)."""
    den = denoise(pipe, plan, on_progress, cancel, inputs=inputs)
    if on_progress is not None:
        on_progress(Progress("decoding", plan.steps, plan.steps, den.denoise_s, None))
    t = time.perf_counter()
    frames = decode_latents(pipe, plan, den.latents, den.generator, den.generator_state, cancel=cancel)
    return RunOutput(frames=frames, load_s=load_s, denoise_s=den.denoise_s, decode_s=time.perf_counter() - t,
                     cache_hit=cache_hit)
