"""A story's frames go through H.264 once: scenes are kept losslessly (uint8 .npy) and joined from those.

Before, each scene was encoded to its own MP4 and the joined video was made by decoding those and encoding again, so
every frame of a story was encoded twice (generation loss). Here, with tiny real pipelines (random weights), the
joined video is compared with a single encode of the scene frames exactly as the runner decoded them.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from localvideo.hardware import Hardware
from localvideo.media import encode as encode_mod
from localvideo.media.concat import Piece, join, piece_frames, save_frames
from localvideo.media.encode import encode_video, to_uint8
from localvideo.media.probe import probe, read_frames
from localvideo.runtime.cache import PipelineCache
from localvideo.story import make_story

CPU = Hardware.assumed(None, ram_gb=16)
SCRIPT = """[0.5s] wide shot: a red fox trots across a snowy field
[0.5s] close-up: the fox lifts its head and sniffs the air
[cut] [0.5s] the fox runs into the dark pine forest [tracking]
"""
FPS, N = 16.0, 4  # 0.5 s → 9 frames a scene (4k+1); crossfade 0.25 s = 4 frames


@pytest.fixture(scope="module")
def cache():
    return PipelineCache(8 * 10**9)


def compose(scenes: list[np.ndarray], drops: list[int], fades: list[int]) -> np.ndarray:
    """The story's frames from its scenes, written out independently of concat.join: scene k drops its first
    ``drops[k]`` frames and overlaps the previous one by ``fades[k]``, frame j of the overlap being
    round((1 − a)·tail_j + a·head_j) with a = (j + 1) / (n + 1)."""
    out: list[np.ndarray] = []
    for frames, d, n in zip(scenes, drops, fades):
        frames = frames[d:].astype(np.float64)
        for j in range(n):
            a = (j + 1) / (n + 1)
            out[len(out) - n + j] = np.rint((1 - a) * out[len(out) - n + j] + a * frames[j])
        out += list(frames[n:])
    return np.clip(np.stack(out), 0, 255).astype(np.uint8)


def moving_pattern(n: int, seed: int, h: int = 64, w: int = 96) -> np.ndarray:
    """n float frames in [0, 1] of a smooth, colourful, moving pattern (content H.264 keeps well at CRF 18)."""
    phase = np.random.default_rng(seed).random(3) * 6
    y, x = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    return np.stack([np.stack([0.5 + 0.35 * np.sin(9 * x + 5 * y + phase[ch] + 0.4 * t)
                               * np.cos(7 * y - 3 * x + 0.2 * t) for ch in range(3)], -1)
                     for t in range(n)]).astype(np.float32)


def same_encode(got: np.ndarray, ref: np.ndarray, lossless: np.ndarray) -> None:
    """``got`` and ``ref`` are the same frames through one encode with the same settings. libx264's threads make a
    re-encode not always bit-identical (a rare different mode decision: about 0.01 dB), so: equal, or within
    0.05 dB of each other."""
    if not np.array_equal(got, ref):
        assert abs(psnr(got, lossless) - psnr(ref, lossless)) < 0.05, (psnr(got, lossless), psnr(ref, lossless))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_join_from_kept_frames_is_one_encode(tmp_path):
    """concat.join over .npy pieces = one encode of the composed frames, bit for bit; over MP4 pieces it is not."""
    a, b, c = (moving_pattern(k, seed) for seed, k in enumerate((7, 6, 5)))
    kept = [save_frames(x, tmp_path / f"{i}.npy") for i, x in enumerate((a, b, c))]
    for x, k in zip((a, b, c), kept):
        assert k.dtype == np.uint8 and np.array_equal(k, to_uint8(x))  # what the encoder would have been fed
    assert np.array_equal(np.stack(list(piece_frames(tmp_path / "1.npy"))), kept[1])
    want = compose(kept, [0, 0, 1], [0, 2, 0])
    res, spans, _ = join([Piece(tmp_path / "0.npy"), Piece(tmp_path / "1.npy", crossfade_in=2),
                          Piece(tmp_path / "2.npy", drop_first=1)], tmp_path / "joined.mp4", fps=8)
    assert res.frames == len(want) == 7 + 6 + 5 - 2 - 1
    assert [(s.start, s.end) for s in spans] == [(0, 7), (5, 11), (11, 15)]
    once = read_frames(encode_video(want, tmp_path / "once.mp4", fps=8).path)
    same_encode(read_frames(res.path), once, want)
    for i, k in enumerate(kept):  # the old way: each piece through H.264, then the join encodes again
        encode_video(k, tmp_path / f"{i}.mp4", fps=8)
    twice, _, _ = join([Piece(tmp_path / "0.mp4"), Piece(tmp_path / "1.mp4", crossfade_in=2),
                        Piece(tmp_path / "2.mp4", drop_first=1)], tmp_path / "twice.mp4", fps=8)
    assert psnr(read_frames(twice.path), want) < psnr(read_frames(res.path), want) - 0.5


def test_story_is_encoded_once_from_the_runner_frames(cache, tmp_path, lv_home):
    kept: dict[str, np.ndarray] = {}

    def on_progress(p):
        if p.phase == "joining":  # every scene is kept, losslessly, in the work folder until the join is done
            (work,) = tmp_path.glob(".story.segments.partial-*")
            for f in sorted(work.glob("scene-*.npy")):
                kept[f.stem] = np.load(f)

    r = make_story(SCRIPT, model="tiny-wan", width=96, height=96, steps=2, seed=7, crossfade_s=0.25,
                   output=str(tmp_path / "story.mp4"), keep_segments=True, hardware=CPU, cache=cache,
                   on_progress=on_progress)
    assert sorted(kept) == ["scene-001", "scene-002", "scene-003"]
    scenes = [kept[k] for k in sorted(kept)]
    assert [s.shape for s in scenes] == [(9, 96, 96, 3)] * 3 and all(s.dtype == np.uint8 for s in scenes)
    assert [s.transition for s in r.scenes] == ["start", "continued", "crossfade"]

    # frame count and boundaries as before: 27 − 1 continued − 4 crossfade frames
    want = compose(scenes, [0, 1, 0], [0, 0, N])
    assert r.frames == len(want) == 22 == probe(r.path).frames
    assert [(s.start_frame, s.end_frame) for s in r.scenes] == [(0, 9), (9, 17), (13, 22)]

    # the joined video is exactly one encode (same encoder, same settings) of the lossless story frames
    final = read_frames(r.path)
    once = read_frames(encode_video(want, tmp_path / "once.mp4", fps=FPS).path)
    same_encode(final, once, want)

    # the kept segments are each one encode of their scene's frames; the old join (segments decoded, encoded again)
    # is measurably further from the frames the runner made
    seg = r.segments_dir
    for k, frames in enumerate(scenes):
        same_encode(read_frames(seg / f"scene-{k + 1:03d}.mp4"),
                    read_frames(encode_video(frames, tmp_path / f"s{k}.mp4", fps=FPS).path), frames)
    old, _, _ = join([Piece(seg / "scene-001.mp4"), Piece(seg / "scene-002.mp4", drop_first=1),
                      Piece(seg / "scene-003.mp4", crossfade_in=N)], tmp_path / "old.mp4", fps=FPS)
    old = read_frames(old.path)
    err_new, err_old = np.abs(final.astype(float) - want).mean(), np.abs(old.astype(float) - want).mean()
    p_new, p_old = psnr(final, want), psnr(old, want)
    p_ref = psnr(once, want)
    print(f"\nstory vs its lossless frames: joined {err_new:.3f} MAE / {p_new:.2f} dB; one reference encode "
          f"{np.abs(once.astype(float) - want).mean():.3f} MAE / {p_ref:.2f} dB; old path (encoded twice) "
          f"{err_old:.3f} MAE / {p_old:.2f} dB")
    assert p_old < p_new - 0.5 and err_old > err_new * 1.05

    # continuity: scene 2 was conditioned on exactly scene 1's last frame as the runner decoded it
    cond = json.loads(r.sidecar.read_text())["scenes"][1]["conditioning"]
    png = np.asarray(Image.open(seg / "scene-001-last.png").convert("RGB"))
    assert np.array_equal(png, scenes[0][-1])
    assert cond["pixels_sha256"] == hashlib.sha256(scenes[0][-1].tobytes()).hexdigest() and cond["from_frame"] == 8
    # nothing temporary left: the segments folder holds MP4s, sidecars and the PNG; no .npy, no work folder
    assert sorted(p.name for p in seg.iterdir()) == ["scene-001-last.png", "scene-001.json", "scene-001.mp4",
                                                     "scene-002.json", "scene-002.mp4", "scene-003.json",
                                                     "scene-003.mp4"]
    assert not list(tmp_path.glob(".*"))


def test_a_failed_join_leaves_no_story_but_keeps_the_scenes(cache, tmp_path, lv_home, monkeypatch):
    """The disk fills up while the story is encoded: the error, no story MP4, no work folder or kept frames — and
    both finished scenes, each encoded to its own MP4, in fail.segments.failed/ (said in the error's note)."""
    real_write = encode_mod.VideoWriter.write
    seen: list = []

    def write(self, frame):
        if self.path.name == "fail.mp4" and self._count == 5:
            raise OSError(28, "No space left on device")
        return real_write(self, frame)

    def on_progress(p):
        if p.phase == "joining":
            seen.append(sorted(f.name for f in tmp_path.glob(".*.partial-*/*")))

    monkeypatch.setattr(encode_mod.VideoWriter, "write", write)
    latents = lv_home / "latents"
    before = set(latents.glob("*")) if latents.exists() else set()
    with pytest.raises(OSError, match="No space left") as e:
        make_story("[5f] a fox sleeps\n[cut] [5f] a fox wakes", model="tiny-wan", width=64, height=64, steps=1,
                   seed=2, crossfade_s=0.125, output=str(tmp_path / "fail.mp4"), hardware=CPU, cache=cache,
                   on_progress=on_progress)
    assert seen == [["scene-001.npy", "scene-002.npy"]]  # no segment MP4 is made unless segments are kept
    kept = tmp_path / "fail.segments.failed"
    assert e.value.__notes__ == [f"Scenes 1–2 of 2 are kept in {kept} (an MP4 per scene, with its settings)."]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fail.segments.failed"]
    assert sorted(p.name for p in kept.iterdir()) == ["scene-001.json", "scene-001.mp4", "scene-002.json",
                                                      "scene-002.mp4", "story.json"]
    assert [probe(kept / f"scene-00{k}.mp4").frames for k in (1, 2)] == [5, 5]
    assert (set(latents.glob("*")) if latents.exists() else set()) == before
