"""Where a claimed job runs: the seam between the job service and the machines that make videos.

The service's worker threads claim jobs from the store in order; each hands its job to the service's executor and
records what comes back. Two executors exist:

* ``local`` (the default): the job runs in this process, on the worker's GPU (or the CPU), with the process-wide warm
  pipeline cache — what the service always did.
* ``ray``: the job runs on a long-lived Ray actor that owns one GPU (or a CPU slot) and its own warm pipeline cache;
  see :mod:`localvideo.jobs.ray_executor`. Ray is an optional dependency (``pip install 'localvideo[cluster]'``),
  imported only when this executor is chosen.

Both run the same function, :func:`execute`, which returns an :class:`Outcome` (a plain, picklable value) instead of
raising: success with a :class:`JobResult`, cancelled, or failed with a :class:`JobError`. The worker then makes the
thumbnail and moves the job to its final state.
"""

from __future__ import annotations

import logging
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Protocol

from ..errors import Cancelled, LocalVideoError
from .models import VIDEO_NAME, Job, JobError, JobProgress, JobResult

log = logging.getLogger(__name__)

ProgressFn = Callable[[JobProgress], None]


@dataclass(frozen=True)
class Slot:
    """One place a job can run at a time; the service starts one worker thread per slot."""

    name: str
    device: str  # "cpu", "gpu:0", "ray:actor-0", …
    gpu_index: int | None = None


@dataclass
class Outcome:
    state: Literal["succeeded", "cancelled", "failed"]
    result: JobResult | None = None
    error: JobError | None = None
    ran_on: str = ""  # the slot / actor that produced this outcome


class Executor(Protocol):
    name: str

    def start(self, service) -> list[Slot]:
        """Get ready (may take seconds: a cluster connection) and say where jobs can run."""
        ...

    def run(self, job: Job, folder: Path, slot: Slot, on_progress: ProgressFn, cancel: threading.Event) -> Outcome:
        """Run one claimed job to an outcome; its files go to ``folder``. Must not raise for a job's own failure."""
        ...

    def stop(self) -> None: ...

    def info(self) -> dict[str, Any]: ...


def job_progress(p) -> JobProgress:
    """A runner/story progress event as the job service stores it."""
    return JobProgress(phase=p.phase, step=p.step, total=p.total, elapsed_s=round(p.elapsed_s, 3),
                       eta_s=None if p.eta_s is None else round(p.eta_s, 3),
                       scene=getattr(p, "scene", None), scenes=getattr(p, "scenes", None),
                       message=getattr(p, "message", None))


def execute(kind: str, request: dict, folder: Path, *, hardware, on_progress: ProgressFn, cancel, cache,
            settings) -> Outcome:
    """Run one job for real (generate, or make_story for ``story``) into ``folder``; never raises for the job's own
    errors. Partial files are removed on every outcome but success. Used by both executors."""
    from ..generation import generate
    from ..request import GenerationRequest
    from .legacy import migrate

    folder = Path(folder)
    shutil.rmtree(folder, ignore_errors=True)  # a retry starts clean
    folder.mkdir(parents=True, exist_ok=True)

    def progress(p) -> None:
        on_progress(job_progress(p))

    migrated: list[str] = []
    try:
        # a row queued by an older localvideo (a retry migrates it already): this version's field names
        request, migrated = migrate(kind, request)
        if kind == "story":
            from ..story import StoryRequest, make_story

            story = StoryRequest.parse(**request)
            result = make_story(story.source(), **story.options(), output=str(folder / VIDEO_NAME),
                                hardware=hardware, on_progress=progress, cancel=cancel, cache=cache,
                                settings=settings)
        elif kind == "photo-animation":
            result = _animate(request, folder, on_progress, cancel, settings)
        else:
            req = GenerationRequest.parse(**request, output=str(folder / VIDEO_NAME))
            result = generate(request=req, hardware=hardware, on_progress=progress, cancel=cancel, cache=cache,
                              settings=settings)
    except Cancelled:
        shutil.rmtree(folder, ignore_errors=True)
        return Outcome("cancelled")
    except LocalVideoError as e:
        shutil.rmtree(folder, ignore_errors=True)
        return Outcome("failed", error=JobError(error=e.code, message=e.message, hint=e.hint))
    except Exception as e:  # torch errors and the like: a failed job with the reason, not a dead worker
        log.exception("job in %s failed", folder)
        shutil.rmtree(folder, ignore_errors=True)
        return Outcome("failed", error=JobError(error="generation_failed", message=f"Generation failed: {e}",
                                                hint="See the server log for the traceback."))
    size = result.path.stat().st_size
    timings = {k: float(v) for k, v in result.timings.items()}
    if kind == "photo-animation":
        return Outcome("succeeded", result=JobResult(
            bytes=size, frames=result.frames, width=result.width, height=result.height, fps=result.fps,
            duration_s=round(result.frames / result.fps, 3) if result.fps else 0.0, seed=int(request.get("seed", 0)),
            model="photo-animation", random_weights=False, strategy=result.render_path, has_thumbnail=False,
            timings=timings, notes=[*migrated, f"move: {result.move}", f"path: {result.render_path}"],
            warnings=list(result.warnings)))
    common = dict(bytes=size, frames=result.frames, width=result.width, height=result.height, fps=result.fps,
                  duration_s=round(result.frames / result.fps, 3) if result.fps else 0.0, seed=result.seed,
                  has_thumbnail=False, timings=timings, warnings=list(result.warnings))
    if kind == "story":
        md = result.metadata
        return Outcome("succeeded", result=JobResult(
            **common, model=result.model, random_weights=result.random_weights, strategy=md.get("strategy") or "",
            notes=[*migrated, *(n for s in result.scenes for n in s.notes)],
            degraded=[f"scene {s.index + 1}: {d}" for s in result.scenes for d in s.degraded],
            scenes=[{k: getattr(s, k) for k in ("index", "text", "seed", "frames", "kept", "start_frame",
                                                "end_frame", "start_time_s", "transition", "task")}
                    for s in result.scenes]))
    return Outcome("succeeded", result=JobResult(
        **common, model=result.plan.model, random_weights=result.plan.random_weights, strategy=result.plan.strategy,
        notes=[*migrated, *result.plan.notes], degraded=list(result.plan.degraded)))


