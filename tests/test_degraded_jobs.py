"""A job that ran out of memory and stepped down says so: in its result (``degraded``), over the real HTTP API, after
a restart of the store, and in the studio's result panel.

GPU memory is the one boundary faked (tests.fakes.SimulatedGPU raises the real torch.OutOfMemoryError when the
planner's estimate for a phase exceeds a budget); it is handed to the real run (``localvideo.generation.render``,
which both generate and make_story call) as its ``guard``. The job service, its worker, the pipelines, encoding, the
store and the HTTP server are all real.
"""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest

from _live import wait_state
from fakes import SimulatedGPU, gpu_need
from localvideo.catalog import get_model
from localvideo.hardware import Hardware
from localvideo.jobs import JobService
from localvideo.jobs.models import Job, JobResult, utcnow
from localvideo.jobs.store import SQLiteJobStore
from localvideo.media.probe import probe
from localvideo.planner import plan as make_plan
from localvideo.planner import replan
from localvideo.request import GenerationRequest
from localvideo.settings import Settings
from localvideo.ui import views

CPU = Hardware.assumed(None, ram_gb=16)
SIZE = {"width": 128, "height": 128, "steps": 2}
RUNG = "strategy resident → group_offload after OOM while denoising"


@pytest.fixture()
def settings(lv_home, tmp_path) -> Settings:
    return Settings(home=lv_home, jobs_db_path=tmp_path / "jobs.db", outputs_dir=tmp_path / "outputs")


@pytest.fixture()
def small_gpu(monkeypatch):
    """A GPU on which denoising 9 frames at 128×128 with tiny-wan fits only group-offloaded: every run (a plain job,
    each scene of a story) is given it as its memory guard."""
    import localvideo.generation as generation

    spec = get_model("tiny-wan")
    p = make_plan(GenerationRequest(prompt="x", model="tiny-wan", num_frames=9, seed=1, **SIZE), spec, CPU)
    resident, group = gpu_need(spec, p, "denoise"), gpu_need(spec, replan(p, spec, strategy="group_offload"), "denoise")
    assert p.strategy == "resident" and group < resident
    guard = SimulatedGPU(spec, (group + resident) // 2, phases=("denoise",), at_step=1)
    real = generation.render

    def render(*args, guard_=guard, **kw):
        kw["guard"] = kw.get("guard") or guard_
        return real(*args, **kw)

    monkeypatch.setattr(generation, "render", render)
    return guard


@pytest.fixture()
def http(settings):
    """The REST API of an in-process job service, served by uvicorn on a loopback port (real HTTP)."""
    import uvicorn

    from localvideo.api.app import create_app

    svc = JobService(settings, hardware=CPU, workers=1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(settings, service=svc), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(30)
        svc.close()


def test_an_out_of_memory_step_down_is_in_the_job_result_the_api_and_the_studio(small_gpu, http, settings, tmp_path):
    r = http.post("/v1/jobs", json={"prompt": "a paper boat in a rainy gutter", "model": "tiny-wan", "num_frames": 9,
                                    "seed": 4, **SIZE})
    assert r.status_code == 202, r.text
    done = wait_state(http, r.json()["id"], lambda j: j["state"] not in ("queued", "running"), timeout=180)
    assert done["state"] == "succeeded", done
    assert done["result"]["degraded"] == [RUNG]
    assert done["result"]["strategy"] == "group_offload" and done["result"]["frames"] == 9
    assert any(entry[0] == "denoise" and not entry[-1] for entry in small_gpu.log), "the fake GPU never ran out"
    video = tmp_path / "v.mp4"
    video.write_bytes(http.get(f"/v1/jobs/{done['id']}/video").content)
    assert probe(video).frames == 9

    # a story: each scene's rungs, named by scene
    r = http.post("/v1/jobs/story", json={"script": "[9f] a fox wakes in its den\n[cut] [9f] the fox runs into snow",
                                          "model": "tiny-wan", "seed": 2, "continuity": False, **SIZE})
    assert r.status_code == 202, r.text
    story = wait_state(http, r.json()["id"], lambda j: j["state"] not in ("queued", "running"), timeout=240)
    assert story["state"] == "succeeded", story
    assert story["result"]["degraded"] == [f"scene 1: {RUNG}", f"scene 2: {RUNG}"]

    # the studio's result panel says it, above the video
    html = views.result_html(Job.model_validate(done))
    assert "Made with less:" in html and f"<li>{views.e(RUNG)}</li>" in html
    assert html.index("Made with less") < html.index("<video")
    assert "scene 2: " in views.result_html(Job.model_validate(story))

    # stored: a new store on the same database reads it back
    store = SQLiteJobStore(settings.jobs_db)
    try:
        assert store.get(done["id"]).result.degraded == [RUNG]
    finally:
        store.close()


def test_a_result_stored_without_degraded_reads_as_made_as_planned():
    old = ('{"bytes": 10, "frames": 9, "width": 64, "height": 64, "fps": 16, "duration_s": 0.56, "seed": 1, '
           '"model": "tiny-wan", "random_weights": true, "strategy": "resident", "has_thumbnail": true, '
           '"timings": {}, "notes": [], "warnings": []}')
    result = JobResult.model_validate_json(old)
    assert result.degraded == []
    job = Job(id="b" * 32, state="succeeded", request={"prompt": "x"}, result=result, created_at=utcnow())
    assert "Made with less" not in views.result_html(job)
