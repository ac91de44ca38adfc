"""Story jobs through the REST API against a live `localvideo serve` running real tiny pipelines."""

from __future__ import annotations

import json

from _live import sse_jobs, wait_state
from localvideo.media.probe import probe

SCRIPT = "[0.5s] wide shot: a lighthouse on a cliff\n[0.5s] close-up: its lamp turns\n[cut] [0.5s] waves below\n"


def test_story_job_streams_scene_progress_and_serves_one_mp4(api, server, tmp_path):
    r = api.post("/v1/jobs/story", json={"script": SCRIPT, "model": "tiny-wan", "width": 64, "height": 64,
                                         "steps": 2, "seed": 5, "crossfade_s": 0.25})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["kind"] == "story" and job["state"] == "queued" and job["request"]["seed"] == 5
    assert job["request"]["script"] == SCRIPT

    events = sse_jobs(api, job["id"], timeout=180)
    assert events[-1][2]["state"] == "succeeded", events[-1][2]
    progress = [e[2]["progress"] for e in events if e[2]["progress"]]
    scenes_seen = [p["scene"] for p in progress if p["phase"] == "denoising"]
    assert scenes_seen == sorted(scenes_seen) and set(scenes_seen) == {1, 2, 3}
    assert all(p["scenes"] == 3 for p in progress if p["scene"] is not None)
    assert "joining" in [p["phase"] for p in progress]

    done = api.get(f"/v1/jobs/{job['id']}").json()
    res = done["result"]
    # 0.5 s at 16 fps → 9 frames per scene; scene 2 continues (−1), scene 3 crossfades 4 frames: 27 − 1 − 4
    assert res["frames"] == 22 and res["seed"] == 5 and res["random_weights"]
    assert [(s["start_frame"], s["end_frame"], s["transition"]) for s in res["scenes"]] == [
        (0, 9, "start"), (9, 17, "continued"), (13, 22, "crossfade")]
    video = api.get(done["links"]["video"])
    out = tmp_path / "story.mp4"
    out.write_bytes(video.content)
    info = probe(out)
    assert info.frames == 22 and json.loads(info.tags["localvideo"])["kind"] == "story"
    folder = server.home / "outputs" / job["id"]
    assert sorted(p.name for p in folder.iterdir()) == ["thumbnail.jpg", "video.json", "video.mp4"]


def test_story_job_is_checked_at_submit(api):
    bad = api.post("/v1/jobs/story", json={"script": "a fox\n[4 fox", "model": "tiny-wan"})
    assert bad.status_code == 422 and bad.json()["line"] == 2 and "never closed" in bad.json()["message"]
    long = api.post("/v1/jobs/story", json={"script": "[9s] a fox", "model": "tiny-wan"})
    assert long.status_code == 422 and "at most 65 frames" in long.json()["message"]
    cont = api.post("/v1/jobs/story", json={"script": "a\nb", "model": "tiny-cogvideox", "continuity": True})
    assert cont.status_code == 422 and "cannot start a clip from an image" in cont.json()["message"]
    missing = api.post("/v1/jobs/story", json={"script": "a fox"})
    assert missing.status_code == 409 and missing.json()["error"] == "model_not_installed"
    extra = api.post("/v1/jobs/story", json={"script": "a fox", "model": "tiny-wan", "output": "/tmp/x.mp4"})
    assert extra.status_code == 422


def test_cancel_a_running_story_leaves_no_file(api, server):
    job = api.post("/v1/jobs/story", json={"script": "[2s] a slow pan\n[2s] another slow pan", "model": "tiny-wan",
                                           "width": 128, "height": 128, "steps": 40}).json()
    wait_state(api, job["id"], lambda j: j["progress"] and j["progress"]["phase"] == "denoising"
               and j["progress"]["step"] >= 1, timeout=120)
    assert api.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
    final = sse_jobs(api, job["id"], timeout=60)[-1][2]
    assert final["state"] == "cancelled" and final["progress"]["scene"] == 1
    folder = server.home / "outputs" / job["id"]
    assert not folder.exists() or not any(folder.iterdir())
    assert api.get(f"/v1/jobs/{job['id']}/video").status_code == 404


def _png(w: int = 80, h: int = 64) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 90, 30)).save(buf, format="PNG")
    return buf.getvalue()


def test_a_story_can_start_from_an_uploaded_image(api, server, tmp_path):
    params = {"script": "[5f] the sun sets\n[5f] the sky turns violet", "model": "tiny-wan", "width": 64,
              "height": 64, "steps": 2, "seed": 3}
    r = api.post("/v1/jobs/story-from-image", files={"image": ("sunset.png", _png(), "image/png")},
                 data={"params": json.dumps(params)})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["kind"] == "story" and job["request"]["image"] == "uploaded:image.png"  # no server path shown
    assert (server.home / "uploads" / job["id"] / "image.png").is_file()
    final = sse_jobs(api, job["id"], timeout=180)[-1][2]
    assert final["state"] == "succeeded", final
    res = final["result"]
    assert res["frames"] == 9 and [s["task"] for s in res["scenes"]] == ["i2v", "i2v"]
    out = tmp_path / "sunset.mp4"
    out.write_bytes(api.get(final["links"]["video"]).content)
    md = json.loads(probe(out).tags["localvideo"])
    assert md["scenes"][0]["conditioning"]["from"] == "image" and md["scenes"][1]["transition"] == "continued"


def test_story_image_uploads_are_checked_like_image_to_video(api, server):
    uploads = server.home / "uploads"
    before = set(uploads.iterdir()) if uploads.exists() else set()
    story = {"script": "a fox", "model": "tiny-wan"}
    # an image-to-video-only model: without an image the hint names the upload; with one the story is planned
    i2v_only = {"script": "[1s] a fox wakes\n[1s] it stretches", "model": "wan2.1-i2v-14b-480p"}
    no_image = api.post("/v1/jobs/story", json=i2v_only)
    assert no_image.status_code == 422 and "needs one" in no_image.json()["message"]
    assert "POST /v1/jobs/story-from-image" in no_image.json()["hint"]
    with_image = api.post("/v1/jobs/story-from-image", files={"image": ("a.png", _png(), "image/png")},
                          data={"params": json.dumps(i2v_only)})
    assert with_image.json()["error"] in ("model_not_installed", "does_not_fit"), with_image.text
    assert "needs one" not in with_image.json()["message"]
    not_image = api.post("/v1/jobs/story-from-image", files={"image": ("a.png", b"plain text", "image/png")},
                         data={"params": json.dumps(story)})
    assert not_image.status_code == 415
    huge = api.post("/v1/jobs/story-from-image", files={"image": ("a.png", b"\0" * 21_000_000, "image/png")},
                    data={"params": json.dumps(story)})
    assert huge.status_code == 413
    t2v_only = api.post("/v1/jobs/story-from-image", files={"image": ("a.png", _png(), "image/png")},
                        data={"params": json.dumps({"script": "a\nb", "model": "tiny-cogvideox"})})
    assert t2v_only.status_code == 422 and "cannot start from an image" in t2v_only.json()["message"]
    path = api.post("/v1/jobs/story", json={**story, "image": "/etc/passwd"})  # no server paths from clients
    assert path.status_code == 422
    as_json = api.post("/v1/jobs/story-from-image", json=story)
    assert as_json.status_code == 415
    assert (set(uploads.iterdir()) if uploads.exists() else set()) == before, "a refused story keeps no upload"
