"""The ``ray`` executor: the job service's jobs run on long-lived Ray actors, one per GPU, each with a warm cache.

Shape (the job service, its SQLite queue and its API stay on the head; only the heavy work moves)::

    worker thread (head) ── claims job ──► RayExecutor.run ── picks an idle actor ──► JobActor.run (node)
          ▲                                   │  polls progress, forwards cancel        │ generate(cancel=…)
          └── outcome, files in job dir ◄─────┘◄── Outcome, files in the shared folder ◄┘

* **Actors.** One :class:`JobActor` per GPU in the cluster (``num_gpus=1``; Ray pins ``CUDA_VISIBLE_DEVICES``), or
  ``ray_cpu_actors`` CPU actors (``num_cpus=1``) on a cluster without GPUs. Each lives as long as the server and owns
  its own :class:`~localvideo.runtime.cache.PipelineCache`, so a model loaded once stays warm on that actor.
  Actors are threaded (``max_concurrency``): while ``run`` works, ``poll``/``cancel``/``cache_models`` answer.
* **Routing.** The service keeps one worker thread per actor; a worker that claimed a job asks the idle actors which
  models they hold and takes one that already has the job's model, else any idle actor (the least used).
* **Progress** is kept on the actor in a bounded buffer (the newest events win) and drained by the head every
  ``poll_s`` into the job service's progress events (store + SSE).
* **Cancel**: the service's cancel event is forwarded with ``JobActor.cancel`` (a concurrent call) to the event that
  the actor's ``generate(cancel=…)`` checks every step, VAE decoder block and encoded frame; the run ends
  ``cancelled``, no file written.
* **Actor or node death** (:class:`ray.exceptions.RayActorError`, which covers ``ActorDiedError`` and
  ``ActorUnavailableError``): the actor is replaced by a fresh one and the job runs again on another actor, up to
  ``max_retries`` times; then it fails with the reason. A replacement starts empty (cold cache). Meanwhile the job
  shows phase ``queued`` with a progress ``message`` saying which worker stopped, why, and which attempt is next.
* **Outputs**: an actor writes the job's files to ``<shared_dir>/<job id>/`` (default: the head's outputs folder,
  which must then be mounted at the same path on every node). With ``stream_outputs`` the actor writes to its own
  node's outputs folder instead, and the head pulls the files back over Ray (fine for short videos).

Ray is imported only here, only when this executor is used (``pip install 'localvideo[cluster]'``).
"""

from __future__ import annotations

import collections
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import LocalVideoError
from .executors import Outcome, ProgressFn, Slot
from .models import VIDEO_NAME, Job, JobError, JobProgress

log = logging.getLogger(__name__)

PROGRESS_BUFFER = 256  # events kept per running job between two polls (older ones are dropped)
CALL_TIMEOUT_S = 30.0  # small actor calls (poll, cache_models, take_files) that must not hang the head


class RayUnavailable(LocalVideoError):
    code = "ray_unavailable"


def _import_ray():
    try:
        import ray
    except ImportError:
        raise RayUnavailable("The ray executor needs Ray, which is not installed.",
                             hint="pip install 'localvideo[cluster]' (or pip install ray) on the head and every "
                                  "worker node.") from None
    return ray


# -- the actor (runs on a Ray worker node) --------------------------------------------------------------------------

