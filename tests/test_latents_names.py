"""Each run's latents get a name of their own: jobs all write ``video.mp4`` (in their own folders) and story scenes
are all ``scene-NNN``, so naming latents after the video's stem alone let concurrent or later runs overwrite a kept
file (one a failed decode had promised to the user)."""

from __future__ import annotations

import threading

import localvideo
from localvideo.hardware import Hardware
from localvideo.runtime import latents as latents_io
from localvideo.runtime.cache import PipelineCache

CPU = Hardware.assumed(None, ram_gb=16)


def test_kept_latents_of_two_runs_with_the_same_video_name_do_not_overwrite_each_other(tmp_path):
    cache = PipelineCache(8 * 10**9)
    runs = [localvideo.generate("a kite over dunes", model="tiny-wan", seed=seed, steps=2, width=64, height=64,
                                num_frames=5, output=str(tmp_path / f"job{seed}" / "video.mp4"), hardware=CPU,
                                cache=cache, keep_latents=True) for seed in (1, 2)]
    first, second = (r.latents for r in runs)
    assert first != second and first.is_file() and second.is_file()
    assert second.name.startswith("video-")  # video.latents.safetensors was taken (kept for the user)
    assert [latents_io.load(p).plan["seed"] for p in (first, second)] == [1, 2]
    assert runs[0].to_dict()["latents"] == str(first)
    for p in (first, second):
        p.unlink()


def test_concurrent_reservations_of_one_name_get_distinct_paths(tmp_path):
    got, barrier = [], threading.Barrier(8)

    def take():
        barrier.wait()
        got.append(latents_io.reserve(tmp_path / "out" / "video.mp4", tmp_path))

    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(p.name for p in got) == sorted(["video.latents.safetensors"] +
                                                 [f"video-{n}.latents.safetensors" for n in range(2, 9)])
    for p in got:  # each is claimed by this process until released
        assert latents_io.claim_path(p).exists()
        latents_io.release(p)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
