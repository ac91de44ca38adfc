"""The job service: the one thing the CLI, the REST API, the UI and the SDKs (through the API) call.

``submit`` validates and plans a request at once (a request that can never run is refused there, with the same typed
errors as :func:`localvideo.generate`), pins its seed, and queues it in the SQLite store. Worker threads (one per GPU,
or one on a CPU-only machine; see :mod:`localvideo.jobs.worker`) take jobs in order and run them with the process-wide
warm pipeline cache. Every change is written to the store first and then published to subscribers (SSE streams).

One service owns a job database at a time (an OS file lock, released when the process dies). On start, jobs that
were ``running`` when the previous process died become ``interrupted``, their partial files are removed, and they can
be retried. Then, in the background, what killed processes of this machine left elsewhere is swept
(:mod:`localvideo.runtime.leftovers`): story work folders, temp videos and files in the outputs folder, its job folders
and the shared folder, latents of killed runs (never latents kept or promised to the user), tiny-model builds.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..errors import InvalidRequest
from ..hardware import Hardware
from ..request import GenerationRequest
from ..settings import Settings, get_settings
from .events import EventHub, Subscription
from .models import (RETRYABLE, STATES, THUMBNAIL_NAME, VIDEO_NAME, AnimationRequest, Job, JobConflict, JobError,
                     JobNotFound, JobPage, JobProgress, JobResult, ServiceUnavailable, state_phrase, utcnow,
                     valid_job_id)
from .store import JobStore, SQLiteJobStore

log = logging.getLogger(__name__)

MAX_PAGE = 200
HARDWARE_TTL_S = 5.0
# How long a server that begins to shut down lets running jobs reach their next cancel check before it marks them
# interrupted anyway (below uvicorn's graceful-shutdown timeout, so open event streams end before it cancels them).
SHUTDOWN_GRACE_S = 3.0
INTERRUPTED = JobError(error="interrupted", message="The server stopped while this job was running; no video was "
                                                    "written.", hint="Retry it.")


class _ProcessLock:
    """An exclusive advisory lock on ``<db>.lock``; the OS drops it when the process dies, however it dies."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; one server per home is the user's responsibility
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise ServiceUnavailable(f"Another localvideo job service is already using {self.path.parent}.",
                                     hint="Stop it first, or point LOCALVIDEO_HOME at another folder.") from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


