"""Workers: one thread per executor slot (per GPU, one on a CPU-only machine, or per Ray actor) taking queued jobs.

The worker hands each claimed job to the service's executor (:mod:`localvideo.jobs.executors`). In-process, that
calls :func:`localvideo.generation.generate` (:func:`localvideo.story.make_story` for ``story`` jobs) with the
process-wide warm pipeline cache, so the second job on the same model skips loading. Progress goes to the store
and to subscribers; the job's cancel event is handed to the run, which checks it at every denoising step, before each
VAE decoder block and before each encoded frame and raises :class:`~localvideo.errors.Cancelled`, so a cancelled job
writes nothing.
Outputs live in ``<outputs>/<job id>/``: ``video.mp4``, its ``video.json`` sidecar and ``thumbnail.jpg``.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from pathlib import Path

from .models import THUMBNAIL_NAME, VIDEO_NAME, Job, JobError

log = logging.getLogger(__name__)

CLAIM_WAIT_S = 1.0


def make_thumbnail(video: Path, dest: Path, max_side: int = 512) -> Path:
    """First frame of ``video`` as a JPEG (longest side ≤ ``max_side``), written atomically."""
    import av

    with av.open(str(video)) as container:
        frame = next(container.decode(video=0))
        image = frame.to_image()
    image.thumbnail((max_side, max_side))
    from ..runtime.leftovers import owner_tag

    tmp = dest.with_name(f".{dest.name}.{owner_tag()}.partial")
    try:
        image.save(tmp, "JPEG", quality=85)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


class Worker(threading.Thread):
    """One slot of the service's executor: claims the next job, has the executor run it, records the outcome."""

    def __init__(self, service, slot) -> None:
        super().__init__(name=f"localvideo-{slot.name}", daemon=True)
        self.service = service
        self.slot = slot
        self.gpu_index = slot.gpu_index
        self.device = slot.device
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
        svc = self.service
        folder = svc.job_dir(job.id)
        outcome = svc.executor.run(job, folder, self.slot, lambda p: svc._progress(job.id, p), cancel)
        if outcome.state == "cancelled":
            self._discard(job.id)
            svc._finish(job.id, cancelled=True)
            return
        if outcome.state == "failed":
            self._discard(job.id)
            svc._finish(job.id, error=outcome.error)
            return
        has_thumb = True
        try:
            make_thumbnail(folder / VIDEO_NAME, folder / THUMBNAIL_NAME)
        except Exception:  # noqa: BLE001 - a missing thumbnail must not fail a finished video
            log.exception("could not make a thumbnail for job %s", job.id)
            has_thumb = False
        if svc._finish(job.id, result=outcome.result.model_copy(update={"has_thumbnail": has_thumb})) is None:
            self._discard(job.id)  # interrupted meanwhile by a shutdown (JobService.begin_shutdown): keep nothing

    def _discard(self, job_id: str) -> None:
        shutil.rmtree(self.service.job_dir(job_id), ignore_errors=True)