class JobActor:
    """One GPU (or CPU slot) and its warm pipeline cache. Created through :func:`_actor_class` (``ray.remote``)."""

    def __init__(self, label: str, settings_overrides: dict | None = None, hardware=None,
                 torch_threads: int | None = None) -> None:
        from ..settings import Settings

        self.label = label
        self.settings = Settings(**(settings_overrides or {}))
        self.hardware = hardware
        if torch_threads:
            import torch

            torch.set_num_threads(int(torch_threads))
        from ..generation import default_cache

        self.cache = default_cache(self.settings)  # this process's own cache: one actor per process
        self._lock = threading.Lock()
        self._jobs: dict[str, dict] = {}
        self.jobs_run = 0

    def ready(self) -> dict:
        import ray

        ctx = ray.get_runtime_context()
        return {"label": self.label, "pid": os.getpid(), "node_id": ctx.get_node_id(),
                "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}

    def cache_models(self) -> list[str]:
        """Model ids whose pipelines this actor holds loaded (cache keys start with the model id)."""
        return [k[0] if isinstance(k, tuple) else str(k) for k in self.cache.keys()]

    def stats(self) -> dict:
        import torch

        s = self.cache.stats
        return {"label": self.label, "pid": os.getpid(), "models": self.cache_models(), "loads": s.loads,
                "hits": s.hits, "evictions": s.evictions, "jobs_run": self.jobs_run,
                "torch_threads": torch.get_num_threads()}

    def run(self, job_id: str, kind: str, request: dict, folder: str | None) -> Outcome:
        from ..hardware import probe
        from .executors import execute

        target = Path(folder) if folder else self.settings.outputs / job_id
        cancel = threading.Event()
        events: collections.deque = collections.deque(maxlen=PROGRESS_BUFFER)
        with self._lock:
            self._jobs[job_id] = {"cancel": cancel, "events": events}
        try:
            hw = self.hardware if self.hardware is not None else probe(self.settings.home)
            out = execute(kind, request, target, hardware=hw, on_progress=events.append, cancel=cancel,
                          cache=self.cache, settings=self.settings)
            out.ran_on = self.label
            self.jobs_run += 1
            return out
        finally:
            with self._lock:  # leave the events for the final poll; drop the cancel handle
                entry = self._jobs.get(job_id)
                if entry is not None:
                    entry["done"] = True

    def poll(self, job_id: str) -> list[JobProgress]:
        """Progress events since the last poll (and forget a finished job once drained)."""
        with self._lock:
            entry = self._jobs.get(job_id)
            if entry is None:
                return []
            events = entry["events"]
            out = [events.popleft() for _ in range(len(events))]
            if entry.get("done"):
                del self._jobs[job_id]
            return out

    def cancel(self, job_id: str) -> bool:
        with self._lock:
            entry = self._jobs.get(job_id)
        if entry is None:
            return False
        entry["cancel"].set()
        return True

    def take_files(self, job_id: str, folder: str | None) -> dict[str, bytes]:
        """Stream-back mode: the job's files (read, then removed from this node)."""
        target = Path(folder) if folder else self.settings.outputs / job_id
        files = {p.name: p.read_bytes() for p in sorted(target.iterdir()) if p.is_file()} if target.is_dir() else {}
        shutil.rmtree(target, ignore_errors=True)
        return files

    def discard(self, job_id: str, folder: str | None) -> None:
        shutil.rmtree(Path(folder) if folder else self.settings.outputs / job_id, ignore_errors=True)


_ACTOR_CLS = None


def _actor_class():
    global _ACTOR_CLS
    if _ACTOR_CLS is None:
        ray = _import_ray()
        _ACTOR_CLS = ray.remote(JobActor)
    return _ACTOR_CLS


# -- the head side ----------------------------------------------------------------------------------------------

class _RayOwner(threading.Thread):
    """Calls ``ray.init`` and stays alive until ``finish`` (then ``ray.shutdown``).

    A local Ray instance's GCS and raylet are started with a parent-death signal tied to the *thread* that started
    them (Linux ``PR_SET_PDEATHSIG``): ``ray.init`` from a short-lived thread (the service starts its executor in
    one) gets the whole cluster killed when that thread ends. This thread lives as long as the executor."""

    def __init__(self, kwargs: dict) -> None:
        super().__init__(name="localvideo-ray-owner", daemon=True)
        self.kwargs = kwargs
        self.started = threading.Event()
        self.error: BaseException | None = None
        self._done = threading.Event()

    def run(self) -> None:
        import ray

        try:
            ray.init(**self.kwargs)
        except BaseException as e:  # noqa: BLE001 - handed to the starting thread
            self.error = e
            self.started.set()
            return
        self.started.set()
        self._done.wait()
        try:
            ray.shutdown()
        except Exception:  # noqa: BLE001
            log.exception("ray.shutdown failed")

    def finish(self, timeout: float = 30.0) -> None:
        self._done.set()
        self.join(timeout)


@dataclass
class _ActorSlot:
    index: int
    label: str = ""
    handle: Any = None
    state: str = "starting"  # starting | idle | busy | stopped
    generation: int = 0
    info: dict = field(default_factory=dict)
    jobs: int = 0
    job_id: str | None = None
    error: str | None = None


class RayExecutor:
    """Runs the job service's jobs on Ray actors. See the module docstring for the design."""

    name = "ray"

    def __init__(self, address: str | None = None, *, actors: int | None = None, cpu_actors: int = 2,
                 max_retries: int = 2, shared_dir: str | Path | None = None, stream_outputs: bool = False,
                 actor_settings: dict | None = None, hardware=None, torch_threads: int | None = None,
                 poll_s: float = 0.1, start_timeout_s: float = 120.0, init_kwargs: dict | None = None) -> None:
        """``address``: ``auto``, ``HOST:PORT`` or ``ray://…``; None starts (or reuses) a Ray instance in this
        process. ``actors``: how many (default: one per GPU in the cluster, else ``cpu_actors`` CPU actors).
        ``actor_settings``: :class:`~localvideo.settings.Settings` fields for the actors (default: each node's own
        ``LOCALVIDEO_*`` environment). ``hardware``: pin the actors' machine description (tests)."""
        self.address = address
        self.n_actors = actors
        self.cpu_actors = max(1, int(cpu_actors))
        self.max_retries = max(0, int(max_retries))
        self.shared_dir = Path(shared_dir) if shared_dir else None
        self.stream_outputs = stream_outputs
        self.actor_settings = dict(actor_settings or {})
        self.hardware = hardware
        self.torch_threads = torch_threads
        self.poll_s = poll_s
        self.start_timeout_s = start_timeout_s
        self.init_kwargs = dict(init_kwargs or {})
        self.use_gpus = False
        self._service = None
        self._slots: list[_ActorSlot] = []
        self._cond = threading.Condition()
        self._owns_ray = False
        self._owner: _RayOwner | None = None
        self._stopped = False
        self.history: collections.deque = collections.deque(maxlen=1000)  # routing log (job, actor, outcome)

    @classmethod
    def from_settings(cls, settings) -> "RayExecutor":
        address = settings.ray_address or None
        return cls(address, actors=settings.ray_actors, cpu_actors=settings.ray_cpu_actors,
                   max_retries=settings.ray_max_retries, shared_dir=settings.shared_dir,
                   stream_outputs=settings.ray_stream_outputs)

    # -- lifecycle -------------------------------------------------------------------------------------------
    def start(self, service) -> list[Slot]:
        ray = _import_ray()
        self._service = service
        if not ray.is_initialized():
            kwargs = {"include_dashboard": False, "log_to_driver": False, **self.init_kwargs}
            if self.address:
                kwargs["address"] = self.address
            self._owner = _RayOwner(kwargs)
            self._owner.start()
            self._owner.started.wait()
            if self._owner.error is not None:
                e = self._owner.error
                raise RayUnavailable(f"Could not connect to the Ray cluster at {self.address or '(local)'}: {e}",
                                     hint="Start it with `ray start --head` (see docs/cluster.md), or use "
                                          "--ray-address HOST:PORT.") from e
            self._owns_ray = True
        gpus = int(ray.cluster_resources().get("GPU", 0))
        self.use_gpus = gpus > 0
        n = self.n_actors or (gpus if self.use_gpus else self.cpu_actors)
        self._slots = [_ActorSlot(i) for i in range(n)]
        for slot in self._slots:
            self._spawn(slot)
        deadline = time.monotonic() + self.start_timeout_s
        for slot in self._slots:
            try:
                slot.info = ray.get(slot.handle.ready.remote(), timeout=max(1.0, deadline - time.monotonic()))
            except Exception as e:
                raise RayUnavailable(f"Ray actor {slot.label} did not start: {_reason(e)}",
                                     hint=f"{'GPUs' if self.use_gpus else 'CPUs'} requested per actor: 1; "
                                          f"cluster resources: {ray.cluster_resources()}. Ask for fewer actors "
                                          "(--ray-actors) or add nodes.") from e
            slot.state = "idle"
        log.info("ray executor: %d %s actor(s) on %s", n, "GPU" if self.use_gpus else "CPU",
                 sorted({s.info.get("node_id", "?")[:8] for s in self._slots}))
        return [Slot(f"ray-{s.index}", f"ray:{'gpu' if self.use_gpus else 'cpu'}-actor-{s.index}")
                for s in self._slots]

    def _spawn(self, slot: _ActorSlot) -> None:
        cls = _actor_class()
        slot.generation += 1
        slot.label = f"actor-{slot.index}" + (f".{slot.generation - 1}" if slot.generation > 1 else "")
        resources = {"num_gpus": 1, "num_cpus": 0} if self.use_gpus else {"num_cpus": 1}
        slot.handle = cls.options(max_concurrency=4, **resources).remote(
            slot.label, self.actor_settings, self.hardware, self.torch_threads)

    def stop(self) -> None:
        ray = _import_ray()
        with self._cond:
            self._stopped = True
            slots = list(self._slots)
            for s in slots:
                s.state = "stopped"
            self._cond.notify_all()
        for s in slots:
            try:
                ray.kill(s.handle)
            except Exception:  # noqa: BLE001 - already gone
                pass
        if self._owns_ray:
            self._owner.finish()
            self._owns_ray = False

    # -- introspection (tests, /v1/system) --------------------------------------------------------------------
    def actors(self) -> list[dict]:
        with self._cond:
            return [{"label": s.label, "state": s.state, "jobs": s.jobs, "job_id": s.job_id, "pid": s.info.get("pid"),
                     "node_id": s.info.get("node_id"), "gpu_ids": s.info.get("gpu_ids")} for s in self._slots]

    def actor_stats(self) -> list[dict]:
        ray = _import_ray()
        with self._cond:
            handles = [s.handle for s in self._slots]
        return ray.get([h.stats.remote() for h in handles], timeout=CALL_TIMEOUT_S)

    def handle_running(self, job_id: str):
        """The actor handle running ``job_id`` now, or None (tests kill it)."""
        with self._cond:
            for s in self._slots:
                if s.job_id == job_id and s.state == "busy":
                    return s.handle
        return None

    def info(self) -> dict[str, Any]:
        return {"executor": self.name, "address": self.address or "local", "gpus": self.use_gpus,
                "max_retries": self.max_retries, "actors": self.actors()}

    # -- running a job ---------------------------------------------------------------------------------------
    def _target(self, job: Job, folder: Path) -> str | None:
        """Where the actor writes: the shared folder (head-side path), or None = its node's own outputs folder."""
        if self.stream_outputs:
            return None
        return str((self.shared_dir / job.id) if self.shared_dir else folder)

    def run(self, job: Job, folder: Path, slot: Slot, on_progress: ProgressFn, cancel: threading.Event) -> Outcome:
        ray = _import_ray()
        from ray.exceptions import RayActorError

        model = str(job.request.get("model") or "")
        target = self._target(job, folder)
        deaths: list[str] = []
        while True:
            chosen = self._acquire(job.id, model, cancel)
            if chosen is None:
                if cancel.is_set():
                    return Outcome("cancelled")
                return Outcome("failed", error=JobError(
                    error="no_workers", message=f"No Ray actor became available within {self.start_timeout_s:g} s.",
                    hint="Check the cluster (ray status): workers may have left or lack free GPUs."))
            actor, affinity = chosen
            try:
                outcome = self._run_on(actor, job, target, on_progress, cancel)
            except RayActorError as e:
                reason, dead = _reason(e), actor.label  # the label before _replace renames the slot
                deaths.append(f"{dead}: {reason}")
                self._record(job.id, actor.label, "died", affinity)
                log.warning("ray actor %s died running job %s (%s)", actor.label, job.id, reason)
                self._replace(actor)
                if cancel.is_set():
                    return Outcome("cancelled")
                if len(deaths) > self.max_retries:
                    return Outcome("failed", error=JobError(
                        error="worker_lost",
                        message=(f"The Ray actor running this job died {len(deaths)} time(s); gave up after "
                                 f"{self.max_retries} retr{'y' if self.max_retries == 1 else 'ies'}. Last: {reason}"),
                        hint="Look at the worker nodes (ray status, the Ray logs): out-of-memory kills and lost "
                             "nodes are the usual causes. Retry the job when the cluster is healthy."))
                on_progress(JobProgress(phase="queued", message=retry_message(
                    dead, reason, attempt=len(deaths) + 1, attempts=self.max_retries + 1)))
                continue
            except ray.exceptions.RayTaskError as e:  # the actor is fine; the call itself failed
                self._release(actor)
                self._record(job.id, actor.label, "failed", affinity)
                return Outcome("failed", error=JobError(error="generation_failed", message=f"The job failed on "
                               f"{actor.label}: {_reason(e)}", hint="See the Ray worker logs for the traceback."),
                               ran_on=actor.label)
            except Exception as e:  # noqa: BLE001 - an actor that stopped answering: replace it, fail the job
                log.exception("ray actor %s stopped answering while running job %s", actor.label, job.id)
                self._record(job.id, actor.label, "lost", affinity)
                self._replace(actor)
                return Outcome("failed", error=JobError(
                    error="worker_lost", message=f"Ray {actor.label} stopped answering: {_reason(e)}",
                    hint="It was replaced; retry the job."), ran_on=actor.label)
            self._release(actor)
            self._record(job.id, actor.label, outcome.state, affinity)
            if outcome.state == "succeeded":
                try:
                    self._collect(actor, job, folder, target, outcome)
                except Exception as e:  # noqa: BLE001 - a video we cannot bring to the head is a failed job
                    log.exception("could not collect the files of job %s", job.id)
                    return Outcome("failed", error=JobError(
                        error="output_unavailable",
                        message=f"The video was made on {actor.label} but could not be brought to the head: {e}",
                        hint="Mount the shared folder at the same path on every node (LOCALVIDEO_SHARED_DIR), or "
                             "set LOCALVIDEO_RAY_STREAM_OUTPUTS=1."), ran_on=actor.label)
                if deaths:
                    note = (f"Ran on Ray {actor.label} after {len(deaths)} lost actor(s): " + "; ".join(deaths))[:1000]
                    outcome.result = outcome.result.model_copy(
                        update={"warnings": [*outcome.result.warnings, note]})
            return outcome

    def _run_on(self, actor: _ActorSlot, job: Job, target: str | None, on_progress: ProgressFn,
                cancel: threading.Event) -> Outcome:
        ray = _import_ray()
        handle = actor.handle
        ref = handle.run.remote(job.id, job.kind, job.request, target)
        cancel_sent = False
        while True:
            ready, _ = ray.wait([ref], timeout=self.poll_s)
            if cancel.is_set() and not cancel_sent:
                handle.cancel.remote(job.id)  # fire and forget; a dead actor surfaces through ref
                cancel_sent = True
            if ready:
                outcome = ray.get(ref)  # RayActorError when the actor (or its node) died
                self._drain(handle, job.id, on_progress, final=True)
                return outcome
            self._drain(handle, job.id, on_progress)

    def _drain(self, handle, job_id: str, on_progress: ProgressFn, final: bool = False) -> None:
        ray = _import_ray()
        try:
            events = ray.get(handle.poll.remote(job_id), timeout=CALL_TIMEOUT_S)
        except ray.exceptions.RayActorError:
            if final:
                return
            raise
        for ev in events:
            on_progress(ev)

    def _collect(self, actor: _ActorSlot, job: Job, folder: Path, target: str | None, outcome: Outcome) -> None:
        """Bring the finished job's files into the head's job folder."""
        ray = _import_ray()
        folder = Path(folder)
        expected = outcome.result.bytes if outcome.result else None
        if target is not None and Path(target) == folder:
            if not (folder / VIDEO_NAME).is_file():
                raise FileNotFoundError(f"{folder / VIDEO_NAME} is not visible on the head")
            return
        if target is not None and (Path(target) / VIDEO_NAME).is_file():  # shared folder visible here: move in
            folder.mkdir(parents=True, exist_ok=True)
            for p in Path(target).iterdir():
                shutil.move(str(p), str(folder / p.name))
            shutil.rmtree(target, ignore_errors=True)
        else:  # stream back over Ray
            from ..runtime.leftovers import owner_tag

            files = ray.get(actor.handle.take_files.remote(job.id, target), timeout=CALL_TIMEOUT_S * 4)
            if VIDEO_NAME not in files:
                raise FileNotFoundError(f"{actor.label} has no {VIDEO_NAME} for the job")
            folder.mkdir(parents=True, exist_ok=True)
            for name, data in files.items():
                tmp = folder / f".{name}.{owner_tag()}.partial"  # a killed head's leftover is swept
                tmp.write_bytes(data)
                os.replace(tmp, folder / name)
        size = (folder / VIDEO_NAME).stat().st_size
        if expected is not None and size != expected:
            raise OSError(f"{VIDEO_NAME} has {size} bytes on the head, {expected} on the actor")

    # -- routing ---------------------------------------------------------------------------------------------
    def _acquire(self, job_id: str, model: str, cancel: threading.Event) -> tuple[_ActorSlot, bool] | None:
        """An idle actor, preferring one that has ``model`` loaded (asked from the actors themselves)."""
        ray = _import_ray()
        deadline = time.monotonic() + self.start_timeout_s
        with self._cond:
            while True:
                if self._stopped or cancel.is_set():
                    return None
                idle = [s for s in self._slots if s.state == "idle"]
                if idle:
                    break
                if time.monotonic() >= deadline:
                    return None
                self._cond.wait(0.2)
            for s in idle:
                s.state = "busy"  # hold them while we ask; released below
        models: dict[int, list[str]] = {}
        for s in idle:
            try:
                models[s.index] = ray.get(s.handle.cache_models.remote(), timeout=CALL_TIMEOUT_S)
            except Exception as e:  # noqa: BLE001 - a dead idle actor: replace it, route elsewhere
                log.warning("ray actor %s did not answer (%s); replacing it", s.label, _reason(e))
                models[s.index] = None
        with self._cond:
            alive = [s for s in idle if models[s.index] is not None]
            for s in idle:
                if models[s.index] is None:
                    self._replace_locked(s)
            warm = [s for s in alive if model in models[s.index]]
            pick = min(warm or alive, key=lambda s: s.jobs) if alive else None
            for s in alive:
                if s is not pick:
                    s.state = "idle"
            if pick is not None:
                pick.job_id = job_id
                pick.jobs += 1
            self._cond.notify_all()
        if pick is None:
            return self._acquire(job_id, model, cancel)
        return pick, bool(warm)

    def _release(self, actor: _ActorSlot) -> None:
        with self._cond:
            if actor.state == "busy":
                actor.state = "idle"
            actor.job_id = None
            self._cond.notify_all()

    def _record(self, job_id: str, label: str, outcome: str, affinity: bool) -> None:
        self.history.append({"job_id": job_id, "actor": label, "outcome": outcome, "affinity": affinity,
                             "at": time.time()})

    # -- actor replacement -------------------------------------------------------------------------------------
    def _replace(self, actor: _ActorSlot) -> None:
        with self._cond:
            self._replace_locked(actor)

    def _replace_locked(self, slot: _ActorSlot) -> None:
        """Kill what is left of the actor and start a fresh one in its slot (ready in the background)."""
        ray = _import_ray()
        if self._stopped:
            return
        try:
            ray.kill(slot.handle)
        except Exception:  # noqa: BLE001 - already dead
            pass
        slot.job_id = None
        slot.state = "starting"
        self._spawn(slot)
        threading.Thread(target=self._await_ready, args=(slot, slot.generation), daemon=True,
                         name=f"localvideo-ray-{slot.label}").start()

    def _await_ready(self, slot: _ActorSlot, generation: int) -> None:
        ray = _import_ray()
        while not self._stopped and slot.generation == generation:
            try:
                info = ray.get(slot.handle.ready.remote(), timeout=self.start_timeout_s)
            except ray.exceptions.GetTimeoutError:
                log.warning("ray actor %s is still waiting for resources", slot.label)
                continue
            except Exception as e:  # noqa: BLE001 - the constructor failed or the node went away: try again
                slot.error = _reason(e)
                log.warning("ray actor %s failed to start (%s); retrying in 5 s", slot.label, slot.error)
                time.sleep(5)
                with self._cond:
                    if self._stopped or slot.generation != generation:
                        return
                    self._spawn(slot)
                    generation = slot.generation
                continue
            with self._cond:
                if slot.generation == generation and slot.state == "starting":
                    slot.info = info
                    slot.state = "idle"
                    slot.error = None
                    self._cond.notify_all()
            log.info("ray actor %s is ready (pid %s)", slot.label, info.get("pid"))
            return


def retry_message(label: str, reason: str, *, attempt: int, attempts: int) -> str:
    """The progress message of a job whose actor died, while it waits to run again on another actor (phase
    ``queued``, state ``running``: not the model wait the local executor shows in that phase)."""
    return (f"The worker running this job ({label}) stopped ({reason}); retrying on another worker, "
            f"attempt {attempt} of {attempts}.")


def _reason(e: BaseException) -> str:
    """The first meaningful line of a Ray error (they carry long tracebacks)."""
    text = str(e).strip() or type(e).__name__
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return f"{type(e).__name__}: {(lines[0] if lines else '')[:300]}"
