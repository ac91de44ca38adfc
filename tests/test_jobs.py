"""The job service in-process: SQLite store rules, a real worker on tiny pipelines, cancel, retry, restart recovery."""

from __future__ import annotations

import queue
import sqlite3
import threading
import time

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


class _ClaimOnCommit:
    """A store's connection where another worker (its own connection to the same file) claims the new job the
    moment the INSERT has committed: the worst moment for the inserting thread, made certain."""

    def __init__(self, db: sqlite3.Connection, worker: SQLiteJobStore) -> None:
        self._db, self._worker, self.claimed = db, worker, []

    def execute(self, sql: str, params=()):
        cur = self._db.execute(sql, params)
        if not sql.lstrip().upper().startswith("INSERT"):
            return cur
        rows = cur.fetchall()  # the statement is done: committed (autocommit)
        cur.close()
        claimer = threading.Thread(target=lambda: self.claimed.append(self._worker.claim_next()))
        claimer.start()
        claimer.join(30)
        return _Rows(rows)

    def __getattr__(self, name):
        return getattr(self._db, name)


class _Rows:
    def __init__(self, rows) -> None:
        self._rows = list(rows)

    def fetchone(self):
        return self._rows.pop(0) if self._rows else None

    def fetchall(self):
        rows, self._rows = self._rows, []
        return rows


def test_insert_returns_the_job_as_stored_even_when_a_worker_claims_it_at_once(tmp_path):
    store, worker = SQLiteJobStore(tmp_path / "j.db"), SQLiteJobStore(tmp_path / "j.db")
    store._db = conn = _ClaimOnCommit(store._db, worker)
    job = _new(store)
    assert [j.id for j in conn.claimed] == [job.id], "the other worker claimed the job between insert and return"
    assert (job.state, job.version, job.attempts, job.started_at) == ("queued", 0, 0, None)
    later = store.get(job.id)
    assert (later.state, later.version, later.attempts) == ("running", 1, 1)
    store._db = conn._db
    store.close()
    worker.close()


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


class _EagerWorkerStore(SQLiteJobStore):
    """After each insert, the service's idle worker is woken and given a second to claim the new job (and publish
    it ``running``) before ``insert`` returns to ``submit``: a worker ready and waiting, at the worst moment."""

    service: JobService | None = None

    def insert(self, job: Job) -> Job:
        stored = super().insert(job)
        with self.service.subscribe(job.id) as sub:
            with self.service._wake:
                self.service._wake.notify_all()
            try:
                sub.get(timeout=1.0)  # the worker's `running`, unless the service holds it off until it has published
            except queue.Empty:
                pass
        return stored


def test_submit_returns_the_queued_job_and_publishes_it_before_a_waiting_worker_claims_it(settings):
    store = _EagerWorkerStore(settings.jobs_db)
    store.service = svc = JobService(settings, store=store, hardware=CPU, workers=1)
    svc.start()
    try:
        deadline = time.monotonic() + 60
        while not svc._workers and time.monotonic() < deadline:  # the worker is up, idle, waiting for a job
            time.sleep(0.01)
        sub = svc.subscribe()
        job = svc.submit(prompt="a paper boat on a river", **FAST)
        assert (job.state, job.version, job.attempts, job.progress.phase) == ("queued", 0, 0, "queued")
        seen = []
        while not seen or not seen[-1].terminal:
            ev = sub.get(timeout=120)
            if ev.id == job.id:
                seen.append(ev)
        sub.close()
        assert [(e.state, e.version) for e in seen[:2]] == [("queued", 0), ("running", 1)]
        assert [e.version for e in seen] == sorted({e.version for e in seen}), "each version once, in order"
        assert seen[-1].state == "succeeded" and seen[-1].attempts == 1
    finally:
        svc.close()


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
    assert final.progress.eta_s is None and final.progress.message == "Where the job was when it was cancelled; it " \
                                                                      "is not running."
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
    assert after.progress.phase == "denoising" and after.progress.eta_s is None, "where it stopped, not live"
    assert after.progress.message == "Where the job was when the server stopped; it is not running."


class _WaitingExecutor:
    """Runs nothing: says (as the ray executor does after a lost actor) what the claimed job waits for, until cancel."""

    name = "waiting"
    MESSAGE = "The worker running this job stopped (test); retrying on another worker, attempt 2 of 3."

    def start(self, service):
        from localvideo.jobs.executors import Slot

        return [Slot("waiting-0", "cpu")]

    def run(self, job, folder, slot, on_progress, cancel):
        from localvideo.jobs.executors import Outcome

        on_progress(JobProgress(phase="queued", message=self.MESSAGE))
        cancel.wait(60)
        return Outcome("cancelled")

    def stop(self):
        pass

    def info(self):
        return {"executor": self.name}


