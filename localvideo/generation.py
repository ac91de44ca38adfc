"""One generation, end to end: request → plan → run → encode → record.

This is what the CLI, the Python API and (later) the job workers call. It owns no state except the process-wide
pipeline cache, which keeps loaded models warm between calls.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import __version__
from .catalog import ModelSpec, get_model
from .errors import Cancelled, OutputError
from .hardware import Hardware, probe
from .planner import Plan, plan as make_plan, replan
from .prompts import prepare_prompt
from .request import GenerationRequest
from .settings import Settings, get_settings

log = logging.getLogger(__name__)

_CACHE = None


def default_cache(settings: Settings | None = None):
    """The process-wide pipeline cache (budget: LOCALVIDEO_CACHE_BUDGET_GB, else 60 % of RAM)."""
    global _CACHE
    if _CACHE is None:
        import psutil

        from .runtime.cache import PipelineCache

        settings = settings or get_settings()
        budget = settings.cache_budget_gb * 1e9 if settings.cache_budget_gb else psutil.virtual_memory().total * 0.6
        _CACHE = PipelineCache(int(budget))
    return _CACHE


@dataclass
class GenerationResult:
    path: Path
    sidecar: Path
    plan: Plan
    metadata: dict
    timings: dict
    cache_hit: bool
    frames: int = 0
    width: int = 0
    height: int = 0
    fps: float = 0.0
    warnings: list[str] = field(default_factory=list)
    latents: Path | None = None  # the kept denoised latents (``keep_latents=True``), for ``localvideo decode``

    @property
    def seed(self) -> int:
        return self.plan.seed

    def to_dict(self) -> dict:
        return {
            "path": str(self.path), "sidecar": str(self.sidecar), "model": self.plan.model,
            "random_weights": self.plan.random_weights, "seed": self.seed, "frames": self.frames,
            "width": self.width, "height": self.height, "fps": self.fps, "strategy": self.plan.strategy,
            "vae_tiling": self.plan.vae_tiling, "cache_hit": self.cache_hit, "timings": self.timings,
            "notes": list(self.plan.notes), "degraded": list(self.plan.degraded), "warnings": self.warnings,
            "metadata": self.metadata, "latents": str(self.latents) if self.latents else None,
        }


def prepare(request: GenerationRequest, hardware: Hardware | None = None,
            settings: Settings | None = None) -> tuple[ModelSpec, Plan]:
    """Resolve the model and plan the request (no torch)."""
    settings = settings or get_settings()
    spec = get_model(request.model)
    hw = hardware if hardware is not None else probe(settings.home)
    request, _ = prepare_prompt(request, spec.family, hardware=hw, settings=settings)  # no-op once prepared
    size = None
    if request.image:
        from .runtime.conditioning import image_size

        size = image_size(request.image)  # validates the image before anything heavy
        if request.last_image:
            image_size(request.last_image)
    return spec, make_plan(request, spec, hw, image_size=size)


def claim_output(plan: Plan, settings: Settings, overwrite: bool) -> Path:
    """Check the plan's output (:func:`localvideo.media.encode.check_output_path`) and claim it for this run
    (:func:`~localvideo.media.encode.reserve_output`; release it with ``release_output``). A name chosen for the
    user (no output, or a folder) is made unique; a file the user named is refused if it exists, unless
    ``overwrite``."""
    from .media.encode import check_output_path, output_target, reserve_output

    path, chosen = output_target(plan.output, _default_name(plan), settings.outputs)
    return reserve_output(check_output_path(path, overwrite=overwrite or chosen), unique=chosen)


def _default_name(plan: Plan) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{plan.model}-seed{plan.seed}.mp4"


def build_metadata(plan: Plan, spec: ModelSpec, timings: dict | None = None) -> dict:
    import diffusers
    import torch

    return {
        "localvideo_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "prompt": plan.prompt,
        "negative_prompt": plan.negative_prompt,
        "model": plan.model,
        "repo": plan.repo,
        "pipeline": plan.pipeline,
        "task": plan.task,
        "random_weights": plan.random_weights,
        "seed": plan.seed,
        "steps": plan.steps,
        "guidance": plan.guidance,
        "width": plan.width,
        "height": plan.height,
        "num_frames": plan.num_frames,
        "fps": plan.fps,
        "strategy": plan.strategy,
        "vae_tiling": plan.vae_tiling,
        "device": plan.device,
        "dtype": plan.dtype,
        "flow_shift": plan.flow_shift,
        "notes": list(plan.notes),
        "degraded": list(plan.degraded),
        "licence": spec.licence,
        "diffusers_version": diffusers.__version__,
        "torch_version": torch.__version__,
        "timings": timings or {},
        **plan.run_options(),  # quantization, gguf_path, step_cache(+params), loras, attention, compile
    }


@dataclass
class Rendered:
    """A generation run up to its frames, before anything is encoded (see :func:`render`)."""

    frames: Any  # np.ndarray (F, H, W, 3) float32 in [0, 1], as the runner decoded them
    plan: Plan  # the plan that produced them (OOM rungs in plan.degraded)
    spec: ModelSpec
    out_path: Path  # checked and writable; nothing written there yet
    timings: dict  # load_s, denoise_s, decode_s
    t_start: float
    extra: dict  # for the metadata: prompt info, conditioning images, OOM attempts
    cache_hit: bool
    latents_file: Path  # the saved latents, claimed by this run: the caller discards or releases them (runtime.latents)


def render(prompt: str | None = None, *, request: GenerationRequest | None = None, hardware: Hardware | None = None,
           on_progress=None, cancel=None, cache=None, settings: Settings | None = None, prompt_info=None,
           guard=None, overwrite: bool = False, **fields) -> Rendered:
    """Everything :func:`generate` does before encoding: prompt, plan, run (with the OOM ladder), decode.

    The frames come back as the runner decoded them, so a caller that joins several runs (a story) can encode them
    exactly once. The latents file is left for the caller, still claimed (:func:`localvideo.runtime.latents.discard`
    or ``release``; discarded already on a cancel, released on a failure), and so is the output name
    (:func:`localvideo.media.encode.release_output` once the video is written or given up).

    ``request`` with ``prompt`` or ``fields``: those replace the request's own (validated again)."""
    from .media.encode import release_output
    from .runtime import latents as latents_io
    from .runtime import leftovers, recovery, runner, store

    t_start = time.perf_counter()
    settings = settings or get_settings()
    if request is None:
        request = GenerationRequest.parse(prompt=prompt if prompt is not None else "", **fields)
    elif prompt is not None or fields:  # a base request with some fields changed (e.g. a loop over seeds)
        request = GenerationRequest.parse(**{**request.model_dump(), **({"prompt": prompt} if prompt is not None
                                                                         else {}), **fields})
    if prompt_info is None:  # expand (engine) or enhance (local LLM) the prompt, unless the caller already did
        request, prompt_info = prepare_prompt(request, get_model(request.model).family, stop=cancel,
                                              hardware=hardware, settings=settings)
    spec, plan = prepare(request, hardware, settings)
    out_path = claim_output(plan, settings, overwrite)  # before any heavy work; no other run writes it till released
    try:
        model_path = store.locate(spec, settings)
    except BaseException:
        release_output(out_path)
        raise
    # what killed runs left where this one writes (temp videos, claims, unreleased latents): cheap, one folder each
    leftovers.sweep([out_path.parent, settings.home / "latents"], context="before a run")

    def emit(p):
        if on_progress is not None:
            on_progress(p)

    cache = cache if cache is not None else default_cache(settings)
    emit(runner.Progress("loading", 0, plan.steps, time.perf_counter() - t_start))
    latents_file = latents_io.reserve(out_path, settings.home / "latents")  # claimed from here on
    image_info: dict = {}

    def inputs(p: Plan) -> dict:
        """i2v conditioning images fitted to the plan's size (again if the OOM ladder shrinks it)."""
        if not p.image:
            return {}
        from .runtime.conditioning import load_conditioning

        first = load_conditioning(p.image, p.width, p.height)
        image_info["input_image"] = first.info
        out = {"image": first.image}
        if p.last_image:
            last = load_conditioning(p.last_image, p.width, p.height)
            image_info["last_image"] = last.info
            out["last_image"] = last.image
        return out

    try:
        out = recovery.generate_frames(spec, model_path, plan, cache, on_progress=on_progress, cancel=cancel,
                                       guard=guard, latents_path=latents_file, inputs=inputs,
                                       latents_extra=lambda: {**prompt_info.metadata(), **image_info})
    except Cancelled:
        latents_io.discard(latents_file)
        release_output(out_path)
        raise
    except BaseException:
        latents_io.release(latents_file)  # kept, as any failed run's (a failed decode promised them to the user)
        release_output(out_path)
        raise
    timings = {"load_s": round(out.load_s, 3), "denoise_s": round(out.denoise_s, 3),
               "decode_s": round(out.decode_s, 3)}
    extra = {**prompt_info.metadata(), **image_info,
             **({"attempts": out.attempts, "ooms": out.ooms} if out.ooms else {})}
    return Rendered(frames=out.frames, plan=out.plan, spec=spec, out_path=out_path, timings=timings, t_start=t_start,
                    extra=extra, cache_hit=out.cache_hit, latents_file=latents_file)


