"""Workers: one thread per GPU (or one on a CPU-only machine) taking queued jobs and running them for real.

A worker calls :func:`localvideo.generation.generate` (:func:`localvideo.story.make_story` for ``story`` jobs) with
the process-wide warm pipeline cache, so the second job on the same model skips loading. Progress goes to the store
and to subscribers; the job's cancel event is handed to the runner, which raises
:class:`~localvideo.errors.Cancelled` before the VAE decodes, so a cancelled job writes nothing.
Outputs live in ``<outputs>/<job id>/``: ``video.mp4``, its ``video.json`` sidecar and ``thumbnail.jpg``.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from pathlib import Path

from ..errors import Cancelled, LocalVideoError
from .models import THUMBNAIL_NAME, VIDEO_NAME, Job, JobError, JobProgress, JobResult

log = logging.getLogger(__name__)

CLAIM_WAIT_S = 1.0


def make_thumbnail(video: Path, dest: Path, max_side: int = 512) -> Path:
    """First frame of ``video`` as a JPEG (longest side ≤ ``max_side``), written atomically."""
    import av

    with av.open(str(video)) as container:
        frame = next(container.decode(video=0))
        image = frame.to_image()
    image.thumbnail((max_side, max_side))
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.partial")
    try:
        image.save(tmp, "JPEG", quality=85)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


class Worker(threading.Thread):
    def __init__(self, service, name: str, gpu_index: int | None) -> None:
        super().__init__(name=f"localvideo-{name}", daemon=True)
        self.service = service
        self.gpu_index = gpu_index
        self.device = "cpu" if gpu_index is None else f"gpu:{gpu_index}"
        self.current_job: str | None = None

    def run(self) -> None:
        while not self.service.stopping:
            claimed = self.service._claim(CLAIM_WAIT_S)
            if claimed is None:
                continue
            job, cancel = claimed
            self.current_job = job.id
            try:
                self._execute(job, cancel)
            except BaseException as e:  # noqa: BLE001 - the boundary: record it, keep the worker alive
                log.exception("job %s crashed the worker step", job.id)
                self._discard(job.id)
                self.service._finish(job.id, error=JobError(error="generation_failed",
                                                            message=f"The job failed unexpectedly: {e}"))
            finally:
                self.current_job = None

    def _execute(self, job: Job, cancel: threading.Event) -> None:
        from ..generation import default_cache, generate
        from ..request import GenerationRequest

        svc = self.service
        folder = svc.job_dir(job.id)
        shutil.rmtree(folder, ignore_errors=True)  # a retry starts clean
        folder.mkdir(parents=True, exist_ok=True)

        def on_progress(p) -> None:
            svc._progress(job.id, JobProgress(phase=p.phase, step=p.step, total=p.total,
                                              elapsed_s=round(p.elapsed_s, 3),
                                              eta_s=None if p.eta_s is None else round(p.eta_s, 3),
                                              scene=getattr(p, "scene", None), scenes=getattr(p, "scenes", None)))

        try:
            if job.kind == "story":
                from ..story import StoryRequest, make_story

                story = StoryRequest.parse(**job.request)
                result = make_story(story.source(), **story.options(), output=str(folder / VIDEO_NAME),
                                    hardware=svc.hardware_for(self.gpu_index), on_progress=on_progress,
                                    cancel=cancel, cache=default_cache(svc.settings), settings=svc.settings)
            else:
                request = GenerationRequest.parse(**job.request, output=str(folder / VIDEO_NAME))
                result = generate(request=request, hardware=svc.hardware_for(self.gpu_index),
                                  on_progress=on_progress, cancel=cancel, cache=default_cache(svc.settings),
                                  settings=svc.settings)
        except Cancelled:
            self._discard(job.id)
            svc._finish(job.id, cancelled=True)
            return
        except LocalVideoError as e:
            self._discard(job.id)
            svc._finish(job.id, error=JobError(error=e.code, message=e.message, hint=e.hint))
            return
        except Exception as e:  # torch errors and the like: a failed job with the reason, not a dead worker
            log.exception("job %s failed", job.id)
            self._discard(job.id)
            svc._finish(job.id, error=JobError(error="generation_failed", message=f"Generation failed: {e}",
                                               hint="See the server log for the traceback."))
            return
        has_thumb = True
        try:
            make_thumbnail(result.path, folder / THUMBNAIL_NAME)
        except Exception:  # noqa: BLE001 - a missing thumbnail must not fail a finished video
            log.exception("could not make a thumbnail for job %s", job.id)
            has_thumb = False
        size = result.path.stat().st_size
        if job.kind == "story":
            md = result.metadata
            svc._finish(job.id, result=JobResult(
                bytes=size, frames=result.frames, width=result.width, height=result.height, fps=result.fps,
                duration_s=round(result.frames / result.fps, 3) if result.fps else 0.0, seed=result.seed,
                model=result.model, random_weights=result.random_weights, strategy=md.get("strategy") or "",
                has_thumbnail=has_thumb, timings={k: float(v) for k, v in result.timings.items()},
                notes=[n for s in result.scenes for n in s.notes], warnings=list(result.warnings),
                scenes=[{k: getattr(s, k) for k in ("index", "text", "seed", "frames", "kept", "start_frame",
                                                    "end_frame", "start_time_s", "transition", "task")}
                        for s in result.scenes]))
            return
        svc._finish(job.id, result=JobResult(
            bytes=size, frames=result.frames, width=result.width, height=result.height, fps=result.fps,
            duration_s=round(result.frames / result.fps, 3) if result.fps else 0.0, seed=result.seed,
            model=result.plan.model, random_weights=result.plan.random_weights, strategy=result.plan.strategy,
            has_thumbnail=has_thumb, timings={k: float(v) for k, v in result.timings.items()},
            notes=list(result.plan.notes), warnings=list(result.warnings)))

    def _discard(self, job_id: str) -> None:
        shutil.rmtree(self.service.job_dir(job_id), ignore_errors=True)
