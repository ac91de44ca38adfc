"""The studio's pure parts without a browser: HTML views, frame/size helpers, session cookies, the lazy import."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timezone

from localvideo.api.auth import new_session, session_valid
from localvideo.catalog import get_model
from localvideo.jobs.models import Job, JobError, JobProgress
from localvideo.ui import views


def _job(**kw) -> Job:
    base = dict(id="a" * 32, state="running", request={"prompt": "<b>fox</b>", "model": "tiny-wan"},
                created_at=datetime.now(timezone.utc))
    return Job(**(base | kw))


def test_progress_html_is_a_real_progress_bar_and_escapes():
    job = _job(progress=JobProgress(phase="denoising", step=3, total=12, elapsed_s=1.5, eta_s=4.5))
    html = views.progress_html(job)
    assert '<progress class="lv-progress" value="3" max="12"' in html and "step 3 of 12" in html
    assert "about 4.5 s left" in html and 'data-state="running"' in html
    loading = views.progress_html(_job(progress=JobProgress(phase="loading")))
    assert "<progress" in loading and "value=" not in loading.split("<progress")[1].split(">")[0]  # indeterminate
    failed = views.progress_html(_job(state="failed", error=JobError(error="x", message="<oops>", hint="retry")))
    assert "&lt;oops&gt;" in failed and "<oops>" not in failed
    rows = views.history_html([_job()], 1)
    assert "&lt;b&gt;fox&lt;/b&gt;" in rows and "<b>fox</b>" not in rows


def test_a_running_job_waiting_for_a_busy_pipeline_does_not_say_it_is_in_the_queue():
    # claimed by a worker (state running), waiting for the pipeline another job holds (phase queued)
    waiting = _job(state="running", progress=JobProgress(phase="queued", total=6, elapsed_s=0.4))
    html = views.progress_html(waiting)
    assert "Waiting for the model (another job is using it)" in html and "Waiting in the queue" not in html
    assert 'data-state="running"' in html and 'data-phase="queued"' in html  # the data attributes stay the facts
    row = views.history_html([waiting], 1)
    assert "Waiting for the model (another job is using it)" in row and "Waiting in the queue" not in row
    scene = views.progress_html(_job(progress=JobProgress(phase="queued", scene=2, scenes=3)))
    assert "Scene 2 of 3 · Waiting for the model (another job is using it)" in scene
    # a job that really is in the queue still says so
    queued = views.progress_html(_job(state="queued", progress=JobProgress(phase="queued")))
    assert "Waiting in the queue" in queued and "Waiting for the model" not in queued


def test_frames_and_sizes_follow_the_model_rules():
    wan, ltx = get_model("tiny-wan"), get_model("tiny-ltx")
    assert views.frames_for(wan, 2.0, 16) == 33 and views.frames_for(ltx, 1.0, 24) == 25
    assert views.frames_for(wan, 100, 16) <= wan.max_frames
    for spec in (wan, ltx, get_model("wan2.1-t2v-1.3b"), get_model("ltx-video-2b")):
        for _, value in views.size_presets(spec):
            w, h = map(int, value.split("x"))
            assert w % spec.size_multiple == 0 and h % spec.size_multiple == 0 and w * h <= spec.max_pixels
    assert views.size_presets(get_model("cogvideox-5b-i2v")) == [("720×480 (native)", "720x480")]


def test_session_cookies_are_signed_by_the_token_and_expire():
    s = new_session("tok", ttl_s=60, now=1000)
    assert session_valid(s, "tok", now=1030)
    assert not session_valid(s, "tok", now=1061)  # expired
    assert not session_valid(s, "other", now=1030)  # a new token voids it
    v, exp, sig = s.split(".")
    assert not session_valid(f"{v}.{int(exp) + 9999}.{sig}", "tok", now=1030)  # tampered expiry
    assert not session_valid(None, "tok") and not session_valid("garbage", "tok")


def test_importing_the_ui_package_does_not_import_gradio():
    code = "import sys, localvideo.ui, localvideo.ui.views; assert 'gradio' not in sys.modules, 'gradio imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
