"""Several local workers sharing the process-wide pipeline cache: a cached pipeline is used by one job at a time.

A diffusers pipeline is not re-entrant: its scheduler (UniPC for Wan) keeps per-call state (timesteps, step index,
previous model outputs), so two threads denoising on one pipeline object corrupt each other. The cache lends an
entry to one job at a time; a second job for the same pipeline waits (shown as phase ``queued`` while it waits), and
an entry that is in use is never evicted or freed under the job using it.
"""

from __future__ import annotations

import threading
import time

import _helpers
import numpy as np
import pytest

from localvideo.errors import Cancelled
from localvideo.hardware import Hardware
from localvideo.jobs import JobService
from localvideo.runtime import recovery
from localvideo.runtime.cache import PipelineCache
from localvideo.settings import Settings

CPU = Hardware.assumed(None, ram_gb=16)
REQ = {"prompt": "a paper boat on a pond", "model": "tiny-wan", "steps": 6, "width": 128, "height": 128,
       "num_frames": 9, "seed": 11}


@pytest.fixture()
def settings(lv_home, tmp_path) -> Settings:
    return Settings(home=lv_home, jobs_db_path=tmp_path / "jobs.db", outputs_dir=tmp_path / "outputs")


def wait_for(svc: JobService, job_id: str, pred, timeout: float = 180):
    return _helpers.wait_for(svc, job_id, pred, timeout)


def read_frames(path) -> np.ndarray:
    import av

    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


# -- the service: two workers, one model ------------------------------------------------------------------------

def test_two_workers_on_one_model_make_the_same_video_as_a_solo_run(settings, monkeypatch):
    """Two concurrent jobs of the same tiny model and seed give exactly the solo run's frames.

    To make the overlap certain (not a matter of timing), the first job to reach denoising step 1 is held there until
    the other job has either run a denoising step itself (on the shared pipeline: the bug) or is waiting for the
    pipeline (phase ``queued`` while running: the fix)."""
    svc = JobService(settings, hardware=CPU, workers=2).start()
    try:
        solo = wait_for(svc, svc.submit(**REQ).id, lambda j: j.terminal)
        assert solo.state == "succeeded", solo.error
        expected = read_frames(svc.video_path(solo.id))

        seen: dict[str, list[tuple[str, str, int]]] = {}
        held: list[str] = []
        lock = threading.Lock()
        original = svc._progress

        def progress(job_id, p):
            original(job_id, p)
            with lock:
                seen.setdefault(job_id, []).append((svc.get(job_id).state, p.phase, p.step))
                hold = p.phase == "denoising" and p.step == 1 and not held
                if hold:
                    held.append(job_id)
            if not hold:
                return
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                with lock:
                    others = [e for j, events in seen.items() if j != job_id for e in events]
                if any(ph == "queued" or (ph == "denoising" and step >= 1) for _, ph, step in others):
                    return
                time.sleep(0.01)

        monkeypatch.setattr(svc, "_progress", progress)
        a, b = svc.submit(**REQ), svc.submit(**REQ)
        a, b = (wait_for(svc, j.id, lambda j: j.terminal) for j in (a, b))
        assert held, "no job reached denoising"
        assert (a.state, b.state) == ("succeeded", "succeeded"), (a.error, b.error)
        assert {a.result.seed, b.result.seed} == {solo.result.seed}
        for job in (a, b):
            assert np.array_equal(read_frames(svc.video_path(job.id)), expected), f"job {job.id} differs"
        # the job that was not held waited for the pipeline, and showed it: running, phase queued
        waiter = b.id if held[0] == a.id else a.id
        assert ("running", "queued", 0) in seen[waiter]
    finally:
        svc.close()


def test_a_job_waiting_for_a_busy_pipeline_can_be_cancelled(settings, monkeypatch):
    svc = JobService(settings, hardware=CPU, workers=2).start()
    try:
        release = threading.Event()
        original = svc._progress
        first: list[str] = []
        lock = threading.Lock()

        def progress(job_id, p):
            original(job_id, p)
            with lock:
                hold = p.phase == "denoising" and p.step == 1 and not first
                if hold:
                    first.append(job_id)
            if hold:
                release.wait(60)

        monkeypatch.setattr(svc, "_progress", progress)
        a, b = svc.submit(**REQ), svc.submit(**REQ)
        deadline = time.monotonic() + 120
        while not first and time.monotonic() < deadline:
            time.sleep(0.01)
        waiter = b.id if first[0] == a.id else a.id
        waiting = wait_for(svc, waiter, lambda j: j.state == "running" and j.progress and j.progress.phase == "queued")
        assert waiting.progress.message == recovery.WAITING_FOR_MODEL == "Waiting for the model: another job is using it."
        svc.cancel(waiter)
        cancelled = wait_for(svc, waiter, lambda j: j.terminal, timeout=30)
        release.set()
        done = wait_for(svc, first[0], lambda j: j.terminal)
        assert cancelled.state == "cancelled" and done.state == "succeeded", (cancelled.error, done.error)
        # the cache entry was handed back: a third job runs (and hits the warm pipeline)
        again = wait_for(svc, svc.submit(**{**REQ, "steps": 1}).id, lambda j: j.terminal)
        assert again.state == "succeeded", again.error
    finally:
        svc.close()


