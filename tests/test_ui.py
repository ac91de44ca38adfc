"""The web studio in a real browser: headless Debian chromium (Python playwright, no browser download) driving a live
`localvideo serve` (UI at /, API at /v1, one process) that runs real tiny pipelines.

Screenshots of every tab go to artifacts/ui/*.png. Tests in this file run in order on one page (module scope).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import httpx
import pytest

from _live import LiveServer

CHROMIUM = os.environ.get("LOCALVIDEO_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
SHOTS = Path(__file__).resolve().parents[1] / "artifacts" / "ui"

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed "
                                                              "(pip install -e '.[test]')")
if not shutil.which(CHROMIUM) and not Path(CHROMIUM).is_file():
    pytest.skip(f"no chromium at {CHROMIUM} (apt-get install -y chromium; .ci/run installs it)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = LiveServer(tmp_path_factory.mktemp("ui-home")).start(timeout=120)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def page(browser, server):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = ctx.new_page()
    pg.set_default_timeout(30_000)
    pg.goto(server.url + "/")
    pg.wait_for_selector("#create-plan .lv-plan")
    yield pg
    ctx.close()


@pytest.fixture()
def api(server):
    with httpx.Client(base_url=server.url, timeout=30, headers=server.headers) as c:
        yield c


# -- helpers --------------------------------------------------------------------------------------------------------
def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def tab(page, tab_id: str) -> None:
    page.click(f"#tab-{tab_id}-button")
    page.wait_for_selector(f"#tab-{tab_id}", state="visible")


def pick(page, elem_id: str, text: str) -> None:
    """Choose the option of a gradio dropdown whose label starts with ``text``."""
    page.click(f"#{elem_id} input")
    page.locator("li[role=option]", has_text=re.compile("^(✓\\s*)?" + re.escape(text))).first.click()


def set_number(page, selector: str, value) -> None:
    page.fill(selector, str(value))
    page.keyboard.press("Enter")


def panel(page, prefix: str) -> dict:
    return page.eval_on_selector(f"#{prefix}-progress .lv-panel", "e => ({state: e.dataset.state, "
                                 "step: +(e.dataset.step || 0), job: e.dataset.job, text: e.innerText, "
                                 "value: e.querySelector('progress') && e.querySelector('progress').getAttribute('value')})")


def watch(page, prefix: str, until, timeout: float = 90.0) -> list[dict]:
    """Samples of a progress panel until ``until(sample)``; fails after ``timeout`` seconds."""
    samples, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = panel(page, prefix)
        samples.append(s)
        if until(s):
            return samples
        time.sleep(0.1)
    raise AssertionError(f"{prefix}: condition not reached in {timeout} s; last {samples[-3:]}")


def video_ready(page, selector: str) -> dict:
    page.wait_for_selector(selector)
    page.wait_for_function(f"() => {{ const v = document.querySelector({selector!r}); "
                           "return v && v.readyState >= 1 && v.duration > 0; }")
    return page.eval_on_selector(selector, "v => ({src: v.currentSrc, duration: v.duration, error: v.error, "
                                           "ready: v.readyState})")


def history_row(page, job_id: str, state: str | None = None, timeout: float = 20_000):
    sel = f'#history-table tr[data-job="{job_id}"]' + (f'[data-state="{state}"]' if state else "")
    page.wait_for_selector(sel, timeout=timeout)
    return sel


# -- the studio -----------------------------------------------------------------------------------------------------
JOBS: dict[str, str] = {}


def test_create_shows_progress_advancing_then_plays_the_video(page, api):
    shot(page, "create")
    pick(page, "create-model", "tiny-ltx")  # a tiny model other than the default, then back: the picker works
    page.wait_for_function("() => document.querySelector('#create-plan').innerText.includes('24 fps')")
    pick(page, "create-model", "tiny-wan")
    page.wait_for_function("() => document.querySelector('#create-plan').innerText.includes('16 fps')")
    assert "RANDOM WEIGHTS" in page.inner_text("#create-model-info").upper()
    page.fill("#create-prompt textarea", "a lighthouse in a storm at night")
    # tiny-wan denoises 100 steps at 128x128 in ~0.8 s: two panel polls (0.4 s) at best, so the bar was sometimes
    # seen at one step only; at 256x256 (4x the tokens) they last seconds on any machine this runs on
    pick(page, "create-preset", "256×256")
    set_number(page, "#create-steps input[type=number]", 100)
    page.wait_for_function("() => document.querySelector('#create-plan').innerText.includes('100 steps') && "
                           "document.querySelector('#create-plan').innerText.includes('256×256')")
    page.click("#create-generate")
    samples = watch(page, "create", lambda s: s["state"] in ("succeeded", "failed", "cancelled"))
    assert samples[-1]["state"] == "succeeded", samples[-1]
    steps = [s["step"] for s in samples if s["state"] == "running" and "Denoising" in s["text"]]
    assert len(set(steps)) >= 2 and steps == sorted(steps), f"progress bar did not advance: {steps}"
    assert any("left" in s["text"] for s in samples if "Denoising" in s["text"]), "no ETA shown"
    job_id = samples[-1]["job"]
    JOBS["first"] = job_id

    v = video_ready(page, "#create-result video")
    assert v["src"].endswith(f"/v1/jobs/{job_id}/video") and v["error"] is None
    assert abs(v["duration"] - 17 / 16) < 0.1, v
    part = page.request.get(v["src"], headers={"Range": "bytes=0-99"})  # the browser's cookies, a seekable source
    assert part.status == 206 and len(part.body()) == 100
    href = page.get_attribute("#create-result a.lv-download", "href")
    assert href == f"/v1/jobs/{job_id}/video"
    job = api.get(f"/v1/jobs/{job_id}").json()  # the UI's job is the API's job
    assert job["state"] == "succeeded" and job["request"]["steps"] == 100 and job["request"]["model"] == "tiny-wan"
    shot(page, "create-done")


def test_history_lists_the_job_and_refills_create(page, api):
    job_id = JOBS["first"]
    job = api.get(f"/v1/jobs/{job_id}").json()
    page.fill("#create-prompt textarea", "something else entirely")
    set_number(page, "#create-steps input[type=number]", 7)
    tab(page, "history")
    row = history_row(page, job_id, "succeeded")
    assert "a lighthouse in a storm" in page.inner_text(row) and "tiny-wan" in page.inner_text(row)
    page.wait_for_function(f"() => {{ const i = document.querySelector('{row} img.lv-thumb'); "
                           "return i && i.complete && i.naturalWidth > 0; }")
    page.click(row)
    page.wait_for_selector(f'#history-title [data-job="{job_id}"]')
    video_ready(page, "#history-result video")
    page.click("#history-metadata button, #history-metadata .label-wrap")
    page.wait_for_function("() => document.querySelector('#history-metadata').innerText.includes('timings')")
    shot(page, "history")

    page.click("#history-reuse")
    page.wait_for_selector("#tab-create", state="visible")
    page.wait_for_function("() => document.querySelector('#create-prompt textarea').value.includes('lighthouse')")
    assert page.input_value("#create-prompt textarea") == "a lighthouse in a storm at night"
    assert page.input_value("#create-steps input[type=number]") == "100"
    assert page.is_checked("#create-seed-mode input[value=fixed]")
    assert page.input_value("#create-seed input") == str(job["request"]["seed"])


def test_cancel_a_second_job_mid_run(page, api):
    tab(page, "create")
    page.fill("#create-prompt textarea", "a very long job to cancel")
    pick(page, "create-preset", "256×256")  # long enough to be cancelled mid-run anywhere
    set_number(page, "#create-steps input[type=number]", 100)
    page.check("#create-seed-mode input[value=random]")
    page.wait_for_function("() => document.querySelector('#create-plan').innerText.includes('100 steps')")
    page.click("#create-generate")
    running = watch(page, "create", lambda s: s["state"] == "running" and s["step"] >= 2)[-1]
    assert running["job"] != JOBS["first"]
    page.click("#create-cancel")
    done = watch(page, "create", lambda s: s["state"] in ("cancelled", "succeeded", "failed"), timeout=30)[-1]
    assert done["state"] == "cancelled", done
    job = api.get(f"/v1/jobs/{done['job']}").json()
    assert job["state"] == "cancelled" and job["links"]["video"] is None
    assert page.query_selector("#create-result video") is None
    JOBS["cancelled"] = done["job"]
    tab(page, "history")
    history_row(page, done["job"], "cancelled")


def test_retry_and_cancel_from_history(page, api):
    job_id = JOBS["cancelled"]
    row = history_row(page, job_id, "cancelled")
    page.click(row)
    page.wait_for_selector(f'#history-title [data-job="{job_id}"]')
    page.wait_for_selector("#history-retry:enabled")
    page.click("#history-retry")
    page.wait_for_function(f"""() => {{ const p = document.querySelector('#history-progress .lv-panel');
        return p && p.dataset.job === '{job_id}' && p.dataset.state === 'running' && +p.dataset.step >= 1; }}""",
                           timeout=60_000)
    assert api.get(f"/v1/jobs/{job_id}").json()["attempts"] == 2
    page.click("#history-cancel")
    history_row(page, job_id, "cancelled", timeout=30_000)
    assert api.get(f"/v1/jobs/{job_id}").json()["state"] == "cancelled"


def test_a_job_from_the_rest_api_appears_in_history_and_can_be_deleted(page, api):
    r = api.post("/v1/jobs", json={"prompt": "submitted through the REST API", "model": "tiny-wan", "steps": 2,
                                   "num_frames": 9})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    row = history_row(page, job_id, "succeeded", timeout=60_000)
    assert "submitted through the REST API" in page.inner_text(row)
    page.click(row)
    page.wait_for_selector(f'#history-title [data-job="{job_id}"]')
    page.wait_for_selector("#history-delete:enabled")
    page.click("#history-delete")
    page.wait_for_selector(f'#history-table tr[data-job="{job_id}"]', state="detached")
    assert api.get(f"/v1/jobs/{job_id}").status_code == 404


def test_image_to_video_tab(page, tmp_path):
    from PIL import Image

    img = Image.new("RGB", (200, 120))
    img.putdata([(x, y * 2, 128) for y in range(120) for x in range(200)])
    photo = tmp_path / "photo.png"
    img.save(photo)
    tab(page, "i2v")
    page.set_input_files("#i2v-image input[type=file]", str(photo))
    page.wait_for_selector("#i2v-image img")
    pick(page, "i2v-model", "tiny-wan")
    page.fill("#i2v-prompt textarea", "the camera pushes in")
    set_number(page, "#i2v-steps input[type=number]", 3)
    page.click("#i2v-generate")
    last = watch(page, "i2v", lambda s: s["state"] in ("succeeded", "failed", "cancelled"))[-1]
    assert last["state"] == "succeeded", last
    v = video_ready(page, "#i2v-result video")
    assert v["src"].endswith(f"/v1/jobs/{last['job']}/video")
    assert "Photo animation" in page.inner_text("#i2v-animate-note")
    shot(page, "image-to-video")
    JOBS["photo"] = str(photo)


def test_image_to_video_last_frame_box_follows_the_model(page, api):
    tab(page, "i2v")  # the first frame from the test above is still there
    pick(page, "i2v-model", "tiny-wan-flf2v")  # a first-and-last-frame model: the box is shown and says it is needed
    page.wait_for_selector("#i2v-last-image", state="visible")
    assert "Last frame (required by this model)" in page.inner_text("#i2v-last-image")
    page.click("#i2v-generate")  # without a last frame: the planner's sentence, and nothing queued
    refused = watch(page, "i2v", lambda s: s["state"] == "refused", timeout=20)[-1]
    assert "pass the last frame too" in refused["text"] and "Last frame box" in refused["text"], refused
    shot(page, "image-to-video-last-frame")
    pick(page, "i2v-model", "tiny-wan")  # no last-frame support: no box
    page.wait_for_selector("#i2v-last-image", state="hidden")

    # "use these settings" on a first-and-last-frame job brings the box back, with the job's last frame in it
    photo = Path(JOBS["photo"]).read_bytes()
    params = {"prompt": "two frames", "model": "tiny-wan-flf2v", "steps": 1, "num_frames": 5, "width": 64,
              "height": 48}
    r = api.post("/v1/jobs/image-to-video", data={"params": json.dumps(params)},
                 files={"image": ("a.png", photo, "image/png"), "last_image": ("b.png", photo, "image/png")})
    assert r.status_code == 202, r.text
    tab(page, "history")
    page.click(history_row(page, r.json()["id"]))
    page.wait_for_selector(f'#history-title [data-job="{r.json()["id"]}"]')
    page.click("#history-reuse")
    page.wait_for_selector("#tab-i2v", state="visible")
    page.wait_for_selector("#i2v-last-image img")
    assert "Last frame (required by this model)" in page.inner_text("#i2v-last-image")


def test_photo_animation_tab(page, api):
    tab(page, "animate")
    page.set_input_files("#animate-image input[type=file]", JOBS["photo"])
    page.wait_for_selector("#animate-image img")
    pick(page, "animate-move", "zoom-in")
    set_number(page, "#animate-duration input[type=number]", 2)
    set_number(page, "#animate-fps input[type=number]", 12)
    set_number(page, "#animate-width input", 160)
    set_number(page, "#animate-height input", 96)
    page.click("#animate-generate")
    samples = watch(page, "animate", lambda s: s["state"] in ("succeeded", "failed", "cancelled"))
    assert samples[-1]["state"] == "succeeded", samples[-1]
    v = video_ready(page, "#animate-result video")
    assert abs(v["duration"] - 2.0) < 0.2, v
    job = api.get(f"/v1/jobs/{samples[-1]['job']}").json()
    assert job["kind"] == "photo-animation" and job["request"]["move"] == "zoom-in"
    assert (job["result"]["width"], job["result"]["height"], job["result"]["frames"]) == (160, 96, 24)
    shot(page, "photo-animation")


def test_story_tab_shows_progress_per_scene(page, api):
    tab(page, "story")
    page.fill("#story-script textarea", "[0.5s] wide shot: a fox wakes in its den\n[cut] [0.5s] it runs into the snow")
    pick(page, "story-model", "tiny-wan")
    set_number(page, "#story-steps input[type=number]", 10)
    page.click("#story-generate")
    samples = watch(page, "story", lambda s: s["state"] in ("succeeded", "failed", "cancelled"))
    assert samples[-1]["state"] == "succeeded", samples[-1]
    scenes = {m.group(0) for s in samples if (m := re.search(r"Scene \d of 2", s["text"]))}
    assert "Scene 2 of 2" in scenes, scenes
    video_ready(page, "#story-result video")
    job = api.get(f"/v1/jobs/{samples[-1]['job']}").json()
    assert job["kind"] == "story" and len(job["result"]["scenes"]) == 2
    shot(page, "story")
    JOBS["story"] = samples[-1]["job"]


def test_story_refusal_drops_the_last_video_and_a_custom_size_is_made_and_restored(page, api):
    tab(page, "story")
    video_ready(page, "#story-result video")  # the story above, still shown
    page.fill("#story-script textarea", "a fox\n[4 fox")
    page.click("#story-generate")
    refused = watch(page, "story", lambda s: s["state"] == "refused", timeout=20)[-1]
    assert "Line 2: a '[' is never closed" in refused["text"], refused
    assert f"Your previous job ({JOBS['story'][:8]}) is in Queue & History" in refused["text"], refused
    assert page.query_selector("#story-result video") is None, "the previous story's video stayed under the refusal"

    assert not page.is_visible("#story-width")
    pick(page, "story-preset", "Custom…")
    page.wait_for_selector("#story-width", state="visible")
    set_number(page, "#story-width input", 96)
    set_number(page, "#story-height input", 64)
    page.fill("#story-script textarea", "[0.5s] a fox wakes in its den\n[cut] [0.5s] it runs into the snow")
    set_number(page, "#story-steps input[type=number]", 2)
    page.click("#story-generate")
    done = watch(page, "story", lambda s: s["state"] in ("succeeded", "failed", "cancelled"))[-1]
    assert done["state"] == "succeeded", done
    job = api.get(f"/v1/jobs/{done['job']}").json()
    assert (job["request"]["width"], job["request"]["height"]) == (96, 64)
    assert (job["result"]["width"], job["result"]["height"]) == (96, 64)
    assert video_ready(page, "#story-result video")["src"].endswith(f"/v1/jobs/{done['job']}/video")

    pick(page, "story-preset", "128×128 (native)")  # the form moves on; "use these settings" brings 96×64 back
    page.wait_for_selector("#story-width", state="hidden")
    tab(page, "history")
    page.click(history_row(page, done["job"], "succeeded"))
    page.wait_for_selector(f'#history-title [data-job="{done["job"]}"]')
    page.click("#history-reuse")
    page.wait_for_selector("#tab-story", state="visible")
    page.wait_for_selector("#story-width", state="visible")
    assert page.input_value("#story-preset input") == "Custom…"
    assert (page.input_value("#story-width input"), page.input_value("#story-height input")) == ("96", "64")
    shot(page, "story-custom-size")


def test_magcache_is_refused_until_measured_in_the_studio(page, api):
    tab(page, "create")
    page.click("#create-advanced button, #create-advanced .label-wrap")
    page.wait_for_selector("#create-cache", state="visible")
    pick(page, "create-model", "tiny-wan")
    set_number(page, "#create-steps input[type=number]", 3)
    pick(page, "create-cache", "MagCache (mag)")
    page.wait_for_function("() => document.querySelector('#create-plan').innerText"
                           ".includes('MagCache needs magnitude ratios measured for tiny-wan')")
    plan = page.inner_text("#create-plan")
    assert "Will not run" in plan and "MagCache: measure ratios (mag:calibrate)" in plan and "--cache" not in plan
    page.click("#create-generate")  # the same sentence when submitted anyway, and nothing queued
    refused = watch(page, "create", lambda s: s["state"] == "refused", timeout=20)[-1]
    assert "MagCache needs magnitude ratios measured for tiny-wan" in refused["text"], refused
    assert page.query_selector("#create-result video") is None

    pick(page, "create-cache", "MagCache: measure ratios")
    page.wait_for_function("() => document.querySelector('#create-plan').innerText"
                           ".includes('step cache: mag:calibrate')")
    page.fill("#create-prompt textarea", "a kite over a windy beach")
    page.click("#create-generate")
    done = watch(page, "create", lambda s: s["state"] in ("succeeded", "failed", "cancelled"))[-1]
    assert done["state"] == "succeeded", done
    assert api.get(f"/v1/jobs/{done['job']}").json()["request"]["step_cache"] == "mag:calibrate"
    pick(page, "create-cache", "MagCache (mag)")  # measured now: MagCache plans
    page.wait_for_function("() => /step cache: mag:\\d/.test(document.querySelector('#create-plan').innerText)")
    assert page.get_attribute("#create-plan .lv-plan", "data-fits") == "true"
    shot(page, "create-magcache")


def test_models_tab_pulls_and_reports_failures(page):
    tab(page, "models")
    page.wait_for_selector('#models-table tr[data-model="tiny-cogvideox"]')
    pick(page, "models-pick", "tiny-cogvideox")
    page.click("#models-pull")
    page.wait_for_selector('#models-pull-status [data-state="succeeded"]', timeout=60_000)
    page.wait_for_function("() => document.querySelector('#models-table tr[data-model=\"tiny-cogvideox\"]')"
                           ".innerText.includes('KB')")  # its size on disk, now that it is built
    pick(page, "models-pick", "wan2.1-t2v-1.3b")
    page.click("#models-pull")
    page.wait_for_selector('#models-pull-status [data-state="failed"]', timeout=60_000)  # offline: says why
    assert "pull failed" in page.inner_text("#models-pull-status").lower()
    text = page.inner_text('#models-table tr[data-model="wan2.1-t2v-14b"]').lower()
    assert "not installed" in text and "does not fit this machine" in text
    shot(page, "models")


def test_system_tab(page):
    tab(page, "system")
    page.click("#tab-system button")  # refresh
    page.wait_for_function("() => document.querySelector('#system-info').innerText.includes('What fits')")
    text = page.inner_text("#system-info")
    assert "RAM" in text and "tiny-wan" in text and "no token" in text
    shot(page, "system")


# -- token mode -----------------------------------------------------------------------------------------------------
def test_token_mode_requires_login_and_the_cookie_opens_only_media(browser, tmp_path):
    token = "ui-test-token-" + "x" * 20
    srv = LiveServer(tmp_path / "home", token=token).start(timeout=120)
    try:
        assert httpx.get(srv.url + "/", follow_redirects=False).status_code in (303, 401)
        assert httpx.get(srv.url + "/config").status_code == 401  # nothing of the UI without a login
        ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
        pg = ctx.new_page()
        pg.set_default_timeout(30_000)
        pg.goto(srv.url + "/")
        assert pg.url.endswith("/login")
        shot(pg, "login")
        pg.fill("#token", "wrong-token")
        pg.click("button[type=submit]")
        pg.wait_for_selector("#login-error")
        assert "not right" in pg.inner_text("#login-error") and pg.url.endswith("/login")
        pg.fill("#token", token)
        pg.click("button[type=submit]")
        pg.wait_for_selector("#create-plan .lv-plan")
        pg.fill("#create-prompt textarea", "behind a token")
        set_number(pg, "#create-steps input[type=number]", 2)
        pg.click("#create-generate")
        last = watch(pg, "create", lambda s: s["state"] in ("succeeded", "failed", "cancelled"))[-1]
        assert last["state"] == "succeeded", last
        video_ready(pg, "#create-result video")  # the session cookie admits the <video> element
        job_id = last["job"]
        # The cookie opens a job's media, and nothing else of the API; without it the media is closed too.
        assert pg.request.get(f"{srv.url}/v1/jobs/{job_id}/thumbnail").status == 200
        assert pg.request.get(f"{srv.url}/v1/jobs/{job_id}").status == 401
        assert pg.request.get(f"{srv.url}/v1/jobs").status == 401
        assert httpx.get(f"{srv.url}/v1/jobs/{job_id}/video").status_code == 401
        assert httpx.get(f"{srv.url}/v1/jobs/{job_id}/video", cookies={"localvideo_session": "v1.9999999999.00"}
                         ).status_code == 401
        assert httpx.get(f"{srv.url}/v1/jobs/{job_id}", headers=srv.headers).json()["state"] == "succeeded"
        pg.goto(srv.url + "/logout")
        assert pg.url.endswith("/login")
        assert pg.request.get(f"{srv.url}/v1/jobs/{job_id}/video").status == 401
        ctx.close()
    finally:
        srv.stop()