def _animate(request: dict, folder: Path, on_progress: ProgressFn, cancel, settings):
    """A photo animation (no model weights). Cancel is checked at every frame; raising there makes the encoder
    drop its temp file, so a cancelled animation writes nothing."""
    import time

    from ..motion.animator import animate
    from .models import AnimationRequest

    req = AnimationRequest(**request)
    t0, last = time.perf_counter(), [0.0]

    def frame_done(i: int, n: int) -> None:
        if cancel is not None and cancel.is_set():
            raise Cancelled("Animation cancelled; no video was written.")
        now = time.perf_counter() - t0
        if i == n or now - last[0] >= 0.2:  # at most five progress writes a second
            last[0] = now
            on_progress(JobProgress(phase="rendering", step=i, total=n, elapsed_s=round(now, 3),
                                    eta_s=round(now / i * (n - i), 3)))

    if cancel is not None and cancel.is_set():
        raise Cancelled("Animation cancelled before it started; no video was written.")
    return animate(req.image, req.move, width=req.width, height=req.height, fps=req.fps, duration_s=req.duration_s,
                   num_frames=req.num_frames, parallax=req.parallax, strength=req.strength, easing=req.easing,
                   seed=req.seed, output=str(folder / VIDEO_NAME), on_progress=frame_done, settings=settings)


class LocalExecutor:
    """Jobs run in this process: one worker per GPU (or ``workers`` threads), the process-wide pipeline cache."""

    name = "local"

    def __init__(self) -> None:
        self._service = None

    def start(self, service) -> list[Slot]:
        from ..hardware import Hardware

        self._service = service
        try:
            hw = service.hardware()
        except Exception:  # noqa: BLE001 - a probe failure must not leave the queue without workers
            log.exception("hardware probe failed; starting one CPU worker")
            hw = Hardware()
        n = service._n_workers if service._n_workers is not None else max(1, len(hw.gpus))
        slots = []
        for i in range(n):
            gpu = hw.gpus[i % len(hw.gpus)].index if hw.gpus else None
            slots.append(Slot(f"worker-{i}", "cpu" if gpu is None else f"gpu:{gpu}", gpu))
        return slots

    def run(self, job: Job, folder: Path, slot: Slot, on_progress: ProgressFn, cancel: threading.Event) -> Outcome:
        from ..generation import default_cache

        svc = self._service
        out = execute(job.kind, job.request, folder, hardware=svc.hardware_for(slot.gpu_index),
                      on_progress=on_progress, cancel=cancel, cache=default_cache(svc.settings),
                      settings=svc.settings)
        out.ran_on = slot.name
        return out

    def stop(self) -> None:
        pass

    def info(self) -> dict[str, Any]:
        return {"executor": self.name}


def make_executor(settings) -> Executor:
    """The executor the settings ask for (``LOCALVIDEO_EXECUTOR``: local | ray)."""
    kind = getattr(settings, "executor", "local") or "local"
    if kind == "local":
        return LocalExecutor()
    if kind == "ray":
        from .ray_executor import RayExecutor

        return RayExecutor.from_settings(settings)
    from ..errors import InvalidRequest

    raise InvalidRequest(f"Unknown executor {kind!r}.", hint="Use local or ray.")
