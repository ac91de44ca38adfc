"""What localvideo costs on top of diffusers and ffmpeg, measured in one run on this machine.

    python bench/overhead.py [--model tiny-wan --steps 4 --frames 17 --size 128 --repeats 5] [--json]

(a) The same tiny pipeline (real diffusers, random weights) is called raw — ``pipe(...)`` with identical arguments —
and through ``localvideo.generate`` with a warm cache; the app's extra time is planning, cache lookup, progress
callbacks, metadata and the MP4 encode. Reported as ratios app/raw, both with and without the encode.
(b) Encode speed of localvideo's PyAV encoder against the ffmpeg CLI on the same raw frames (bench/encode.py).
Medians over ``repeats``; nothing here is a timed assertion.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def run(model: str = "tiny-wan", steps: int = 4, frames: int = 17, size: int = 128, repeats: int = 5,
        encode_frames: int = 120, encode_size: int = 512) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="localvideo-bench-") as home:
        os.environ["LOCALVIDEO_HOME"] = home
        import torch
        from diffusers import DiffusionPipeline

        import localvideo
        from localvideo.catalog import get_model
        from localvideo.hardware import Hardware
        from localvideo.planner import plan as make_plan
        from localvideo.request import GenerationRequest
        from localvideo.runtime import runner, store
        from localvideo.runtime.cache import PipelineCache

        spec = get_model(model)
        hw = Hardware.assumed(None, ram_gb=16)
        req = GenerationRequest(prompt="a lighthouse on a cliff in a storm, waves crashing", model=model, seed=1,
                                steps=steps, num_frames=frames, width=size, height=size)
        p = make_plan(req, spec, hw)
        folder = store.locate(spec)

        raw = DiffusionPipeline.from_pretrained(str(folder), local_files_only=True)
        raw.set_progress_bar_config(disable=True)
        kwargs = runner.call_kwargs(raw, p) | {"output_type": "np"}  # raw diffusers decodes inside pipe(...)

        def raw_call():
            with torch.inference_mode():
                raw(generator=torch.Generator("cpu").manual_seed(p.seed), **kwargs)

        cache = PipelineCache(8 * 10**9)
        out_dir = Path(home) / "out"

        def app_call():
            return localvideo.generate(req.prompt, model=model, seed=1, steps=steps, num_frames=frames, width=size,
                                       height=size, output=str(out_dir), hardware=hw, cache=cache)

        raw_call(), app_call()  # warm both (imports, allocator, the app's cache)
        raw_s, app_s, app_run_s = [], [], []
        for _ in range(repeats):  # interleaved so drift affects both sides alike
            t = time.perf_counter()
            raw_call()
            raw_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            r = app_call()
            app_s.append(time.perf_counter() - t)
            app_run_s.append(r.timings["total_s"] - r.timings["encode_s"])
        med = statistics.median
        a = {"model": model, "steps": steps, "frames": p.num_frames, "size": size, "repeats": repeats,
             "raw_pipe_s": med(raw_s), "app_total_s": med(app_s), "app_without_encode_s": med(app_run_s),
             "ratio_total": med(app_s) / med(raw_s), "ratio_without_encode": med(app_run_s) / med(raw_s),
             "cache_loads": cache.stats.loads}

    import encode as encode_bench

    b = encode_bench.run(frames=encode_frames, size=encode_size, repeats=3)
    return {"overhead": a, "encode": b}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-wan")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--frames", type=int, default=17)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--encode-frames", type=int, default=120)
    ap.add_argument("--encode-size", type=int, default=512)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    r = run(a.model, a.steps, a.frames, a.size, a.repeats, a.encode_frames, a.encode_size)
    if a.json:
        print(json.dumps(r, indent=2))
        return
    o, e = r["overhead"], r["encode"]
    print(f"(a) {o['model']} {o['size']}x{o['size']} x {o['frames']} frames, {o['steps']} steps, median of "
          f"{o['repeats']} (warm; pipeline loads during the timed runs: {o['cache_loads'] - 1})")
    print(f"    raw diffusers pipe(...)            {o['raw_pipe_s']:.3f} s")
    print(f"    localvideo.generate, no encode     {o['app_without_encode_s']:.3f} s   ratio "
          f"{o['ratio_without_encode']:.3f}")
    print(f"    localvideo.generate, with MP4      {o['app_total_s']:.3f} s   ratio {o['ratio_total']:.3f}")
    print(f"(b) encode {e['frames']} frames {e['size']}x{e['size']} crf {e['crf']} {e['preset']}, median of "
          f"{e['repeats']}")
    print(f"    localvideo (PyAV)  {e['localvideo']['seconds']:.3f} s   ffmpeg CLI  {e['ffmpeg']['seconds']:.3f} s   "
          f"ratio {e['ratio']:.3f}")


if __name__ == "__main__":
    main()
