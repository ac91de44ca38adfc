"""End to end with real diffusers pipelines (tiny configs, random weights): request → plan → run → MP4 → metadata."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

import localvideo
from localvideo.catalog import get_model
from localvideo.errors import Cancelled
from localvideo.hardware import Hardware
from localvideo.media.probe import probe, read_frames
from localvideo.planner import plan as make_plan
from localvideo.prompts import expand
from localvideo.request import GenerationRequest
from localvideo.runtime import runner, store
from localvideo.runtime.cache import PipelineCache

CPU = Hardware.assumed(None, ram_gb=16)
PROMPT = "a red fox trots across fresh snow at dawn, café 東京"


@pytest.fixture(scope="module")
def cache():
    return PipelineCache(budget_bytes=8 * 10**9)


def _run_frames(model: str, seed: int, cache, **kw) -> np.ndarray:
    spec = get_model(model)
    p = make_plan(GenerationRequest(prompt=PROMPT, model=model, seed=seed, steps=2, **kw), spec, CPU)
    pipe, _ = runner.get_pipeline(cache, spec, store.locate(spec), p)
    return runner.run(pipe, p).frames


@pytest.mark.parametrize("model", ["tiny-wan", "tiny-ltx", "tiny-cogvideox"])
def test_each_tiny_family_writes_a_decodable_mp4_that_matches_its_plan(model, tmp_path, cache):
    out = tmp_path / f"{model}.mp4"
    r = localvideo.generate(PROMPT, model=model, seed=7, steps=2, fps=12, output=str(out), hardware=CPU, cache=cache)
    assert r.path == out and out.is_file()
    info = probe(out)
    assert (info.frames, info.width, info.height) == (r.plan.num_frames, r.plan.width, r.plan.height)
    assert info.fps == pytest.approx(12) and info.codec == "h264" and info.pix_fmt == "yuv420p" and info.faststart
    frames = read_frames(out)
    assert frames.shape == (r.plan.num_frames, r.plan.height, r.plan.width, 3) and frames.std() > 1  # not blank
    tags = json.loads(info.tags["localvideo"])
    expanded = expand(PROMPT, get_model(model).family)  # the prompt engine rewrote it for the family
    for key, value in {"original_prompt": PROMPT, "prompt": expanded.prompt, "prompt_source": "engine",
                       "negative_prompt": expanded.negative_prompt, "model": model, "seed": 7, "steps": 2, "fps": 12.0,
                       "num_frames": r.plan.num_frames, "width": r.plan.width, "height": r.plan.height,
                       "strategy": "resident", "random_weights": True}.items():
        assert tags[key] == value, key
    assert tags["negative_prompt"] == r.plan.negative_prompt and tags["guidance"] == r.plan.guidance
    assert tags["localvideo_version"] == localvideo.__version__
    assert "RANDOM WEIGHTS" in info.tags["comment"]
    sidecar = json.loads(r.sidecar.read_text())
    assert sidecar["seed"] == 7 and sidecar["file"]["frames"] == info.frames and sidecar["timings"]["total_s"] > 0


def test_same_seed_gives_identical_frames_and_another_seed_does_not(cache):
    a = _run_frames("tiny-wan", 11, cache)
    b = _run_frames("tiny-wan", 11, cache)
    c = _run_frames("tiny-wan", 12, cache)
    assert np.array_equal(a, b)
    assert np.abs(a - c).mean() > 1e-3


def test_same_seed_gives_identical_videos_end_to_end(tmp_path, cache):
    r1 = localvideo.generate(PROMPT, model="tiny-ltx", seed=5, steps=2, output=str(tmp_path / "a.mp4"), hardware=CPU,
                             cache=cache)
    r2 = localvideo.generate(PROMPT, model="tiny-ltx", seed=5, steps=2, output=str(tmp_path / "b.mp4"), hardware=CPU,
                             cache=cache)
    assert np.array_equal(read_frames(r1.path), read_frames(r2.path))


def test_second_generation_with_the_same_model_does_not_reload(tmp_path):
    cache = PipelineCache(budget_bytes=8 * 10**9)
    r1 = localvideo.generate(PROMPT, model="tiny-wan", seed=1, steps=1, output=str(tmp_path / "1.mp4"),
                             hardware=CPU, cache=cache)
    r2 = localvideo.generate("another prompt", model="tiny-wan", seed=2, steps=1, output=str(tmp_path / "2.mp4"),
                             hardware=CPU, cache=cache)
    assert cache.stats.loads == 1 and cache.stats.hits == 1
    assert (r1.cache_hit, r2.cache_hit) == (False, True)


def test_cache_evicts_least_recently_used_under_its_budget():
    cache = PipelineCache(budget_bytes=1)  # room for one pipeline at a time
    _run_frames("tiny-wan", 1, cache)
    _run_frames("tiny-cogvideox", 1, cache)
    assert len(cache) == 1 and cache.keys()[0][0] == "tiny-cogvideox" and cache.stats.evictions == 1
    _run_frames("tiny-cogvideox", 2, cache)
    assert cache.stats.loads == 2 and cache.stats.hits == 1


def _count_decodes(pipe):
    calls = []
    original = pipe.vae.decode

    def counting(*a, **k):
        calls.append(1)
        return original(*a, **k)

    pipe.vae.decode = counting
    return calls, original


def test_cancel_from_the_progress_callback_stops_before_decode_and_writes_nothing(tmp_path):
    cache = PipelineCache(budget_bytes=8 * 10**9)
    spec = get_model("tiny-wan")
    p = make_plan(GenerationRequest(prompt=PROMPT, model="tiny-wan", seed=1, steps=4), spec, CPU)
    pipe, _ = runner.get_pipeline(cache, spec, store.locate(spec), p)
    calls, original = _count_decodes(pipe)
    seen = []

    def on_progress(ev):
        seen.append((ev.phase, ev.step))
        if ev.phase == "denoising" and ev.step == 2:
            raise Cancelled("stop")

    out = tmp_path / "cancelled.mp4"
    try:
        with pytest.raises(Cancelled):
            localvideo.generate(PROMPT, model="tiny-wan", seed=1, steps=4, output=str(out), hardware=CPU,
                                cache=cache, on_progress=on_progress)
    finally:
        pipe.vae.decode = original
    assert calls == [] and ("denoising", 2) in seen and ("denoising", 3) not in seen
    assert list(tmp_path.iterdir()) == []  # no MP4, no temp file, no sidecar


def test_cancel_with_an_event_mid_run(tmp_path):
    cache = PipelineCache(budget_bytes=8 * 10**9)
    ev = threading.Event()

    def on_progress(p):
        if p.phase == "denoising" and p.step == 1:
            ev.set()  # e.g. a UI's cancel button, from another thread

    with pytest.raises(Cancelled):
        localvideo.generate(PROMPT, model="tiny-cogvideox", seed=1, steps=3, output=str(tmp_path / "x.mp4"),
                            hardware=CPU, cache=cache, cancel=ev, on_progress=on_progress)
    assert list(tmp_path.iterdir()) == []


def test_progress_events_arrive_in_order_with_eta(tmp_path, cache):
    events = []
    localvideo.generate(PROMPT, model="tiny-wan", seed=3, steps=3, output=str(tmp_path / "p.mp4"), hardware=CPU,
                        cache=cache, on_progress=events.append)
    phases = [e.phase for e in events]
    assert phases[0] == "loading" and phases[-1] == "done"
    assert phases.index("decoding") < phases.index("encoding") < phases.index("done")
    steps = [e.step for e in events if e.phase == "denoising"]
    assert steps == [0, 1, 2, 3]
    assert all(e.eta_s is not None for e in events if e.phase == "denoising" and e.step > 0)


def test_group_offload_runs_on_cpu_and_gives_the_same_frames(cache):
    resident = _run_frames("tiny-wan", 21, cache)
    offloaded = _run_frames("tiny-wan", 21, PipelineCache(8 * 10**9), strategy="group_offload")
    assert np.allclose(resident, offloaded, atol=1e-5)


def test_vae_tiling_option_reaches_the_pipeline(cache):
    spec = get_model("tiny-wan")
    p = make_plan(GenerationRequest(prompt=PROMPT, model="tiny-wan", seed=1, steps=1, vae_tiling=True), spec, CPU)
    pipe, _ = runner.get_pipeline(cache, spec, store.locate(spec), p)
    runner.run(pipe, p)
    assert pipe.vae.use_tiling is True
    p2 = make_plan(GenerationRequest(prompt=PROMPT, model="tiny-wan", seed=1, steps=1), spec, CPU)
    runner.run(pipe, p2)
    assert pipe.vae.use_tiling is False


def test_result_object_has_paths_metadata_and_timings(tmp_path, cache):
    r = localvideo.generate(PROMPT, model="tiny-wan", seed=9, steps=1, output=str(tmp_path), hardware=CPU,
                            cache=cache)
    assert r.path.parent == tmp_path and r.path.suffix == ".mp4" and r.sidecar == r.path.with_suffix(".json")
    assert r.seed == 9 and set(r.timings) >= {"load_s", "denoise_s", "decode_s", "encode_s", "total_s"}
    d = r.to_dict()
    assert json.loads(json.dumps(d))["random_weights"] is True
