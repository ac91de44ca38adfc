"""Photo animator speed on this CPU: 512×512 × 48 frames per move, on scikit-image's astronaut (parallax path) and
coffee (camera-only path). Prints a table of seconds and frames/s, split into setup (focus + layers), render
(warps + composite) and encode (libx264 CRF 18, preset medium — the same encoder text-to-video uses).

    .venv/bin/python bench/animate.py [--size 512] [--frames 48] [--save artifacts/animate/bench]

With --save, the first/middle/last frames of every run are written as PNGs (one strip per run) for inspection.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--photos", default="astronaut,coffee")
    ap.add_argument("--save", default=None, help="folder for first/middle/last frame strips")
    args = ap.parse_args()

    import cv2
    import numpy as np
    from PIL import Image
    from skimage import data

    from localvideo.media.probe import read_frames
    from localvideo.motion.animator import animate
    from localvideo.motion.camera import MOVES

    os.environ.setdefault("LOCALVIDEO_HOME", tempfile.mkdtemp(prefix="lv-bench-"))
    print(f"# localvideo animate: {args.size}x{args.size} x {args.frames} frames, {os.cpu_count()} CPUs, "
          f"OpenCV {cv2.__version__}")
    print(f"{'photo':<10} {'move':<10} {'path':<33} {'setup s':>8} {'render s':>9} {'encode s':>9} {'total s':>8} "
          f"{'frames/s':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.photos.split(","):
            img = Image.fromarray(getattr(data, name)())
            for move in MOVES:
                out = Path(tmp) / f"{name}-{move}.mp4"
                t = time.perf_counter()
                r = animate(img, move, width=args.size, height=args.size, num_frames=args.frames, fps=24,
                            output=out)
                total = time.perf_counter() - t
                tm = r.timings
                setup = tm.get("focus_s", 0) + tm.get("layers_s", 0) + tm.get("load_s", 0)
                print(f"{name:<10} {move:<10} {r.render_path:<33} {setup:8.2f} {tm['render_s']:9.2f} "
                      f"{tm['encode_s']:9.2f} {total:8.2f} {args.frames / total:9.1f}", flush=True)
                if args.save:
                    folder = Path(args.save)
                    folder.mkdir(parents=True, exist_ok=True)
                    fr = read_frames(out)
                    strip = np.hstack([fr[0], fr[len(fr) // 2], fr[-1]])
                    cv2.imwrite(str(folder / f"{name}-{move}.png"), cv2.cvtColor(strip, cv2.COLOR_RGB2BGR))


if __name__ == "__main__":
    main()
