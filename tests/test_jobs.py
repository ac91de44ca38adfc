"""The job service in-process: SQLite store rules, a real worker on tiny pipelines, cancel, retry, restart recovery."""

from __future__ import annotations

import queue
import sqlite3

import pytest

from _helpers import wait_for
from localvideo.errors import DoesNotFit, InvalidRequest, ModelNotInstalled, UnknownModel
from localvideo.hardware import Hardware
from localvideo.jobs import JobConflict, JobNotFound, JobService
from localvideo.jobs.models import Job, JobError, JobProgress, ServiceUnavailable, utcnow
from localvideo.jobs.store import SQLiteJobStore
from localvideo.media.probe import probe
from localvideo.settings import Settings

CPU = Hardware.assumed(None, ram_gb=16)
FAST = {"model": "tiny-wan", "steps": 2, "width": 128, "height": 128, "num_frames": 9}
SLOW = {"model": "tiny-wan", "steps": 40, "width": 128, "height": 128, "num_frames": 33}


@pytest.fixture()
def settings(lv_home, tmp_path) -> Settings:
    # tiny models are shared by the session (lv_home/tiny); the database and outputs are this test's own
    return Settings(home=lv_home, jobs_db_path=tmp_path / "jobs.db", outputs_dir=tmp_path / "outputs")


@pytest.fixture()
def service(settings):
    svc = JobService(settings, hardware=CPU, workers=1).start()
    yield svc
    svc.close()


def _new(store: SQLiteJobStore, **kw) -> Job:
    import uuid

    return store.insert(Job(id=uuid.uuid4().hex, state="queued", request={"prompt": "x", **kw}, created_at=utcnow()))


# -- store ------------------------------------------------------------------------------------------------------

def test_store_is_wal_and_enforces_transitions(tmp_path):
    store = SQLiteJobStore(tmp_path / "j.db")
    assert sqlite3.connect(tmp_path / "j.db").execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    a, b = _new(store), _new(store)
    with pytest.raises(ValueError):
        store.transition(a.id, ["queued"], "succeeded")  # queued → succeeded is not a transition
    assert store.transition(a.id, ["running"], "failed") is None  # not running: nothing happens
    first = store.claim_next()
    assert first.id == a.id and first.state == "running" and first.attempts == 1  # FIFO
    assert store.claim_next().id == b.id and store.claim_next() is None
    done = store.transition(a.id, ["running"], "succeeded", finished_at=utcnow())
    assert done.state == "succeeded" and done.version > first.version
    assert store.transition(a.id, ["failed", "cancelled", "interrupted"], "queued") is None  # no retry of success
    moved = store.interrupt_running(JobError(error="interrupted", message="gone"))
    assert [j.id for j in moved] == [b.id] and store.get(b.id).state == "interrupted"
    assert store.integrity_ok()
    store.close()
    reopened = SQLiteJobStore(tmp_path / "j.db")  # it all survives a reopen
    assert reopened.get(a.id).state == "succeeded" and reopened.count() == 2
    jobs, total = reopened.list(["interrupted"])
    assert total == 1 and jobs[0].id == b.id and jobs[0].error.message == "gone"
    reopened.close()


# -- the service with a real worker -----------------------------------------------------------------------------

def test_submit_runs_for_real_with_progress_events_and_files(service):
    sub = service.subscribe()
    job = service.submit(prompt="a paper boat on a river", **FAST)
    assert job.state == "queued" and isinstance(job.request["seed"], int), "the seed is pinned at submit"
    seen = []
    while True:
        ev = sub.get(timeout=120)
        if ev.id == job.id:
            seen.append(ev)
            if ev.terminal:
                break
    sub.close()
    assert [e.version for e in seen] == sorted({e.version for e in seen})
    phases = [e.progress.phase for e in seen if e.progress]
    for p in ("loading", "denoising", "decoding", "encoding", "done"):
        assert p in phases
    final = service.get(job.id)
    assert final.state == "succeeded" and final.result.frames == 9 and final.result.seed == job.request["seed"]
    video = service.video_path(job.id)
    assert video == service.settings.outputs / job.id / "video.mp4"
    assert probe(video).frames == 9 and service.thumbnail_path(job.id).stat().st_size > 0
    assert (video.parent / "video.json").is_file()