class JobService:
    def __init__(self, settings: Settings | None = None, store: JobStore | None = None,
                 hardware: Hardware | None = None, workers: int | None = None, executor=None) -> None:
        """``hardware`` pins the machine description (tests, planning for a known box); default: probe it.

        ``workers``: number of worker threads (default: ``settings.workers``, else one per GPU or one on CPU).
        ``executor``: where claimed jobs run (:mod:`localvideo.jobs.executors`; default from
        ``settings.executor``: in this process, or on Ray actors with one worker thread per actor)."""
        from .executors import make_executor

        self.settings = settings or get_settings()
        self.executor = executor if executor is not None else make_executor(self.settings)
        self.store: JobStore = store if store is not None else SQLiteJobStore(self.settings.jobs_db)
        self.events = EventHub()
        self._fixed_hardware = hardware
        self._hw: tuple[float, Hardware] | None = None
        self._hw_lock = threading.Lock()
        self._n_workers = workers if workers is not None else self.settings.workers
        self._lock = threading.RLock()  # claim ↔ enqueue (submit, retry) ↔ cancel ↔ delete
        self._wake = threading.Condition()
        self._running: dict[str, threading.Event] = {}
        self._workers: list = []
        self._stopping = threading.Event()
        self._idle = threading.Condition(self._lock)  # notified when a running job has finished
        self._stop_lock = threading.Lock()  # one stop() at a time: a second caller waits, then finds it stopped
        self._started = False
        self._plock = _ProcessLock(Path(str(self.settings.jobs_db) + ".lock"))
        self.recovered: list[Job] = []
        self.executor_error: str | None = None
        self.swept: list = []  # leftovers.Removed: what the start-up sweep removed
        self.sweep_done = threading.Event()

    # -- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> "JobService":
        """Take the database, recover jobs a dead process left running, and start the workers (in the background:
        counting GPUs may import torch)."""
        if self._started:
            return self
        self._plock.acquire()
        self.recovered = self.store.interrupt_running(INTERRUPTED)
        for job in self.recovered:
            self._clean_dir(job.id)
            log.warning("job %s was running when the previous server stopped; it is now interrupted", job.id)
        self._started = True
        threading.Thread(target=self._sweep_leftovers, name="localvideo-sweep", daemon=True).start()
        threading.Thread(target=self._start_workers, name="localvideo-jobs-start", daemon=True).start()
        return self

    def check_available(self) -> None:
        """Raise ServiceUnavailable now if another job service holds this database (what :meth:`start` would raise),
        so that ``localvideo serve`` says so before it opens its port."""
        if self._started:
            return
        self._plock.acquire()
        self._plock.release()

    def _sweep_leftovers(self) -> None:
        """Remove what killed runs of this machine left (work folders, temp files, latents nobody was told about)
        in the folders this service writes to; only provably abandoned entries, logged with their sizes."""
        from ..runtime import leftovers

        s = self.settings
        try:
            self.swept = leftovers.sweep([s.outputs, *([s.shared_dir] if s.shared_dir else []), s.home / "latents",
                                          s.tiny], children=True, context="job service start")
        except Exception:  # noqa: BLE001 - a sweep must never keep the service from starting
            log.exception("the sweep of killed runs' leftovers failed")
        finally:
            self.sweep_done.set()

    def _start_workers(self) -> None:
        from .worker import Worker

        try:
            slots = self.executor.start(self)  # local: one per GPU (or `workers`); ray: one per actor
        except Exception as e:  # noqa: BLE001 - jobs stay queued; the reason is logged and shown in /v1/system
            log.exception("the %s executor did not start; jobs stay queued", self.executor.name)
            self.executor_error = str(e)
            return
        with self._lock:
            if self._stopping.is_set():
                return
            for slot in slots:
                w = Worker(self, slot)
                self._workers.append(w)
                w.start()
        log.info("job service: %d worker(s) on %s", len(slots), [w.device for w in self._workers])

    def begin_shutdown(self, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        """The server begins to shut down (uvicorn got Ctrl-C or SIGTERM; see :func:`localvideo.api.app.serve`):
        stop taking jobs and cancel the running ones now, without waiting. Each running job becomes ``interrupted``
        (published, so its open event streams end with that state) when its worker stops at the next cancel check,
        or after ``grace_s`` seconds, whichever is first: a worker still inside one long step then finds its job
        interrupted, and whatever it makes is discarded. Then every event stream is ended (a queued job stays queued
        and runs after the restart). Returns at once; :meth:`stop` (lifespan shutdown) waits for the workers."""
        if not self._started or self._stopping.is_set():
            return
        self._stop_requested()
        threading.Thread(target=self._interrupt_after, args=(grace_s,), name="localvideo-shutdown",
                         daemon=True).start()

    def _stop_requested(self) -> list:
        """Stop taking jobs and cancel the running ones; returns the workers."""
        self._stopping.set()
        with self._lock:
            for ev in self._running.values():
                ev.set()
            workers = list(self._workers)
        with self._wake:
            self._wake.notify_all()
        return workers

    def _interrupt_after(self, grace_s: float) -> None:
        with self._idle:
            self._idle.wait_for(lambda: not self._running, timeout=grace_s)
            for job_id in list(self._running):  # still inside one long step: interrupted now, its work discarded
                job = self.store.transition(job_id, ["running"], "interrupted", finished_at=utcnow(),
                                            error=INTERRUPTED)
                if job is not None:
                    log.warning("job %s did not stop within %g s of the shutdown; it is now interrupted", job_id,
                                grace_s)
                    self._publish(job)
        self.events.close()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking jobs; a running job is cancelled and marked ``interrupted`` (retry it after restart)."""
        with self._stop_lock:
            if not self._started:
                return
            workers = self._stop_requested()
            deadline = time.monotonic() + timeout
            for w in workers:
                w.join(max(0.0, deadline - time.monotonic()))
            try:
                self.executor.stop()
            except Exception:  # noqa: BLE001 - stopping must finish
                log.exception("stopping the %s executor failed", self.executor.name)
            self.events.close()
            self._plock.release()
            self._started = False

    def close(self) -> None:
        self.stop()
        self.store.close()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    # -- the public surface ----------------------------------------------------------------------------------
    def submit(self, request: GenerationRequest | dict | None = None, *, uploads: dict | None = None,
               **fields: Any) -> Job:
        """Validate, plan and queue a job (image-to-video when it has an ``image``). Raises InvalidRequest /
        UnknownModel / DoesNotFit / ModelNotInstalled at once rather than queueing a job that cannot run.

        ``uploads`` maps ``image`` / ``last_image`` to checked uploads
        (:class:`~localvideo.media.upload.CheckedImage`); they are stored under ``<home>/uploads/<job id>/``."""
        from ..generation import prepare
        from ..runtime.store import Installed, inspect, not_installed

        if self.stopping:
            raise ServiceUnavailable("The job service is shutting down.", hint="Submit again after it restarts.")
        if isinstance(request, GenerationRequest):
            request = request.model_dump()
        data = {**(request or {}), **fields}
        if data.get("output") is not None:
            raise InvalidRequest("Jobs choose their own output file (under the outputs folder, by job id).",
                                 hint="Leave output out; download the video by job id.")
        job_id = uuid.uuid4().hex
        try:
            for key, upload in (uploads or {}).items():
                if key not in ("image", "last_image"):
                    raise InvalidRequest(f"Unknown upload {key!r}.")
                folder = self.upload_dir(job_id)
                folder.mkdir(parents=True, exist_ok=True)
                path = folder / f"{key}{upload.extension}"
                path.write_bytes(upload.data)
                data[key] = str(path)
            req = GenerationRequest.parse(**data)
            spec, plan = prepare(req, self.hardware(), self.settings)
            if not spec.tiny:
                found = inspect(spec, self.settings)
                if not isinstance(found, Installed):  # names what is missing of an incomplete copy
                    raise not_installed(spec, self.settings, found)
        except BaseException:
            shutil.rmtree(self.upload_dir(job_id), ignore_errors=True)
            raise
        stored = req.model_dump(mode="json", exclude={"output"})
        stored["seed"] = plan.seed  # pinned now, so a retry makes the same video
        kind = "image-to-video" if req.image else "text-to-video"
        return self._enqueue(Job(id=job_id, kind=kind, state="queued", request=stored, created_at=utcnow(),
                                 progress=JobProgress(phase="queued")))

    def submit_story(self, request: dict | None = None, *, uploads: dict | None = None, **fields: Any) -> Job:
        """Validate and queue a story job (kind ``story``: see :mod:`localvideo.story`). Checked at once like
        :meth:`submit`: the script (errors name the line), frames, crossfades, continuity, every scene planned
        on this machine, the model installed. The seed is pinned.

        ``uploads={"image": CheckedImage}``: the first scene starts from that image (stored under
        ``<home>/uploads/<job id>/`` like :meth:`submit`'s); from Python, ``image`` may also be a path."""
        from ..runtime.store import Installed, inspect, not_installed
        from ..story import StoryRequest, plan_story

        if self.stopping:
            raise ServiceUnavailable("The job service is shutting down.", hint="Submit again after it restarts.")
        data = {**(request or {}), **fields}
        if data.get("output") is not None:
            raise InvalidRequest("Jobs choose their own output file (under the outputs folder, by job id).",
                                 hint="Leave output out; download the video by job id.")
        job_id = uuid.uuid4().hex
        try:
            for key, upload in (uploads or {}).items():
                if key != "image":
                    raise InvalidRequest(f"Unknown upload {key!r}: a story takes one image, its first frame.")
                folder = self.upload_dir(job_id)
                folder.mkdir(parents=True, exist_ok=True)
                path = folder / f"image{upload.extension}"
                path.write_bytes(upload.data)
                data["image"] = str(path)
            req = StoryRequest.parse(**data)
            opts = req.options()
            sp = plan_story(req.source(), hardware=self.hardware(),
                            **{k: opts[k] for k in ("model", "crossfade_s", "continuity", "seed", "fps", "width",
                                                    "height", "steps", "guidance", "duration_s", "negative_prompt",
                                                    "image")})
            if not sp.spec.tiny:
                found = inspect(sp.spec, self.settings)
                if not isinstance(found, Installed):  # names what is missing of an incomplete copy
                    raise not_installed(sp.spec, self.settings, found)
        except BaseException:
            shutil.rmtree(self.upload_dir(job_id), ignore_errors=True)
            raise
        stored = req.model_dump() | {"seed": sp.seed}  # pinned now, so a retry makes the same video
        return self._enqueue(Job(id=job_id, kind="story", state="queued", request=stored,
                                 created_at=utcnow(), progress=JobProgress(phase="queued")))

    def submit_animation(self, request: dict | None = None, *, uploads: dict | None = None, **fields: Any) -> Job:
        """Validate and queue a photo animation job (kind ``photo-animation``, no model weights; see
        :class:`~localvideo.jobs.models.AnimationRequest`). ``uploads={"image": CheckedImage}``, or ``image`` a path."""
        from pydantic import ValidationError

        from ..request import _one_sentence
        from ..runtime.conditioning import image_size

        if self.stopping:
            raise ServiceUnavailable("The job service is shutting down.", hint="Submit again after it restarts.")
        data = {**(request or {}), **fields}
        job_id = uuid.uuid4().hex
        try:
            upload = (uploads or {}).get("image")
            if upload is not None:
                folder = self.upload_dir(job_id)
                folder.mkdir(parents=True, exist_ok=True)
                path = folder / f"image{upload.extension}"
                path.write_bytes(upload.data)
                data["image"] = str(path)
            if not data.get("image"):
                raise InvalidRequest("A photo animation needs a photo.", hint="Upload one as `image`.")
            try:
                req = AnimationRequest(**data)
            except ValidationError as e:
                raise InvalidRequest(_one_sentence(e), hint="Check the value and try again.") from None
            image_size(req.image)  # decodes the header: a file that is not an image is refused now
        except BaseException:
            shutil.rmtree(self.upload_dir(job_id), ignore_errors=True)
            raise
        return self._enqueue(Job(id=job_id, kind="photo-animation", state="queued",
                                 request=req.model_dump(mode="json"), created_at=utcnow(),
                                 progress=JobProgress(phase="queued")))

    def _enqueue(self, job: Job) -> Job:
        """Store a new queued job, tell subscribers, wake a worker; returns the job as stored (queued).

        Stored and published under the lock a worker claims under, so its ``queued`` event goes out before the
        worker can claim it (and publish ``running``): subscribers see each job's versions in order."""
        with self._lock:
            job = self.store.insert(job)
            self._publish(job)
        with self._wake:
            self._wake.notify_all()
        return job

    def get(self, job_id: str) -> Job:
        job = self.store.get(job_id) if valid_job_id(job_id) else None
        if job is None:
            raise JobNotFound(job_id)
        return job

    def list(self, states: Iterable[str] | None = None, limit: int = 50, offset: int = 0) -> JobPage:
        states = list(states or [])
        bad = [s for s in states if s not in STATES]
        if bad:
            raise InvalidRequest(f"Unknown job state {bad[0]!r}.", hint=f"Use one of: {', '.join(STATES)}.")
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidRequest(f"limit must be between 1 and {MAX_PAGE}, got {limit}.")
        if offset < 0:
            raise InvalidRequest(f"offset must be 0 or more, got {offset}.")
        jobs, total = self.store.list(states or None, limit, offset)
        nxt = offset + len(jobs)
        return JobPage(jobs=jobs, total=total, limit=limit, offset=offset, next_offset=nxt if nxt < total else None)

    def cancel(self, job_id: str) -> Job:
        """Queued → cancelled now. Running → the run stops at its next cancel check (each denoising step, each VAE
        decoder block, each encoded frame); the job becomes ``cancelled`` and no file is written. Cancelling a
        cancelled job is a no-op."""
        job = self.get(job_id)
        with self._lock:
            if job.state == "queued":
                done = self.store.transition(job_id, ["queued"], "cancelled", finished_at=utcnow(), progress=None,
                                             error=JobError(error="cancelled", message="Cancelled before it started."))
                if done is not None:
                    self._publish(done)
                    return done
                job = self.get(job_id)
            if job.state == "running":
                ev = self._running.get(job_id)
                if ev is not None:
                    ev.set()
                marked = self.store.request_cancel(job_id)
                if marked is not None:
                    self._publish(marked)
                    return marked
                job = self.get(job_id)
        if job.state == "cancelled":
            return job
        raise JobConflict(f"Job {job_id} {state_phrase(job.state)}; there is nothing to cancel.",
                          hint="Delete it instead if you want it gone.", state=job.state)

    def retry(self, job_id: str) -> Job:
        """Queue a failed, cancelled or interrupted job again (same id, same request and seed).

        A request stored by an older localvideo is brought to this version's field names first (renamed fields
        moved, unknown fields that ask for nothing dropped; see :mod:`localvideo.jobs.legacy`), stored so, and
        each change noted on the job; one that cannot run as it was asked for is refused (409) with what to do."""
        from .legacy import migrate

        job = self.get(job_id)
        changed: dict[str, Any] = {}
        if job.state in RETRYABLE:
            request, notes = migrate(job.kind, job.request, context=f"Job {job_id} cannot be retried")
            if request != job.request:
                changed = {"request": request, "notes": [*job.notes, *(n for n in notes if n not in job.notes)]}
        with self._lock:  # its folder was emptied when it failed/was cancelled/interrupted; the worker starts clean
            again = self.store.transition(job_id, RETRYABLE, "queued", progress=JobProgress(phase="queued"),
                                          result=None, error=None, started_at=None, finished_at=None,
                                          cancel_requested=False, **changed)
            if again is not None:  # published before a worker can claim it (as _enqueue)
                self._publish(again)
        if again is None:
            job = self.get(job_id)
            raise JobConflict(f"Job {job_id} {state_phrase(job.state)}; only failed, cancelled or interrupted jobs "
                              "can be retried.", state=job.state)
        with self._wake:
            self._wake.notify_all()
        return again

    def delete(self, job_id: str) -> None:
        """Forget a job and delete its files. A running job must be cancelled first. Subscribers get a
        :class:`~localvideo.jobs.events.Deleted` notice (the job as it was last stored), so that an open event
        stream on a queued job ends at once (SSE event ``deleted``)."""
        job = self.get(job_id)
        with self._lock:
            last = self.store.get(job_id)
            gone = self.store.delete(job_id, [s for s in STATES if s != "running"])
            if gone:
                shutil.rmtree(self.job_dir(job_id), ignore_errors=True)
                shutil.rmtree(self.upload_dir(job_id), ignore_errors=True)
                if last is not None:
                    self.events.publish_deleted(last)
                return
        job = self.store.get(job_id)
        if job is None:
            raise JobNotFound(job_id)
        raise JobConflict(f"Job {job_id} is running; cancel it before deleting it.", state=job.state)

    def subscribe(self, job_id: str | None = None, loop=None) -> Subscription:
        return self.events.subscribe(job_id, loop)

    def job_dir(self, job_id: str) -> Path:
        if not valid_job_id(job_id):
            raise JobNotFound(job_id)
        return self.settings.outputs / job_id

    def upload_dir(self, job_id: str) -> Path:
        """Inputs of a job (uploaded images): kept apart from its outputs, so a retry still has them."""
        if not valid_job_id(job_id):
            raise JobNotFound(job_id)
        return self.settings.home / "uploads" / job_id

    def video_path(self, job_id: str) -> Path:
        return self._artifact(job_id, VIDEO_NAME, "video")

    def thumbnail_path(self, job_id: str) -> Path:
        return self._artifact(job_id, THUMBNAIL_NAME, "thumbnail")

    def _artifact(self, job_id: str, name: str, what: str) -> Path:
        job = self.get(job_id)
        path = self.job_dir(job_id) / name
        if job.state != "succeeded" or not path.is_file():
            raise JobNotFound(job_id) if job.state == "succeeded" else _no_file(job, what)
        return path

    # -- machine facts ---------------------------------------------------------------------------------------
    def hardware(self) -> Hardware:
        if self._fixed_hardware is not None:
            return self._fixed_hardware
        from ..hardware import probe

        with self._hw_lock:
            now = time.monotonic()
            if self._hw is None or now - self._hw[0] > HARDWARE_TTL_S:
                self._hw = (now, probe(self.settings.home))
            return self._hw[1]

    def hardware_for(self, gpu_index: int | None) -> Hardware:
        hw = self.hardware()
        if gpu_index is None:
            return hw
        return replace(hw, gpus=tuple(g for g in hw.gpus if g.index == gpu_index))

    def models(self) -> list[dict]:
        """Every catalog model with its install state and whether it fits this machine at default settings."""
        from ..catalog import all_models
        from ..errors import LocalVideoError
        from ..hardware import GB
        from ..planner import plan_at_defaults
        from ..runtime.store import Incomplete, Installed, inspect, pull_command

        hw = self.hardware()
        rows = []
        for m in all_models():
            found = inspect(m, self.settings)
            installed = isinstance(found, Installed) or (m.tiny and found is None)  # tiny: built on first use
            row: dict[str, Any] = {
                "id": m.id, "name": m.name, "family": m.family, "tasks": list(m.tasks), "random_weights": m.tiny,
                "licence": m.licence, "weights_gb": round(m.weights_bytes / GB, 2),
                "installed": installed, "built_on_first_use": m.tiny and found is None,
                "incomplete": found.describe() if isinstance(found, Incomplete) else None,
                "pull_command": None if installed else pull_command(m),
                "supports_last_image": m.supports_last_image, "requires_last_image": m.requires_last_image,
            }
            try:
                p = plan_at_defaults(m, hw)
                row |= {"fits": True, "strategy": p.strategy, "vae_tiling": p.vae_tiling,
                        "peak_gb": round(p.estimate.peak_device_bytes / GB, 2), "reason": None}
            except LocalVideoError as e:
                row |= {"fits": False, "strategy": None, "vae_tiling": None, "peak_gb": None, "reason": e.message}
            rows.append(row)
        return rows

    def system(self) -> dict:
        from .. import __version__
        from ..hardware import software

        with self._lock:
            workers = [{"name": w.name, "device": w.device, "job_id": w.current_job} for w in self._workers]
        return {"version": __version__, "hardware": self.hardware().to_dict(), "software": software(),
                "workers": workers,
                "executor": {**self.executor.info(), "error": self.executor_error},
                "queue": {s: self.store.count([s]) for s in ("queued", "running")}}

    # -- worker side -----------------------------------------------------------------------------------------
    def _claim(self, timeout: float) -> tuple[Job, threading.Event] | None:
        """The next queued job (now running) and its cancel event, or None after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not self.stopping:
            with self._lock:
                job = self.store.claim_next()
                if job is not None:
                    ev = threading.Event()
                    if self.stopping:  # claimed as the shutdown began: it stops at its first cancel check
                        ev.set()
                    self._running[job.id] = ev
            if job is not None:
                self._publish(job)
                return job, ev
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            with self._wake:
                self._wake.wait(left)
        return None

    def _progress(self, job_id: str, progress: JobProgress) -> None:
        job = self.store.set_progress(job_id, progress)
        if job is not None:
            self._publish(job)

    def _finish(self, job_id: str, *, result: JobResult | None = None, error: JobError | None = None,
                cancelled: bool = False) -> Job | None:
        """The job's final state, stored and published (under the lock, so that a shutdown waiting for running jobs
        to end sees their final events go out first). None when the job is no longer running: the shutdown marked
        it interrupted meanwhile (the caller then discards what it made)."""
        with self._lock:
            self._running.pop(job_id, None)
            now = utcnow()
            if result is not None:
                job = self.store.transition(job_id, ["running"], "succeeded", result=result, finished_at=now)
            elif cancelled:
                current = self.store.get(job_id)
                if current is not None and not current.cancel_requested and self.stopping:
                    job = self.store.transition(job_id, ["running"], "interrupted", finished_at=now,
                                                error=INTERRUPTED)
                else:
                    job = self.store.transition(job_id, ["running"], "cancelled", finished_at=now, error=JobError(
                        error="cancelled", message="Cancelled while running; no video was written."))
            else:
                job = self.store.transition(job_id, ["running"], "failed", finished_at=now, error=error)
            if job is not None:
                self._publish(job)
            self._idle.notify_all()
        return job

    def _clean_dir(self, job_id: str) -> None:
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)

    def _publish(self, job: Job) -> None:
        self.events.publish(job)


def _no_file(job: Job, what: str) -> JobNotFound | JobConflict:
    """A finished job without the file: 404. A queued or running job: 409 (it exists, the file is not made yet; a
    404 for a job just created would say it is gone)."""
    if not job.terminal:
        return JobConflict(f"Job {job.id} has no {what} yet: it {state_phrase(job.state)}.",
                           hint="Wait until it has succeeded (GET /v1/jobs/{id}/events).", state=job.state)
    err = JobNotFound(job.id)
    err.message = f"Job {job.id} has no {what}: it {state_phrase(job.state)}."
    err.hint = None
    return err
