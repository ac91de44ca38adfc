"""Tests for localvideo.media: H.264 MP4 encoding, probing, atomic output, sidecars and the encode benchmark."""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from localvideo.errors import InvalidRequest, OutputError
from localvideo.media.encode import VideoWriter, check_output_path, encode_video, write_sidecar
from localvideo.media.probe import probe, read_frames

ROOT = Path(__file__).resolve().parents[1]


def smooth_frames(n: int = 33, w: int = 128, h: int = 96) -> np.ndarray:
    """Moving colour gradients: smooth enough that H.264 at crf 18 reproduces them closely."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        out[i, ..., 0] = (x * 2 + i * 3) % 256
        out[i, ..., 1] = 128 + 100 * np.sin((y + i * 2) / 15)
        out[i, ..., 2] = (x + y + i * 4) / (w + h + 4 * n) * 255
    return out


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("fps", [16, 23.976, 8])
def test_round_trip(tmp_path, fps):
    frames = smooth_frames()
    blob = json.dumps({"prompt": "a cat ü " * 100, "seed": 42, "steps": list(range(200))})[:2048]
    meta = {"localvideo": blob, "comment": "a cat, seed 42"}
    r = encode_video(frames, tmp_path / "out.mp4", fps, crf=18, metadata=meta)
    assert (r.frames, r.width, r.height, r.padded) == (33, 128, 96, False)
    assert r.path == tmp_path / "out.mp4" and r.bytes == r.path.stat().st_size
    info = probe(r.path)
    assert (info.frames, info.width, info.height) == (33, 128, 96)
    assert info.fps == pytest.approx(fps, abs=1e-9) and r.fps == pytest.approx(fps, abs=1e-9)
    assert info.duration == pytest.approx(33 / fps, abs=1e-3)
    assert (info.codec, info.pix_fmt, info.faststart) == ("h264", "yuv420p", True)
    assert info.tags["localvideo"] == blob and len(blob) == 2048
    assert info.tags["comment"] == "a cat, seed 42"
    data = r.path.read_bytes()
    assert 0 < data.find(b"moov") < data.find(b"mdat")
    back = read_frames(r.path)
    assert back.shape == frames.shape and back.dtype == np.uint8
    assert np.abs(back.astype(int) - frames.astype(int)).mean() < 6
    assert leftovers(tmp_path) == ["out.mp4"]


def test_odd_size_is_padded_not_cropped(tmp_path):
    frames = smooth_frames(5, 127, 95)
    r = encode_video(frames, tmp_path / "odd.mp4", 16)
    assert (r.width, r.height, r.padded) == (128, 96, True)
    back = read_frames(r.path)
    assert back.shape == (5, 96, 128, 3)
    assert np.abs(back[:, :95, :127].astype(int) - frames.astype(int)).mean() < 6


def test_float_and_batch_inputs(tmp_path):
    frames = smooth_frames(6)
    r = encode_video(frames[None].astype(np.float32) / 255.0, tmp_path / "f.mp4", 8)  # (1, N, H, W, 3) float
    assert r.frames == 6
    assert np.abs(read_frames(r.path).astype(int) - frames.astype(int)).mean() < 6
    with VideoWriter(tmp_path / "b.mp4", fps=8) as w:
        w.write(frames[:4])  # a batch
        w.write(frames[4])  # a single frame
    assert w.result.frames == 5 and probe(tmp_path / "b.mp4").frames == 5


def test_generator_input_streams(tmp_path):
    r = encode_video((f for f in smooth_frames(7)), tmp_path / "g.mp4", 16)
    assert probe(r.path).frames == 7


def test_size_mismatch_is_rejected(tmp_path):
    with pytest.raises(InvalidRequest, match="same size"):
        with VideoWriter(tmp_path / "m.mp4", fps=16) as w:
            w.write(smooth_frames(1)[0])
            w.write(smooth_frames(1, 64, 64)[0])
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_exception_inside_with_leaves_nothing(tmp_path, exc):
    with pytest.raises(exc):
        with VideoWriter(tmp_path / "x.mp4", fps=16) as w:
            # PyAV creates the file on the first muxed packet, i.e. after x264's lookahead fills up.
            for f in smooth_frames(100, 64, 48):
                w.write(f)
                if w.tmp_path.exists():
                    break
            assert w.tmp_path.exists() and w.tmp_path.parent == tmp_path
            assert not (tmp_path / "x.mp4").exists()
            raise exc()
    assert leftovers(tmp_path) == []


def test_zero_frames(tmp_path):
    with pytest.raises(InvalidRequest, match="no frames to encode"):
        encode_video([], tmp_path / "z.mp4", 16)
    with pytest.raises(InvalidRequest, match="no frames to encode"):
        with VideoWriter(tmp_path / "z.mp4", fps=16):
            pass
    assert leftovers(tmp_path) == []


def test_unwritable_folder(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    for target in (blocker / "out.mp4", blocker / "sub" / "out.mp4"):
        with pytest.raises(OutputError) as e:
            encode_video(smooth_frames(2), target, 16)
        assert str(blocker) in e.value.message and e.value.hint
    (tmp_path / "dir.mp4").mkdir()
    with pytest.raises(OutputError):
        check_output_path(tmp_path / "dir.mp4")


def test_creates_missing_parents(tmp_path):
    r = encode_video(smooth_frames(2), tmp_path / "a" / "b" / "c.mp4", 16)
    assert r.path.is_file()


def test_wrong_suffix(tmp_path):
    with pytest.raises(InvalidRequest, match=r"\.mp4"):
        VideoWriter(tmp_path / "out.avi", fps=16)
    assert leftovers(tmp_path) == []


def test_bad_metadata_and_fps(tmp_path):
    with pytest.raises(InvalidRequest):
        VideoWriter(tmp_path / "o.mp4", fps=16, metadata={"seed": 42})
    for bad in (0, -1, float("nan"), "fast"):
        with pytest.raises(InvalidRequest):
            VideoWriter(tmp_path / "o.mp4", fps=bad)
    with pytest.raises(InvalidRequest, match="preset"):
        VideoWriter(tmp_path / "o.mp4", fps=16, preset="bogus")
    with pytest.raises(InvalidRequest, match="CRF"):
        VideoWriter(tmp_path / "o.mp4", fps=16, crf=60)
    assert leftovers(tmp_path) == []


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    try:
        with pytest.raises(OutputError, match="ro"):
            check_output_path(ro / "out.mp4")
    finally:
        ro.chmod(0o700)


def test_sidecar(tmp_path):
    data = {"prompt": "un chat ü", "seed": 1, "path": tmp_path / "v.mp4"}
    p = write_sidecar(tmp_path / "v.mp4", data)
    assert p == tmp_path / "v.json"
    text = p.read_text(encoding="utf-8")
    assert "un chat ü" in text and "\n  " in text
    assert json.loads(text) == {**data, "path": str(tmp_path / "v.mp4")}
    write_sidecar(tmp_path / "v.mp4", {"seed": 2})  # overwrite in place
    assert json.loads(p.read_text()) == {"seed": 2}
    assert leftovers(tmp_path) == ["v.json"]
    with pytest.raises(OutputError):
        write_sidecar(p / "nested.mp4", {})  # parent is a regular file


def test_bench_runs_tiny():
    spec = importlib.util.spec_from_file_location("bench_encode", ROOT / "bench" / "encode.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    r = bench.run(frames=16, size=64, crf=18, preset="medium", repeats=1)
    for name in ("localvideo", "ffmpeg"):
        assert r[name]["decoded_frames"] == 16 and r[name]["faststart"]
        assert (r[name]["width"], r[name]["height"]) == (64, 64)
    assert math.isfinite(r["ratio"]) and r["ratio"] > 0