def generate(prompt: str | None = None, *, request: GenerationRequest | None = None, hardware: Hardware | None = None,
             on_progress=None, cancel=None, cache=None, settings: Settings | None = None, prompt_info=None,
             guard=None, keep_latents: bool = False, overwrite: bool = False, **fields) -> GenerationResult:
    """Generate one video and return where it is and how it was made.

    ``fields`` are :class:`GenerationRequest` fields (``model``, ``width``, ``height``, ``num_frames``, ``fps``,
    ``steps``, ``guidance``, ``seed``, ``negative_prompt``, ``output``, ``strategy``, ``vae_tiling``).
    ``on_progress`` receives :class:`~localvideo.runtime.runner.Progress` events; ``cancel`` is a
    ``threading.Event`` or a callable returning True to stop (raises :class:`~localvideo.errors.Cancelled`).
    The prompt is first expanded for the model's family (``expand_prompt``) or rewritten by a local LLM
    (``enhance``); pass ``prompt_info`` (from :func:`localvideo.prompts.prepare_prompt`) when that was done already.
    The metadata records ``original_prompt``, ``prompt_source`` (engine | llm | as-typed) and the hints.
    Out-of-memory errors walk down the ladder in :mod:`localvideo.runtime.recovery`; the rungs taken are in
    ``result.plan.degraded`` and the metadata. Latents are saved before decode and removed after a written MP4
    (kept with ``keep_latents=True``, or when decoding fails so that ``localvideo decode`` can finish the run).
    An existing ``output`` file is refused unless ``overwrite=True``; a name chosen for you (no ``output``, or a
    folder) never replaces a file: ``…~1.mp4``, ``…~2.mp4`` are taken instead. With ``request``, ``prompt`` and
    ``fields`` replace the request's own.
    """
    from .media.encode import release_output
    from .runtime import latents as latents_io

    r = render(prompt, request=request, hardware=hardware, on_progress=on_progress, cancel=cancel, cache=cache,
               settings=settings, prompt_info=prompt_info, guard=guard, overwrite=overwrite, **fields)
    try:
        result = record(r.frames, r.plan, r.spec, r.out_path, r.timings, r.t_start, on_progress=on_progress,
                        extra=r.extra, cancel=cancel)
    except Cancelled:
        latents_io.discard(r.latents_file)  # a cancel keeps nothing, as one while denoising or decoding
        raise
    except BaseException:
        latents_io.release(r.latents_file)  # no MP4: the latents stay, as after any failed run
        raise
    finally:
        release_output(r.out_path)
    result.cache_hit = r.cache_hit
    if keep_latents:
        latents_io.release(r.latents_file)
        result.latents = r.latents_file
    else:
        latents_io.discard(r.latents_file)
    return result


