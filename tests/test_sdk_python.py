"""The Python SDK (localvideo.client) against the live server: sync and async."""

from __future__ import annotations

import asyncio

import pytest

from _live import shared_server
from localvideo.client import ApiError, AsyncClient, Client, JobFailed
from localvideo.media.probe import probe

FAST = {"model": "tiny-wan", "steps": 2, "width": 128, "height": 128, "num_frames": 9}
SLOW = {"model": "tiny-wan", "steps": 40, "width": 128, "height": 128, "num_frames": 33}


@pytest.fixture(scope="module")
def url():
    return shared_server().url


def test_sync_submit_wait_download(url, tmp_path):
    with Client(url) as lv:
        assert lv.health()["status"] == "ok"
        job = lv.submit("a kite over a beach", seed=9, **FAST)
        assert job.state in ("queued", "running") and job.request["seed"] == 9  # a free worker may start it at once
        seen = []
        final = lv.wait(job.id, on_progress=seen.append, timeout=120)
        assert final.state == "succeeded" and final.result.frames == 9
        assert seen[-1].state == "succeeded" and [j.version for j in seen] == sorted({j.version for j in seen})
        assert any(j.progress and j.progress.phase == "denoising" for j in seen)
        video = lv.download(job.id, tmp_path / "kite.mp4")
        assert probe(video).frames == 9
        thumb = lv.download(job.id, tmp_path / "kite.jpg", thumbnail=True)
        assert thumb.read_bytes()[:3] == b"\xff\xd8\xff"
        page = lv.list(state="succeeded", limit=1)
        assert page.limit == 1 and len(page.jobs) == 1 and page.jobs[0].state == "succeeded" and page.total >= 1
        assert any(m["id"] == "tiny-wan" for m in lv.models()) and "hardware" in lv.system()
        photo = tmp_path / "photo.jpg"
        from PIL import Image

        Image.new("RGB", (96, 64), (30, 60, 200)).save(photo)
        moving = lv.submit_image(photo, "the photo comes alive", **FAST)
        assert moving.kind == "image-to-video"
        assert lv.wait(moving.id, timeout=120).state == "succeeded"
        with pytest.raises(ApiError) as e:
            lv.submit_image(b"not an image", "x", model="tiny-wan")
        assert e.value.status == 415
        lv.delete(job.id)
        with pytest.raises(ApiError) as e:
            lv.get(job.id)
        assert e.value.status == 404 and e.value.code == "not_found"


def test_sync_cancel_retry_and_errors(url):
    with Client(url) as lv:
        job = lv.submit("slow", **SLOW)
        for j in lv.events(job.id, timeout=60):
            if j.progress and j.progress.phase == "denoising" and j.progress.step >= 1:
                break
        assert lv.cancel(job.id).cancel_requested
        final = lv.wait(job.id, timeout=60)
        assert final.state == "cancelled"
        with pytest.raises(JobFailed) as failed:
            lv.wait(job.id, raise_on_failure=True, timeout=10)
        assert failed.value.job.state == "cancelled"
        assert lv.retry(job.id).state in ("queued", "running")
        lv.cancel(job.id)
        assert lv.wait(job.id, timeout=60).state == "cancelled"
        with pytest.raises(ApiError) as e:
            lv.submit("x", model="wan2.1-t2v-1.3b", width=256, height=256, num_frames=17)
        assert e.value.status == 409 and "localvideo models pull" in e.value.hint
        with pytest.raises(ApiError) as e:
            lv.submit("x", model="tiny-wan", steps=-1)
        assert e.value.status == 422 and e.value.code == "invalid_request"
    with Client("http://127.0.0.1:9", timeout=2) as dead:
        with pytest.raises(ApiError) as e:
            dead.health()
        assert e.value.status == 0 and e.value.code == "unreachable"


def test_async_client(url, tmp_path):
    async def main():
        async with AsyncClient(url) as lv:
            job = await lv.submit("an owl at dusk", **FAST)
            phases = []

            async def on_progress(j):
                if j.progress:
                    phases.append(j.progress.phase)

            final = await lv.wait(job.id, on_progress=on_progress, timeout=120)
            assert final.state == "succeeded" and "denoising" in phases
            path = await lv.download(job.id, tmp_path / "owl.mp4")
            assert probe(path).frames == 9
            page = await lv.list(state=["succeeded", "cancelled"], limit=5)
            assert all(j.state in ("succeeded", "cancelled") for j in page.jobs)
            slow = await lv.submit("slow owl", **SLOW)
            queued = await lv.submit("queued owl", **FAST)
            assert (await lv.cancel(queued.id)).state == "cancelled"
            await lv.cancel(slow.id)
            assert (await lv.wait(slow.id, timeout=60)).state == "cancelled"
            await lv.delete(queued.id)
            with pytest.raises(ApiError):
                await lv.get(queued.id)

    asyncio.run(main())


