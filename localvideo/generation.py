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

from . import __version__
from .catalog import ModelSpec, get_model
from .errors import OutputError
from .hardware import Hardware, probe
from .planner import Plan, plan as make_plan
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

    @property
    def seed(self) -> int:
        return self.plan.seed

    def to_dict(self) -> dict:
        return {
            "path": str(self.path), "sidecar": str(self.sidecar), "model": self.plan.model,
            "random_weights": self.plan.random_weights, "seed": self.seed, "frames": self.frames,
            "width": self.width, "height": self.height, "fps": self.fps, "strategy": self.plan.strategy,
            "vae_tiling": self.plan.vae_tiling, "cache_hit": self.cache_hit, "timings": self.timings,
            "notes": list(self.plan.notes), "warnings": self.warnings, "metadata": self.metadata,
        }


def prepare(request: GenerationRequest, hardware: Hardware | None = None,
            settings: Settings | None = None) -> tuple[ModelSpec, Plan]:
    """Resolve the model and plan the request (no torch)."""
    settings = settings or get_settings()
    spec = get_model(request.model)
    hw = hardware if hardware is not None else probe(settings.home)
    request, _ = prepare_prompt(request, spec.family, hardware=hw, settings=settings)  # no-op once prepared
    return spec, make_plan(request, spec, hw)


def output_path_for(plan: Plan, settings: Settings) -> Path:
    if plan.output:
        p = Path(plan.output).expanduser()
        if p.is_dir() or plan.output.endswith(("/", "\\")) or not p.suffix:  # a folder (existing or to be made)
            p = p / _default_name(plan)
        return p
    p = settings.outputs / _default_name(plan)
    n = 1
    while p.exists():
        p = p.with_name(f"{p.stem.rsplit('~', 1)[0]}~{n}.mp4")
        n += 1
    return p


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
        "licence": spec.licence,
        "diffusers_version": diffusers.__version__,
        "torch_version": torch.__version__,
        "timings": timings or {},
    }


def generate(prompt: str | None = None, *, request: GenerationRequest | None = None, hardware: Hardware | None = None,
             on_progress=None, cancel=None, cache=None, settings: Settings | None = None, prompt_info=None,
             **fields) -> GenerationResult:
    """Generate one video and return where it is and how it was made.

    ``fields`` are :class:`GenerationRequest` fields (``model``, ``width``, ``height``, ``num_frames``, ``fps``,
    ``steps``, ``guidance``, ``seed``, ``negative_prompt``, ``output``, ``strategy``, ``vae_tiling``).
    ``on_progress`` receives :class:`~localvideo.runtime.runner.Progress` events; ``cancel`` is a
    ``threading.Event`` or a callable returning True to stop (raises :class:`~localvideo.errors.Cancelled`).
    The prompt is first expanded for the model's family (``expand_prompt``) or rewritten by a local LLM
    (``enhance``); pass ``prompt_info`` (from :func:`localvideo.prompts.prepare_prompt`) when that was done already.
    The metadata records ``original_prompt``, ``prompt_source`` (engine | llm | as-typed) and the hints.
    """
    from .media.encode import VideoWriter, check_output_path, write_sidecar
    from .runtime import runner, store

    t_start = time.perf_counter()
    settings = settings or get_settings()
    if request is None:
        request = GenerationRequest.parse(prompt=prompt if prompt is not None else "", **fields)
    if prompt_info is None:  # expand (engine) or enhance (local LLM) the prompt, unless the caller already did
        request, prompt_info = prepare_prompt(request, get_model(request.model).family, stop=cancel,
                                              hardware=hardware, settings=settings)
    spec, plan = prepare(request, hardware, settings)
    out_path = check_output_path(output_path_for(plan, settings))  # fail before any heavy work
    model_path = store.locate(spec, settings)

    def emit(p):
        if on_progress is not None:
            on_progress(p)

    cache = cache if cache is not None else default_cache(settings)
    emit(runner.Progress("loading", 0, plan.steps, time.perf_counter() - t_start))
    t_load = time.perf_counter()
    pipe, hit = runner.get_pipeline(cache, spec, model_path, plan)
    load_s = time.perf_counter() - t_load
    out = runner.run(pipe, plan, on_progress=on_progress, cancel=cancel, cache_hit=hit, load_s=load_s)

    emit(runner.Progress("encoding", plan.steps, plan.steps, time.perf_counter() - t_start))
    timings = {"load_s": round(load_s, 3), "denoise_s": round(out.denoise_s, 3), "decode_s": round(out.decode_s, 3)}
    metadata = build_metadata(plan, spec, timings) | prompt_info.metadata()
    t_enc = time.perf_counter()
    tags = {
        "title": plan.prompt[:200],
        "comment": _summary(plan),
        "localvideo": json.dumps(metadata, ensure_ascii=False, sort_keys=True),
    }
    try:
        with VideoWriter(out_path, fps=plan.fps, metadata=tags) as writer:
            writer.write(out.frames)
    except OSError as e:
        raise OutputError(f"Could not write {out_path}: {e}", hint="Choose another --output folder.") from e
    enc = writer.result
    timings["encode_s"] = round(time.perf_counter() - t_enc, 3)
    timings["total_s"] = round(time.perf_counter() - t_start, 3)
    metadata["timings"] = timings
    metadata["file"] = {"path": str(enc.path), "bytes": enc.bytes, "frames": enc.frames, "width": enc.width,
                        "height": enc.height, "padded": enc.padded}
    sidecar = write_sidecar(enc.path, metadata)
    emit(runner.Progress("done", plan.steps, plan.steps, time.perf_counter() - t_start, 0.0))
    return GenerationResult(path=enc.path, sidecar=sidecar, plan=plan, metadata=metadata, timings=timings,
                            cache_hit=hit, frames=enc.frames, width=enc.width, height=enc.height, fps=enc.fps,
                            warnings=list(plan.warnings))


def _summary(plan: Plan) -> str:
    rw = " [RANDOM WEIGHTS]" if plan.random_weights else ""
    return (f"localvideo {__version__}: {plan.model}{rw}, seed {plan.seed}, {plan.steps} steps, "
            f"guidance {plan.guidance:g}, {plan.width}x{plan.height}, {plan.num_frames} frames @ {plan.fps:g} fps")
