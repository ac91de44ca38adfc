"""Benchmark localvideo's PyAV encoder against the ffmpeg CLI on identical raw RGB frames.

    python bench/encode.py [--frames 120 --size 512 --crf 18 --preset medium --repeats 3] [--json]

Both sides get the same in-memory uint8 frames (a smooth moving pattern plus a little noise), both use libx264
with yuv420p and +faststart; the ffmpeg CLI (imageio-ffmpeg's bundled binary) is fed rgb24 through stdin.
Each is run ``repeats`` times and the median wall time is reported.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from localvideo.media.encode import encode_video  # noqa: E402
from localvideo.media.probe import probe  # noqa: E402

log = logging.getLogger(__name__)

FPS = 16


def make_frames(frames: int, size: int, seed: int = 0) -> np.ndarray:
    """Deterministic (N, size, size, 3) uint8 frames: drifting colour waves plus mild noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    out = np.empty((frames, size, size, 3), np.uint8)
    for i in range(frames):
        t = i / max(frames, 1)
        r = 0.5 + 0.5 * np.sin(2 * np.pi * (x * 2 + t))
        g = 0.5 + 0.5 * np.sin(2 * np.pi * (y * 3 - 2 * t))
        b = 0.5 + 0.5 * np.cos(2 * np.pi * ((x + y) * 1.5 + t))
        img = np.stack([r, g, b], axis=-1) * 235 + rng.normal(0, 4, (size, size, 3))
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def _ffmpeg_encode(frames: np.ndarray, out: Path, crf: int, preset: str) -> None:
    """Encode with the ffmpeg CLI, streaming rgb24 frames through stdin."""
    import imageio_ffmpeg

    n, h, w, _ = frames.shape
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error",
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(FPS), "-i", "-",
           "-c:v", "libx264", "-crf", str(crf), "-preset", preset, "-pix_fmt", "yuv420p",
           "-movflags", "+faststart", str(out)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for f in frames:
            proc.stdin.write(memoryview(np.ascontiguousarray(f)).cast("B"))
        proc.stdin.close()
    except BrokenPipeError:
        pass
    err = proc.stderr.read().decode(errors="replace")
    if proc.wait() != 0:
        raise RuntimeError(f"ffmpeg failed: {err.strip()}")


def _time(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(frames: int = 120, size: int = 512, crf: int = 18, preset: str = "medium", repeats: int = 3) -> dict:
    """Time both encoders on the same frames; returns seconds, fps, sizes, decoded frame counts and the ratio."""
    data = make_frames(frames, size)
    with tempfile.TemporaryDirectory(prefix="localvideo-bench-") as tmp:
        ours, theirs = Path(tmp) / "localvideo.mp4", Path(tmp) / "ffmpeg.mp4"
        results = {}
        for name, out, fn in [
            ("localvideo", ours, lambda: encode_video(data, ours, FPS, crf=crf, preset=preset)),
            ("ffmpeg", theirs, lambda: _ffmpeg_encode(data, theirs, crf, preset)),
        ]:
            seconds = _time(fn, repeats)
            info = probe(out)
            results[name] = {"seconds": seconds, "frames_per_s": frames / seconds, "bytes": out.stat().st_size,
                             "decoded_frames": info.frames, "width": info.width, "height": info.height,
                             "faststart": info.faststart}
    return {"frames": frames, "size": size, "crf": crf, "preset": preset, "repeats": repeats, **results,
            "ratio": results["localvideo"]["seconds"] / results["ffmpeg"]["seconds"]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=120)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--crf", type=int, default=18)
    ap.add_argument("--preset", default="medium")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="print the numbers as JSON")
    a = ap.parse_args(argv)
    r = run(a.frames, a.size, a.crf, a.preset, a.repeats)
    if a.json:
        print(json.dumps(r, indent=2))
        return
    print(f"{a.frames} frames {a.size}x{a.size}, crf {a.crf}, preset {a.preset}, median of {a.repeats}")
    print(f"{'encoder':<12}{'seconds':>10}{'frames/s':>10}{'KB':>10}")
    for name in ("localvideo", "ffmpeg"):
        x = r[name]
        print(f"{name:<12}{x['seconds']:>10.3f}{x['frames_per_s']:>10.1f}{x['bytes'] / 1024:>10.1f}")
    print(f"ratio localvideo/ffmpeg: {r['ratio']:.2f}")


if __name__ == "__main__":
    main()
