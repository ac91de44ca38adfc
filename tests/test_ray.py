"""The ray executor on a real local Ray instance (started here: 2 CPUs, 2 CPU actors) with tiny real pipelines.

What it shows: jobs spread over both actors, model affinity (a job goes to the actor that has its model loaded, seen
in the actors' own cache stats), cancellation reaching the actor, an actor killed mid-job (``ray.kill``) → the job is
retried on another actor and succeeds, retries running out → failed with the reason, files streamed back to the head,
and the same frames as the local executor for the same seed.
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the ray executor tests need `pip install -e '.[test,cluster]'`")

from _helpers import wait_for  # noqa: E402
from localvideo.hardware import Hardware  # noqa: E402
from localvideo.jobs import JobService  # noqa: E402
from localvideo.jobs.ray_executor import RayExecutor  # noqa: E402
from localvideo.media.probe import read_frames  # noqa: E402
from localvideo.settings import Settings  # noqa: E402

CPU = Hardware.assumed(None, ram_gb=16)
FAST = {"steps": 2, "width": 128, "height": 128, "num_frames": 9}
SLOW = {"model": "tiny-wan", "steps": 30, "width": 128, "height": 128, "num_frames": 33}


@pytest.fixture(scope="module")
def cluster(lv_home, tmp_path_factory):
    """A local Ray instance (started by the test, in this thread) and a job service on the ray executor."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    tmp = tmp_path_factory.mktemp("ray")
    settings = Settings(home=lv_home, jobs_db_path=tmp / "jobs.db", outputs_dir=tmp / "outputs")
    ex = RayExecutor(actors=2, max_retries=1, actor_settings={"home": str(lv_home)}, hardware=CPU, poll_s=0.05)
    svc = JobService(settings, hardware=CPU, executor=ex).start()
    deadline = time.monotonic() + 120
    while len(svc.system()["workers"]) < 2:  # the executor starts in the background
        assert time.monotonic() < deadline and svc.executor_error is None, svc.executor_error
        time.sleep(0.1)
    yield svc, ex
    svc.close()
    ray.shutdown()


def done(svc, job_id, timeout=120.0):
    return wait_for(svc, job_id, lambda j: j.terminal, timeout)


def denoising(svc, job_id, timeout=120.0):
    return wait_for(svc, job_id, lambda j: j.state == "running" and j.progress is not None
                    and j.progress.phase == "denoising" and j.progress.step >= 1, timeout)


def routed(ex, job_id):
    return [h for h in ex.history if h["job_id"] == job_id]


def stats(ex):
    return {s["label"]: s for s in ex.actor_stats()}


def test_settings_choose_the_executor(lv_home, tmp_path):
    s = Settings(home=lv_home, jobs_db_path=tmp_path / "a.db", executor="ray", ray_address="auto", ray_actors=3,
                 ray_max_retries=4, shared_dir=tmp_path / "shared")
    svc = JobService(s, hardware=CPU)  # not started: nothing connects yet
    ex = svc.executor
    assert isinstance(ex, RayExecutor) and (ex.address, ex.n_actors, ex.max_retries) == ("auto", 3, 4)
    assert ex.shared_dir == tmp_path / "shared"
    svc.store.close()
    local = JobService(Settings(home=lv_home, jobs_db_path=tmp_path / "b.db"), hardware=CPU)
    assert local.executor.name == "local"
    local.store.close()


def test_jobs_spread_over_actors_and_follow_their_model(cluster):
    svc, ex = cluster
    a = svc.submit(prompt="a red fox in snow", model="tiny-wan", seed=1, **FAST)
    b = svc.submit(prompt="a lighthouse at dusk", model="tiny-ltx", seed=2, **FAST)
    assert done(svc, a.id).state == "succeeded" and done(svc, b.id).state == "succeeded"
    ra, rb = routed(ex, a.id)[-1], routed(ex, b.id)[-1]
    assert ra["actor"] != rb["actor"]  # both actors worked, one job each
    before = stats(ex)
    assert "tiny-wan" in before[ra["actor"]]["models"] and "tiny-ltx" in before[rb["actor"]]["models"]
    # affinity: each model's next job goes to the actor that already has it loaded (both actors are idle now)
    for model, home in (("tiny-ltx", rb["actor"]), ("tiny-wan", ra["actor"])):
        job = svc.submit(prompt="a quiet harbour", model=model, seed=3, **FAST)
        assert done(svc, job.id).state == "succeeded"
        r = routed(ex, job.id)[-1]
        assert r["actor"] == home and r["affinity"] is True
    after = stats(ex)
    for label in (ra["actor"], rb["actor"]):
        assert after[label]["hits"] == before[label]["hits"] + 1  # warm: a cache hit, no second load
        assert after[label]["loads"] == before[label]["loads"]
    assert svc.get(a.id).progress.phase == "done"  # progress flowed back from the actor