def test_photo_animation_job_runs_streams_and_cancels(url, tmp_path):
    from skimage import data as samples
    from PIL import Image

    photo = tmp_path / "astronaut.jpg"
    Image.fromarray(samples.astronaut()).save(photo)
    with Client(url) as lv:
        job = lv.submit_animation(photo, move="zoom-in", width=192, height=192, num_frames=24, fps=12)
        assert job.kind == "photo-animation" and job.request["image"] == "uploaded:image.jpg"
        phases = []
        final = lv.wait(job.id, on_progress=lambda j: phases.append(j.progress.phase if j.progress else None),
                        timeout=120)
        assert final.state == "succeeded" and "rendering" in phases
        assert (final.result.frames, final.result.width, final.result.fps) == (24, 192, 12.0)
        assert final.result.model == "photo-animation" and not final.result.random_weights
        assert probe(lv.download(job.id, tmp_path / "moved.mp4")).frames == 24
        long = lv.submit_animation(photo, move="orbit", width=512, height=512, num_frames=1200)
        for j in lv.events(long.id, timeout=120):
            if j.progress and j.progress.phase == "rendering":
                break
        lv.cancel(long.id)
        end = lv.wait(long.id, timeout=60)
        assert end.state == "cancelled" and end.progress.step < 1200
        with pytest.raises(ApiError) as e:
            lv.download(long.id, tmp_path / "nothing.mp4")
        assert e.value.status in (404, 409) and not (tmp_path / "nothing.mp4").exists()
        with pytest.raises(ApiError) as e:
            lv.submit_animation(photo, duration_s=2, num_frames=10)
        assert e.value.status == 422 and "not both" in e.value.message


STORY = {"model": "tiny-wan", "width": 64, "height": 64, "steps": 2, "seed": 21}
SCRIPT = "[5f] a paper boat drifts\n[5f] it spins in a whirlpool"


def test_submit_story_sync_and_async_with_an_uploaded_first_frame(url, tmp_path):
    from PIL import Image

    with Client(url) as lv:
        job = lv.submit_story(SCRIPT, negative_prompt="blurry", **STORY)
        assert job.kind == "story" and job.request["seed"] == 21 and job.request["negative_prompt"] == "blurry"
        done = lv.wait(job.id, timeout=120, raise_on_failure=True)
        # 5 + 5 frames; scene 2 continues from scene 1's last frame, whose copy it drops: 9
        assert done.result.frames == 9 == probe(lv.download(job.id, tmp_path / "boat.mp4")).frames
        assert [(s["transition"], s["task"]) for s in done.result.scenes] == [("start", "t2v"), ("continued", "i2v")]
        with pytest.raises(ApiError) as e:  # an image-to-video-only model needs the first frame: the hint says how
            lv.submit_story("a fox", model="wan2.1-i2v-14b-480p")
        assert e.value.status == 422 and "story-from-image" in e.value.hint and "--image" in e.value.hint
        with pytest.raises(ApiError) as e:
            lv.submit_story(SCRIPT, image=b"not an image", **STORY)
        assert e.value.status == 415

    photo = tmp_path / "pond.png"
    Image.new("RGB", (80, 64), (20, 120, 60)).save(photo)

    async def main():
        async with AsyncClient(url) as lv:
            job = await lv.submit_story(SCRIPT, image=photo, **STORY)
            assert job.kind == "story" and job.request["image"] == "uploaded:image.png"
            done = await lv.wait(job.id, timeout=120, raise_on_failure=True)
            assert done.result.frames == 9 and (done.result.width, done.result.height) == (64, 64)
            assert [s["task"] for s in done.result.scenes] == ["i2v", "i2v"], "the first scene starts from the image"
            assert probe(await lv.download(job.id, tmp_path / "pond.mp4")).frames == 9

    asyncio.run(main())