def test_progress_message_reaches_the_rest_api_and_old_rows_read_as_null(settings):
    from fastapi.testclient import TestClient

    from localvideo.api.app import create_app

    svc = JobService(settings, hardware=CPU, executor=_WaitingExecutor()).start()
    client = TestClient(create_app(settings, service=svc), base_url="http://127.0.0.1:8765")
    try:
        job = svc.submit(prompt="a kite", **FAST)
        wait_for(svc, job.id, lambda j: j.progress is not None and j.progress.message is not None, timeout=30)
        body = client.get(f"/v1/jobs/{job.id}").json()
        assert body["state"] == "running"
        assert body["progress"]["phase"] == "queued" and body["progress"]["message"] == _WaitingExecutor.MESSAGE
        listed = client.get("/v1/jobs", params={"state": "running"}).json()["jobs"]
        assert [j["progress"]["message"] for j in listed if j["id"] == job.id] == [_WaitingExecutor.MESSAGE]
        svc.cancel(job.id)
        wait_for(svc, job.id, lambda j: j.terminal, timeout=30)
    finally:
        client.close()
        svc.close()
    # progress stored by a localvideo without the field (and every phase that needs no sentence): message is null
    assert JobProgress.model_validate_json('{"phase": "loading", "step": 0, "total": 4}').message is None
    assert JobProgress(phase="denoising").model_dump()["message"] is None


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


class _StuckExecutor:
    """A worker inside one long uninterruptible stretch (a big model's denoising step): it ignores the cancel until
    the test releases it, then comes back with a video it made."""

    name = "stuck"

    def __init__(self) -> None:
        self.started, self.release, self.done = threading.Event(), threading.Event(), threading.Event()

    def start(self, service):
        from localvideo.jobs.executors import Slot

        return [Slot("stuck-0", "cpu")]

    def run(self, job, folder, slot, on_progress, cancel):
        from localvideo.jobs.executors import Outcome
        from localvideo.jobs.models import JobResult

        on_progress(JobProgress(phase="denoising", step=3, total=50, elapsed_s=1.0, eta_s=15.0))
        self.started.set()
        self.release.wait(60)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "video.mp4").write_bytes(b"made after the shutdown began")
        self.done.set()
        return Outcome("succeeded", result=JobResult(bytes=29, frames=9, width=128, height=128, fps=16.0,
                                                     duration_s=0.5, seed=1, model="tiny-wan", random_weights=True,
                                                     strategy="resident", has_thumbnail=False, timings={}))

    def stop(self):
        pass

    def info(self):
        return {"executor": self.name}


def test_a_shutdown_interrupts_a_job_stuck_in_a_long_step_after_the_grace_and_discards_its_work(settings):
    from localvideo.jobs.models import STOPPED_MESSAGES

    ex = _StuckExecutor()
    svc = JobService(settings, hardware=CPU, executor=ex).start()
    try:
        job = svc.submit(prompt="a kite", **FAST)
        queued = svc.submit(prompt="next", **FAST)
        assert ex.started.wait(30)
        wait_for(svc, job.id, lambda j: j.progress is not None and j.progress.phase == "denoising", timeout=30)
        sub, other = svc.subscribe(job.id), svc.subscribe(queued.id)
        t0 = time.monotonic()
        svc.begin_shutdown(grace_s=0.5)
        seen = []
        while (ev := sub.get(timeout=10)) is not None:  # None: the hub closed, after the job's final event
            seen.append(ev)
        waited = time.monotonic() - t0
        assert other.get(timeout=1) is None, "every stream is ended"
        assert 0.4 < waited < 5, waited
        final = seen[-1]
        assert final.state == "interrupted" and final.error.error == "interrupted"
        assert (final.progress.phase, final.progress.step) == ("denoising", 3), "where it stopped"
        assert final.progress.eta_s is None and final.progress.message == STOPPED_MESSAGES["interrupted"]
        ex.release.set()
        assert ex.done.wait(30)
        svc.stop(timeout=30)  # joins the worker, which found its job interrupted: it keeps nothing
    finally:
        ex.release.set()
        svc.close()
    store = SQLiteJobStore(settings.jobs_db)
    try:
        assert store.get(job.id).state == "interrupted" and store.get(queued.id).state == "queued"
    finally:
        store.close()
    assert not (settings.outputs / job.id).exists(), "the video made after the shutdown began was discarded"


def test_delete_tells_subscribers_and_conflicts_read_right(service):
    from localvideo.jobs.events import Deleted

    slow = service.submit(prompt="slow", **SLOW)
    queued = service.submit(prompt="waiting", **FAST)
    wait_for(service, slow.id, lambda j: j.state == "running")
    with service.subscribe(queued.id) as sub:
        service.delete(queued.id)
        notice = sub.get(timeout=5)
    assert isinstance(notice, Deleted) and notice.id == queued.id and notice.job.state == "queued"
    assert notice.version == queued.version + 1 and notice.terminal
    with pytest.raises(JobConflict, match=r"is running; cancel it before deleting it"):
        service.delete(slow.id)
    with pytest.raises(JobConflict, match=r"is running; only failed, cancelled or interrupted jobs can be retried"):
        service.retry(slow.id)
    with pytest.raises(JobConflict, match=r"has no video yet: it is running\."):
        service.video_path(slow.id)
    service.cancel(slow.id)
    done = wait_for(service, slow.id, lambda j: j.terminal, timeout=60)
    assert done.state == "cancelled"
    with pytest.raises(JobNotFound, match=r"has no video: it was cancelled\."):
        service.video_path(slow.id)
    from localvideo.jobs.models import STATES, state_phrase

    assert [f"Job x {state_phrase(s)}." for s in STATES] == [
        "Job x is queued.", "Job x is running.", "Job x has succeeded.", "Job x has failed.", "Job x was cancelled.",
        "Job x was interrupted."]