def record(frames, plan: Plan, spec: ModelSpec, out_path: Path, timings: dict, t_start: float, *,
           on_progress=None, extra: dict | None = None, cancel=None) -> GenerationResult:
    """Encode frames to the MP4 (atomically) and write its metadata: tags and the JSON sidecar.

    ``cancel`` (an Event or a callable) is checked before each frame is encoded: once set, :class:`Cancelled` is
    raised and the writer removes its temp file, so no video and no sidecar are left. A cancel after the last frame
    is too late: the video is written."""
    from .media.encode import VideoWriter, write_sidecar
    from .runtime import runner

    if runner._is_cancelled(cancel):
        raise Cancelled("Generation cancelled before encoding; no video was written.")
    if on_progress is not None:
        on_progress(runner.Progress("encoding", plan.steps, plan.steps, time.perf_counter() - t_start))
    metadata = build_metadata(plan, spec, timings)
    if extra:
        metadata.update(extra)
    t_enc = time.perf_counter()
    tags = {
        "title": plan.prompt[:200],
        "comment": _summary(plan),
        "localvideo": json.dumps(metadata, ensure_ascii=False, sort_keys=True),
    }
    try:
        with VideoWriter(out_path, fps=plan.fps, metadata=tags) as writer:
            for frame in frames:
                if runner._is_cancelled(cancel):
                    raise Cancelled("Generation cancelled while encoding; no video was written.")
                writer.write(frame)
    except OSError as e:
        raise OutputError(f"Could not write {out_path}: {e}", hint="Choose another --output folder.") from e
    enc = writer.result
    timings["encode_s"] = round(time.perf_counter() - t_enc, 3)
    timings["total_s"] = round(time.perf_counter() - t_start, 3)
    metadata["timings"] = timings
    metadata["file"] = {"path": str(enc.path), "bytes": enc.bytes, "frames": enc.frames, "width": enc.width,
                        "height": enc.height, "padded": enc.padded}
    sidecar = write_sidecar(enc.path, metadata)
    if on_progress is not None:
        on_progress(runner.Progress("done", plan.steps, plan.steps, time.perf_counter() - t_start, 0.0))
    return GenerationResult(path=enc.path, sidecar=sidecar, plan=plan, metadata=metadata, timings=timings,
                            cache_hit=False, frames=enc.frames, width=enc.width, height=enc.height, fps=enc.fps,
                            warnings=list(plan.warnings))