def test_submit_refuses_what_can_never_run(service):
    with pytest.raises(UnknownModel):
        service.submit(prompt="x", model="nope")
    with pytest.raises(DoesNotFit):  # planned first: pulling a model that cannot run here would be pointless
        service.submit(prompt="x", model="wan2.1-t2v-1.3b")
    on_a_gpu = JobService(service.settings, store=service.store, hardware=Hardware.assumed(24))
    with pytest.raises(ModelNotInstalled) as e:
        on_a_gpu.submit(prompt="x", model="wan2.1-t2v-1.3b")
    assert e.value.details["command"] == "localvideo models pull wan2.1-t2v-1.3b"
    with pytest.raises(InvalidRequest):
        service.submit(prompt="", model="tiny-wan")
    with pytest.raises(InvalidRequest, match="output"):
        service.submit(prompt="x", model="tiny-wan", output="/tmp/x.mp4")
    with pytest.raises(JobNotFound):
        service.get("../../etc/passwd")
    with pytest.raises(JobNotFound):
        service.job_dir("..")
    assert service.list().total == 0, "nothing was queued"


def test_cancel_queued_and_running_jobs_then_retry(service):
    slow = service.submit(prompt="slow", **SLOW)
    queued = service.submit(prompt="waiting", **FAST)
    cancelled = service.cancel(queued.id)
    assert cancelled.state == "cancelled" and cancelled.attempts == 0
    wait_for(service, slow.id, lambda j: j.progress and j.progress.phase == "denoising" and j.progress.step >= 1)
    assert service.cancel(slow.id).cancel_requested
    final = wait_for(service, slow.id, lambda j: j.terminal, timeout=60)
    assert final.state == "cancelled" and final.progress.step < 40
    assert not (service.settings.outputs / slow.id).exists()
    with pytest.raises(JobNotFound):
        service.video_path(slow.id)
    again = service.retry(queued.id)
    assert again.state == "queued" and again.request == queued.request
    done = wait_for(service, queued.id, lambda j: j.terminal)
    assert done.state == "succeeded" and done.attempts == 1
    with pytest.raises(JobConflict):
        service.retry(queued.id)
    with pytest.raises(JobConflict):
        service.cancel(queued.id)
    service.delete(queued.id)
    assert not (service.settings.outputs / queued.id).exists()
    with pytest.raises(JobNotFound):
        service.get(queued.id)


def test_restart_turns_running_into_interrupted_and_cleans_partial_files(settings):
    store = SQLiteJobStore(settings.jobs_db)
    job = _new(store, model="tiny-wan", steps=2, num_frames=9, width=128, height=128, seed=1)
    store.claim_next()
    store.set_progress(job.id, JobProgress(phase="denoising", step=1, total=2))
    store.close()  # the process "died" here, mid-run, leaving a partial encode behind
    folder = settings.outputs / job.id
    folder.mkdir(parents=True)
    (folder / ".video.mp4.1234.partial.mp4").write_bytes(b"\x00" * 100)

    svc = JobService(settings, hardware=CPU, workers=1).start()
    try:
        back = svc.get(job.id)
        assert back.state == "interrupted" and back.error.error == "interrupted" and [j.id for j in svc.recovered] == [job.id]
        assert not folder.exists()
        with pytest.raises(ServiceUnavailable):  # one service per database
            JobService(settings, hardware=CPU).start()
        svc.retry(job.id)
        done = wait_for(svc, job.id, lambda j: j.terminal)
        assert done.state == "succeeded" and done.attempts == 2 and probe(svc.video_path(job.id)).frames == 9
    finally:
        svc.close()


def test_stopping_the_service_interrupts_the_running_job(settings):
    svc = JobService(settings, hardware=CPU, workers=1).start()
    job = svc.submit(prompt="slow", **SLOW)
    wait_for(svc, job.id, lambda j: j.progress and j.progress.phase == "denoising" and j.progress.step >= 1)
    svc.stop(timeout=60)
    after = svc.store.get(job.id)
    svc.store.close()
    assert after.state == "interrupted" and not (settings.outputs / job.id).exists()


def test_event_hub_keeps_the_newest_for_slow_readers():
    from localvideo.jobs.events import EventHub

    hub = EventHub(maxsize=3)
    sub = hub.subscribe("a")
    jobs = [Job(id="a", state="running", request={}, created_at=utcnow(), version=v) for v in range(10)]
    for j in jobs:
        hub.publish(j)
    assert [sub.get(0.1).version for _ in range(3)] == [7, 8, 9]
    with pytest.raises(queue.Empty):
        sub.get(0.01)
    hub.close()
    assert sub.get(0.1) is None