# -- the cache: leases ------------------------------------------------------------------------------------------

def _loader(name: str, size: int = 10):
    return lambda: ({"pipe": name}, size)


def test_an_entry_in_use_is_not_evicted_by_the_budget_or_by_recovery():
    cache = PipelineCache(budget_bytes=15)  # room for one of these at a time
    a = ("model-a", "/a", "float32", "cpu", "resident")
    b = ("model-b", "/b", "float32", "cpu", "resident")
    with cache.use(a, _loader("a")) as lease:
        assert lease.value == {"pipe": "a"} and not lease.hit
        with cache.use(b, _loader("b")):  # another thread's job on another model: over budget, a is in use
            assert a in cache and b in cache
        assert a in cache and b not in cache, "b (free, least recently used) goes once over budget; a stays"
        recovery.free_memory(cache, a)  # the OOM path asks to drop a while a job uses it: deferred
        cache.evict_all()
        assert a in cache and cache.stats.evictions == 1
    assert a not in cache and cache.stats.evictions == 2  # dropped when handed back, as asked


def test_an_entry_is_handed_back_on_errors_and_lent_to_one_user_at_a_time():
    cache = PipelineCache(budget_bytes=100)
    key = ("model-a", "/a", "float32", "cpu", "resident")
    with pytest.raises(RuntimeError):
        with cache.use(key, _loader("a")):
            raise RuntimeError("denoising failed")
    order: list[str] = []
    started = threading.Event()

    def second():
        with cache.use(key, _loader("a")) as lease:
            order.append("second")
            assert lease.hit

    with cache.use(key, _loader("a")) as lease:
        assert lease.hit
        t = threading.Thread(target=lambda: (started.set(), second()))
        t.start()
        started.wait()
        time.sleep(0.2)
        order.append("first")  # the other thread is still waiting for the entry
    t.join(10)
    assert order == ["first", "second"] and cache.stats.loads == 1


def _hold(cache: PipelineCache, key, done: threading.Event) -> threading.Thread:
    """Another job: a thread that leases ``key`` until ``done`` is set."""
    holding = threading.Event()

    def job():
        with cache.use(key, _loader(str(key))):
            holding.set()
            done.wait(30)

    t = threading.Thread(target=job)
    t.start()
    assert holding.wait(10)
    return t


def test_waiting_for_an_entry_stops_on_cancel_and_reports_the_wait():
    cache = PipelineCache(budget_bytes=100)
    key = ("model-a", "/a", "float32", "cpu", "resident")
    other = key[:4] + ("model_offload",)  # the same model under another key (another strategy)
    cancel, waits, done = threading.Event(), [], threading.Event()
    holder = _hold(cache, key, done)
    threading.Timer(0.3, cancel.set).start()
    with pytest.raises(Cancelled):
        with cache.use(key, _loader("a"), cancel=cancel, on_wait=waits.append):
            pass
    assert waits == [True], "told once that it waits; never given the lease"
    cancel.clear()
    threading.Timer(0.3, cancel.set).start()
    with pytest.raises(Cancelled):  # loading it again would hold its weights twice on this device: it waits too
        with cache.use(other, _loader("a2"), cancel=cancel):
            pass
    assert key in cache and other not in cache and cache.stats.loads == 1
    waits.clear()
    threading.Timer(0.3, done.set).start()
    with cache.use(key, _loader("a"), on_wait=waits.append) as lease:  # the holder ends: this one gets it, warm
        assert lease.hit and lease.waited_s > 0 and waits == [True, False]
    holder.join(10)
    with cache.use(other, _loader("a2")):  # free now: the old key is dropped for the new one
        assert key not in cache and other in cache
    with pytest.raises(RuntimeError, match="already holds"):  # the same thread asking twice: an error, no deadlock
        with cache.use(other, _loader("a2")):
            with cache.use(other, _loader("a2")):
                pass
    assert not cache.in_use(other)