def decode_saved(latents_file: str | Path, *, output: str | None = None, hardware: Hardware | None = None,
                 cache=None, settings: Settings | None = None, on_progress=None,
                 overwrite: bool = False) -> GenerationResult:
    """Finish a run whose decode failed: decode saved latents (VAE tiling on) and write the MP4 with metadata.

    A file that is damaged or does not fit its plan (no plan, bad JSON, another model's latents, a cut tensor, an
    edited size) is an :class:`~localvideo.errors.InvalidRequest` naming the file, before anything loads. The run's
    metadata saved beside the plan (the prompt as typed, how it was rewritten, conditioning images) is restored.
    An existing ``output`` file is refused unless ``overwrite`` (as for :func:`generate`)."""
    from dataclasses import MISSING, fields, replace

    from .errors import InvalidRequest, LocalVideoError
    from .media.encode import release_output
    from .planner import Plan as PlanCls
    from .runtime import latents as latents_io

    t_start = time.perf_counter()
    settings = settings or get_settings()
    saved = latents_io.load(latents_file)
    name = Path(latents_file).name
    unedited = "Decode the latents file the failed run named, unedited."
    try:
        spec = get_model(saved.plan["model"])
    except LocalVideoError:
        raise InvalidRequest(f"{name} has a plan for a model localvideo does not know ({saved.plan['model']!r}).",
                             hint=unedited) from None
    latents_io.check(saved, spec)
    computed = {"estimate", "budget_device_bytes", "budget_host_bytes"}  # from_dict recomputes these
    lacking = [f.name for f in fields(PlanCls) if f.default is MISSING and f.default_factory is MISSING
               and f.name not in computed and f.name not in saved.plan]
    if lacking:
        raise InvalidRequest(f"{name} has a plan without {', '.join(map(repr, lacking))}.", hint=unedited)
    try:
        plan = PlanCls.from_dict(saved.plan, spec)
    except (KeyError, TypeError, ValueError) as e:
        raise InvalidRequest(f"{name} has a plan localvideo cannot read ({type(e).__name__}: {e}).",
                             hint=unedited) from None
    latents_io.adopt(Path(latents_file))  # the user's now, even if a killed run's claim is still next to them
    hw = hardware if hardware is not None else probe(settings.home)
    device = plan.device
    if device != "cpu" and not any(g.device == device for g in hw.gpus):
        device = hw.best_gpu.device if hw.gpus else "cpu"
    plan = replan(replace(plan, device=device, strategy=plan.strategy if device != "cpu" else "resident",
                          output=output), spec, vae_tiling=True,
                  degraded=f"decoded later from saved latents ({name}) with VAE tiling")
    out_path = claim_output(plan, settings, overwrite)
    try:
        return _decode_into(out_path, saved, plan, spec, name, latents_file, settings, cache, on_progress, t_start)
    finally:
        release_output(out_path)