def test_same_frames_as_the_local_executor(cluster, lv_home, tmp_path):
    svc, _ = cluster
    req = {"prompt": "a paper boat on a pond", "model": "tiny-wan", "seed": 1234, **FAST}
    on_ray = svc.submit(**req)
    local = JobService(Settings(home=lv_home, jobs_db_path=tmp_path / "jobs.db", outputs_dir=tmp_path / "out"),
                       hardware=CPU, workers=1).start()
    try:
        assert local.executor.name == "local"
        here = local.submit(**req)
        assert done(local, here.id).state == "succeeded"
        assert done(svc, on_ray.id).state == "succeeded"
        f_local = read_frames(local.video_path(here.id))
        f_ray = read_frames(svc.video_path(on_ray.id))
    finally:
        local.close()
    assert f_local.shape == f_ray.shape and f_local.shape[0] == 9
    assert np.array_equal(f_local, f_ray)
    assert svc.thumbnail_path(on_ray.id).is_file()


def test_cancel_reaches_the_actor(cluster):
    svc, ex = cluster
    job = svc.submit(prompt="a slow sunrise", seed=5, **SLOW)
    denoising(svc, job.id)
    assert ex.handle_running(job.id) is not None
    svc.cancel(job.id)
    end = done(svc, job.id)
    assert end.state == "cancelled" and end.error.error == "cancelled"
    assert not svc.job_dir(job.id).exists()
    assert routed(ex, job.id)[-1]["outcome"] == "cancelled"


def test_killed_actor_mid_job_is_retried_elsewhere(cluster):
    svc, ex = cluster
    job = svc.submit(prompt="a train crossing a bridge", seed=7, **SLOW)
    denoising(svc, job.id)
    victim = ex.handle_running(job.id)
    first = routed(ex, job.id)  # nothing recorded until an attempt ends
    seen = []
    with svc.subscribe(job.id) as sub:  # every change of the job, in order (the retry wait may be brief)
        ray.kill(victim)
        while not (seen and seen[-1].terminal):
            seen.append(sub.get(timeout=180))
    end = done(svc, job.id, timeout=180)
    assert end.state == "succeeded", end.error
    # while it waited for another actor: running, phase queued, and a message that says so (not a model wait)
    waits = [j.progress.message for j in seen if j.state == "running" and j.progress and j.progress.phase == "queued"]
    assert len(waits) == 1, [j.progress for j in seen]
    dead = routed(ex, job.id)[0]["actor"]
    assert waits[0].startswith(f"The worker running this job ({dead}) stopped (") and "Actor" in waits[0], waits[0]
    assert waits[0].endswith("); retrying on another worker, attempt 2 of 2."), waits[0]
    after = seen[next(i for i, j in enumerate(seen) if j.progress and j.progress.message) + 1:]
    assert after and all(j.progress is None or j.progress.message is None for j in after)  # the next actor's progress
    attempts = routed(ex, job.id)
    assert not first and [h["outcome"] for h in attempts] == ["died", "succeeded"]
    assert attempts[0]["actor"] != attempts[1]["actor"]
    assert any("lost actor" in w for w in end.result.warnings)
    assert svc.video_path(job.id).stat().st_size == end.result.bytes
    # the dead actor's slot gets a fresh actor
    wait_actors_idle(ex)
    assert len({a["pid"] for a in ex.actors()}) == 2


def test_retries_run_out_and_the_job_fails_with_the_reason(cluster):
    svc, ex = cluster
    wait_actors_idle(ex)
    job = svc.submit(prompt="an unlucky kite", seed=9, **SLOW)
    for how in ("ray.kill", "SIGKILL"):  # max_retries=1: the first death is retried, the second is final
        denoising(svc, job.id, timeout=180)
        if how == "ray.kill":
            ray.kill(ex.handle_running(job.id))
        else:  # the process dies under Ray's feet, as in an out-of-memory kill
            pid = next(a["pid"] for a in ex.actors() if a["job_id"] == job.id and a["state"] == "busy")
            os.kill(pid, signal.SIGKILL)
        wait_for(svc, job.id, lambda j: j.terminal or j.progress.phase != "denoising")
    end = done(svc, job.id)
    assert end.state == "failed" and end.error.error == "worker_lost"
    assert "died 2 time(s)" in end.error.message and "gave up after 1 retry" in end.error.message
    assert not svc.job_dir(job.id).exists()
    assert [h["outcome"] for h in routed(ex, job.id)] == ["died", "died"]
    wait_actors_idle(ex)


def test_outputs_streamed_back_without_a_shared_folder(cluster, lv_home):
    svc, ex = cluster
    ex.stream_outputs = True  # actors write to their node's own outputs folder (lv_home/outputs), the head pulls
    try:
        job = svc.submit(prompt="a bowl of cherries", model="tiny-wan", seed=11, **FAST)
        end = done(svc, job.id)
    finally:
        ex.stream_outputs = False
    assert end.state == "succeeded", end.error
    assert svc.video_path(job.id).stat().st_size == end.result.bytes
    assert (svc.job_dir(job.id) / "video.json").is_file()  # the sidecar came along
    assert not (lv_home / "outputs" / job.id).exists()  # and left the node


def wait_actors_idle(ex, timeout=120.0):
    deadline = time.monotonic() + timeout
    while any(a["state"] != "idle" for a in ex.actors()):
        assert time.monotonic() < deadline, ex.actors()
        time.sleep(0.1)
