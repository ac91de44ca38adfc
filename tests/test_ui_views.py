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
    # claimed by a worker (state running), waiting for the pipeline another job holds (phase queued): the message the
    # local executor sends (localvideo.runtime.recovery.WAITING_FOR_MODEL)
    msg = "Waiting for the model: another job is using it."
    waiting = _job(state="running", progress=JobProgress(phase="queued", total=6, elapsed_s=0.4, message=msg))
    html = views.progress_html(waiting)
    assert "Waiting for the model: another job is using it" in html and "Waiting in the queue" not in html
    assert 'data-state="running"' in html and 'data-phase="queued"' in html  # the data attributes stay the facts
    row = views.history_html([waiting], 1)
    assert "Waiting for the model: another job is using it" in row and "Waiting in the queue" not in row
    scene = views.progress_html(_job(progress=JobProgress(phase="queued", scene=2, scenes=3)))  # stories: no message
    assert "Scene 2 of 3 · Waiting for the model: another job is using it<" in scene
    old = views.progress_html(_job(progress=JobProgress(phase="queued")))  # stored by a localvideo without messages
    assert "Waiting for the model: another job is using it" in old
    # a job that really is in the queue still says so
    queued = views.progress_html(_job(state="queued", progress=JobProgress(phase="queued")))
    assert "Waiting in the queue" in queued and "Waiting for the model" not in queued


def test_a_job_retried_after_its_ray_worker_died_says_so_not_that_it_waits_for_the_model():
    from localvideo.jobs.ray_executor import retry_message

    msg = retry_message("actor-0", "ActorDiedError: The actor died unexpectedly <before> finishing this task.",
                        attempt=2, attempts=3)
    assert msg == ("The worker running this job (actor-0) stopped (ActorDiedError: The actor died unexpectedly "
                   "<before> finishing this task.); retrying on another worker, attempt 2 of 3.")
    retrying = _job(state="running", progress=JobProgress(phase="queued", message=msg), cancel_requested=True)
    html = views.progress_html(retrying)
    shown = views.e(msg[:-1])
    assert f'<div class="lv-phase">{shown} · cancelling…</div>' in html
    assert "Waiting for the model" not in html and "Waiting in the queue" not in html and "<before>" not in html
    assert 'data-phase="queued"' in html and 'aria-label="waiting"' in html
    row = views.history_html([retrying], 1)
    assert "Waiting for the model" not in row and "The worker running this job (actor-0) stopped" in row
    assert f'title="{shown}"' in row and "…</div>" in row  # the row shows 80 characters, the tooltip all of it
    # a message on any phase wins over the phase words; none falls back to them
    assert views.phase_text(_job(progress=JobProgress(phase="loading", message="Loading LoRA 2 of 3."))) == \
        "Loading LoRA 2 of 3"
    assert views.phase_text(_job(progress=JobProgress(phase="loading"))) == "Loading the model"


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


def test_a_refused_submission_says_where_the_panels_previous_job_went():
    html = views.progress_html(None, error="Line 2: a '[' is never closed.", previous=_job(state="running"))
    assert 'data-state="refused"' in html and "Line 2: a &#x27;[&#x27; is never closed." in html
    assert "Your previous job (aaaaaaaa) is still running in <b>Queue &amp; History</b>" in html
    done = views.progress_html(None, error="x", previous=_job(state="succeeded"))
    assert "Your previous job (aaaaaaaa) is in" in done
    assert "previous job" not in views.progress_html(None, error="x")