def _decode_into(out_path: Path, saved, plan: Plan, spec: ModelSpec, name: str, latents_file, settings: Settings,
                 cache, on_progress, t_start: float) -> GenerationResult:
    """decode_saved once its output is claimed: load the pipeline, decode (with the OOM ladder), record."""
    from .errors import GenerationFailed, LocalVideoError
    from .runtime import recovery, runner, store

    model_path = store.locate(spec, settings)
    cache = cache if cache is not None else default_cache(settings)
    t = time.perf_counter()
    import torch

    with runner.use_pipeline(cache, spec, model_path, plan) as lease:  # no other job on this pipeline meanwhile
        pipe, hit = lease.value, lease.hit
        load_s = time.perf_counter() - t - lease.waited_s
        generator = torch.Generator("cpu").manual_seed(plan.seed)
        if on_progress is not None:
            on_progress(runner.Progress("decoding", plan.steps, plan.steps, time.perf_counter() - t_start))
        t = time.perf_counter()
        try:
            frames, plan = recovery.decode_with_recovery(pipe, spec, plan, saved.latents, generator,
                                                         saved.generator_state, latents_path=Path(latents_file))
        except LocalVideoError:
            raise
        except (RuntimeError, ValueError, TypeError) as e:  # what the checks above did not foresee: no traceback
            log.exception("decoding %s failed", latents_file)
            first = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
            raise GenerationFailed(f"Decoding {name} with {spec.id} failed: {first}",
                                   hint="The latents file may not match its plan; generate the video again.",
                                   latents=str(latents_file)) from None
    timings = {"load_s": round(load_s, 3), "denoise_s": 0.0, "decode_s": round(time.perf_counter() - t, 3)}
    # what describes the new MP4 and its run (build_metadata's and record's keys) is never taken from the latents
    fresh = {"localvideo_version", "created", "prompt", "negative_prompt", "model", "repo", "pipeline", "task",
             "random_weights", "seed", "steps", "guidance", "width", "height", "num_frames", "fps", "strategy",
             "vae_tiling", "device", "dtype", "flow_shift", "notes", "degraded", "licence", "diffusers_version",
             "torch_version", "timings", "file", "decoded_from", *plan.run_options()}
    restored = {k: v for k, v in saved.extra.items() if k not in fresh}
    result = record(frames, plan, spec, out_path, timings, t_start, on_progress=on_progress,
                    extra={**restored, "decoded_from": str(latents_file)})
    result.cache_hit = hit
    return result


def _summary(plan: Plan) -> str:
    rw = " [RANDOM WEIGHTS]" if plan.random_weights else ""
    degraded = f"; degraded: {'; '.join(plan.degraded)}" if plan.degraded else ""
    return (f"localvideo {__version__}: {plan.model}{rw}, seed {plan.seed}, {plan.steps} steps, "
            f"guidance {plan.guidance:g}, {plan.width}x{plan.height}, {plan.num_frames} frames @ {plan.fps:g} fps"
            f"{degraded}")
