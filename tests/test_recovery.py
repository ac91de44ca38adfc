"""Runs that survive: the OOM ladder, kept latents, decode-only retries, `localvideo decode`.

GPU memory is the one boundary faked here: tests.fakes.SimulatedGPU raises the real torch.OutOfMemoryError when
the planner's estimate for a phase exceeds a budget. Pipelines, VAE decode and encoding are all real.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

import localvideo
from conftest import run_cli
from fakes import SimulatedGPU, gpu_need
from localvideo.catalog import get_model
from localvideo.errors import DoesNotFit, GenerationFailed
from localvideo.hardware import Hardware
from localvideo.media.probe import probe, read_frames
from localvideo.planner import plan as make_plan
from localvideo.planner import replan
from localvideo.request import GenerationRequest
from localvideo.runtime import recovery, runner, store
from localvideo.runtime.cache import PipelineCache

CPU = Hardware.assumed(None, ram_gb=16)
PROMPT = "a paper boat drifting down a rainy street gutter"


def _plan(model="tiny-wan", **kw):
    kw.setdefault("seed", 3)
    kw.setdefault("steps", 3)
    return make_plan(GenerationRequest(prompt=PROMPT, model=model, **kw), get_model(model), CPU)


def _between(low: int, high: int) -> int:
    assert low < high, (low, high)
    return (low + high) // 2


def _count_calls(module, name):
    calls = []
    original = getattr(module, name)

    def wrapper(*a, **k):
        calls.append(1)
        return original(*a, **k)

    setattr(module, name, wrapper)
    return calls


@pytest.mark.parametrize("model", ["tiny-wan", "tiny-ltx", "tiny-cogvideox"])
def test_decoding_kept_latents_gives_exactly_the_pipelines_own_frames(model):
    """The runner stops before the VAE and decodes itself; that must change nothing."""
    spec = get_model(model)
    p = _plan(model, steps=2)
    cache = PipelineCache(8 * 10**9)
    pipe, _ = runner.get_pipeline(cache, spec, store.locate(spec), p)
    ours = runner.run(pipe, p).frames
    kwargs = runner.call_kwargs(pipe, p) | {"output_type": "np"}
    with torch.inference_mode():
        theirs = pipe(generator=torch.Generator("cpu").manual_seed(p.seed), **kwargs).frames[0]
    assert ours.shape == theirs.shape
    assert np.allclose(ours, theirs, atol=1e-6)


def test_ltx_condition_pipeline_latents_are_decoded_as_the_pipeline_decodes_them():
    """LTXConditionPipeline (ltx-video-13b) returns its latents unpacked (B, C, F, H, W), LTXPipeline packed (B, N, C):
    unpacking them a second time scrambled the video (max error 0.86) without any error."""
    from diffusers import LTXConditionPipeline

    from localvideo.runtime.decode import decode

    base, _ = runner.get_pipeline(PipelineCache(4 * 10**9), get_model("tiny-ltx"), store.locate(get_model("tiny-ltx")),
                                  _plan("tiny-ltx", steps=2))
    pipe = LTXConditionPipeline(**base.components)
    kw = dict(prompt="a fox", width=64, height=64, num_frames=9, num_inference_steps=2, guidance_scale=1.0)
    with torch.inference_mode():
        latents = pipe(**kw, output_type="latent", generator=torch.Generator().manual_seed(0)).frames
        theirs = pipe(**kw, output_type="np", generator=torch.Generator().manual_seed(0)).frames[0]
    assert latents.ndim == 5
    ours = decode(pipe, latents, "ltx", num_frames=9, height=64, width=64, generator=torch.Generator().manual_seed(0))
    assert np.allclose(ours, theirs, atol=1e-6)


def test_oom_while_decoding_retries_the_decode_only_with_tiling(tmp_path):
    spec = get_model("tiny-wan")
    p = _plan(width=512, height=512, num_frames=9)
    tiled = replan(p, spec, vae_tiling=True)
    guard = SimulatedGPU(spec, _between(gpu_need(spec, tiled, "decode"), gpu_need(spec, p, "decode")),
                         phases=("decode",))
    cache = PipelineCache(8 * 10**9)
    pipe, _ = runner.get_pipeline(cache, spec, store.locate(spec), p)
    transformer_calls = _count_calls(pipe.transformer, "forward")
    events = []
    r = localvideo.generate(PROMPT, model="tiny-wan", seed=3, steps=3, width=512, height=512, num_frames=9,
                            output=str(tmp_path / "v.mp4"), hardware=CPU, cache=cache, guard=guard,
                            on_progress=events.append)
    assert len(transformer_calls) == 6  # 3 steps × (cond + uncond): denoising was not rerun
    assert r.plan.vae_tiling and r.plan.degraded == ("VAE tiling on after OOM while decoding (denoising kept)",)
    assert [e.step for e in events if e.phase == "denoising"] == [0, 1, 2, 3]  # denoising ran once
    assert [g[0] for g in guard.log] == ["decode", "decode"] and guard.log[-1][-1] is True
    info = probe(r.path)
    assert info.frames == 9 and (info.width, info.height) == (512, 512)
    meta = json.loads(info.tags["localvideo"])
    assert meta["degraded"] == list(r.plan.degraded) and meta["vae_tiling"] is True
    assert "degraded: VAE tiling" in info.tags["comment"]
    # the tiled retry equals a run planned with tiling from the start
    clean = localvideo.generate(PROMPT, model="tiny-wan", seed=3, steps=3, width=512, height=512, num_frames=9,
                                vae_tiling=True, output=str(tmp_path / "clean.mp4"), hardware=CPU, cache=cache)
    assert np.array_equal(read_frames(r.path), read_frames(clean.path))


class EncodeFitsOnlyTiled(runner.MemoryGuard):
    """A GPU on which the VAE's encode of the conditioning image fits only tiled (as Wan 2.1 I2V at 480p on a small
    card: ≈ 5.2 GB untiled, 0.9 GB tiled, traced by bench/memtrace.py)."""

    def __init__(self):
        self.log = []

    def check(self, phase, plan, step=None):
        self.log.append((phase, plan.vae_tiling))
        if phase == "encode" and not plan.vae_tiling:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated: the untiled encode of the conditioning image)")


def test_oom_while_encoding_the_conditioning_image_retries_with_a_tiled_encode(tmp_path, monkeypatch):
    from diffusers import AutoencoderKLWan
    from PIL import Image

    img = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (320, 320, 3), dtype=np.uint8)).save(img)
    monkeypatch.setattr(AutoencoderKLWan, "tiled_encode", AutoencoderKLWan.tiled_encode)  # restored after the test
    tiled_encodes = _count_calls(AutoencoderKLWan, "tiled_encode")  # 320 px > the VAE's 256 px tile: it tiles
    cache, guard = PipelineCache(8 * 10**9), EncodeFitsOnlyTiled()
    kw = dict(model="tiny-wan", image=str(img), seed=5, steps=2, width=320, height=320, num_frames=5, hardware=CPU,
              cache=cache)
    r = localvideo.generate(PROMPT, output=str(tmp_path / "v.mp4"), guard=guard, **kw)
    assert r.plan.vae_tiling
    assert r.plan.degraded == ("VAE tiling on after OOM while VAE-encoding the conditioning image",)
    assert [g for g in guard.log if g[0] == "encode"] == [("encode", False), ("encode", True)]
    meta = json.loads(probe(r.path).tags["localvideo"])
    assert meta["degraded"] == list(r.plan.degraded) and any(o.startswith("encode:") for o in meta["ooms"])
    assert probe(r.path).frames == 5
    assert len(tiled_encodes) == 1  # the first try failed before encoding; the retry encoded tiled
    # the retry is exactly a run planned with tiling from the start
    clean = localvideo.generate(PROMPT, output=str(tmp_path / "clean.mp4"), vae_tiling=True, **kw)
    assert np.array_equal(read_frames(r.path), read_frames(clean.path))


def test_oom_at_a_denoising_step_moves_to_group_offload_and_loses_nothing(tmp_path):
    spec = get_model("tiny-wan")
    p = _plan()
    group = replan(p, spec, strategy="group_offload")
    guard = SimulatedGPU(spec, _between(gpu_need(spec, group, "denoise"), gpu_need(spec, p, "denoise")),
                         phases=("denoise",), at_step=2)
    cache = PipelineCache(8 * 10**9)
    r = localvideo.generate(PROMPT, model="tiny-wan", seed=3, steps=3, output=str(tmp_path / "g.mp4"), hardware=CPU,
                            cache=cache, guard=guard)
    assert r.plan.strategy == "group_offload"
    assert r.plan.degraded == ("strategy resident → group_offload after OOM while denoising",)
    assert cache.stats.loads == 2 and len(cache) == 1  # the resident copy was freed, not kept beside the new one
    clean = localvideo.generate(PROMPT, model="tiny-wan", seed=3, steps=3, output=str(tmp_path / "c.mp4"),
                                hardware=CPU, cache=PipelineCache(8 * 10**9))
    assert np.abs(read_frames(r.path).astype(int) - read_frames(clean.path)).max() <= 1


def test_oom_while_loading_moves_to_a_stronger_offload(tmp_path):
    spec = get_model("tiny-cogvideox")
    p = _plan("tiny-cogvideox")
    group = replan(p, spec, strategy="group_offload")
    guard = SimulatedGPU(spec, _between(gpu_need(spec, group, "load"), gpu_need(spec, p, "load")), phases=("load",))
    cache = PipelineCache(8 * 10**9)
    r = localvideo.generate(PROMPT, model="tiny-cogvideox", seed=3, steps=2, output=str(tmp_path / "l.mp4"),
                            hardware=CPU, cache=cache, guard=guard)
    assert r.plan.degraded == ("strategy resident → group_offload after OOM while loading",)
    assert len(cache) == 1 and cache.keys()[0][4] == "group_offload"  # the failed load never entered the cache
    assert probe(r.path).frames == r.plan.num_frames


def test_every_rung_in_order_then_the_video_matches_the_degraded_plan(tmp_path):
    spec = get_model("tiny-wan")
    p = _plan(num_frames=17, width=128, height=128)
    # find the plan at the bottom of the ladder we want to reach: leaf offload, 17→9→5→1 frames, then smaller
    target = replan(p, spec, strategy="group_offload_leaf", num_frames=1, width=96, height=96)
    guard = SimulatedGPU(spec, gpu_need(spec, target, "denoise"), phases=("denoise",), at_step=1)
    cache = PipelineCache(8 * 10**9)
    out = recovery.generate_frames(spec, store.locate(spec), p, cache, guard=guard, max_attempts=10)
    assert list(out.plan.degraded) == [
        "strategy resident → group_offload after OOM while denoising",
        "strategy group_offload → group_offload_leaf after OOM while denoising",
        "frames 17 → 9 after OOM while denoising",
        "frames 9 → 5 after OOM while denoising",
        "frames 5 → 1 after OOM while denoising",
        "size 128x128 → 96x96 after OOM while denoising",
    ]
    assert out.attempts == 7 and out.frames.shape == (1, 96, 96, 3)
    assert all(get_model("tiny-wan").frame_rule.valid(g[3]) for g in guard.log)
    assert all(g[4] % 16 == 0 and g[5] % 16 == 0 for g in guard.log)


def test_frames_rung_end_to_end_records_81_to_49_style_degradation(tmp_path):
    spec = get_model("tiny-wan")
    p = _plan(num_frames=33)
    target = replan(p, spec, strategy="group_offload_leaf", num_frames=17)
    guard = SimulatedGPU(spec, gpu_need(spec, target, "denoise"), phases=("denoise",), at_step=1)
    r = localvideo.generate(PROMPT, model="tiny-wan", seed=3, steps=2, num_frames=33, output=str(tmp_path / "f.mp4"),
                            hardware=CPU, cache=PipelineCache(8 * 10**9), guard=guard)
    assert r.plan.degraded[-1] == "frames 33 → 17 after OOM while denoising"
    info = probe(r.path)
    assert info.frames == 17 == r.plan.num_frames
    sidecar = json.loads(r.sidecar.read_text())
    assert sidecar["degraded"][-1] == "frames 33 → 17 after OOM while denoising" and sidecar["num_frames"] == 17
    assert sidecar["attempts"] == 4 and len(sidecar["ooms"]) == 3


def test_when_the_ladder_runs_out_the_error_is_clear_and_nothing_is_written(tmp_path):
    guard = SimulatedGPU(get_model("tiny-wan"), 0, phases=("load",))
    with pytest.raises(DoesNotFit) as e:
        localvideo.generate(PROMPT, model="tiny-wan", seed=3, steps=2, output=str(tmp_path / "x.mp4"), hardware=CPU,
                            cache=PipelineCache(8 * 10**9), guard=guard)
    assert "ran out of memory while loading 6 times" in e.value.message and e.value.hint
    assert list(tmp_path.iterdir()) == []


def test_an_error_that_only_mentions_memory_is_not_treated_as_oom(tmp_path):
    class Zoom(SimulatedGPU):
        def check(self, phase, plan, step=None):
            if phase == "denoise":
                raise RuntimeError("zoom: out of memory-mapped frames")  # the old app classed this as OOM

    with pytest.raises(RuntimeError, match="zoom"):
        localvideo.generate(PROMPT, model="tiny-wan", seed=3, steps=2, output=str(tmp_path / "z.mp4"), hardware=CPU,
                            cache=PipelineCache(8 * 10**9), guard=Zoom(get_model("tiny-wan"), 0))
    assert list(tmp_path.iterdir()) == []


def test_decode_that_fails_for_good_keeps_latents_and_localvideo_decode_finishes_it(tmp_path, lv_home):
    spec = get_model("tiny-ltx")
    guard = SimulatedGPU(spec, 0, phases=("decode",))
    cache = PipelineCache(8 * 10**9)
    with pytest.raises(GenerationFailed) as e:
        localvideo.generate(PROMPT, model="tiny-ltx", seed=8, steps=2, output=str(tmp_path / "late.mp4"), hardware=CPU,
                            cache=cache, guard=guard)
    latents = e.value.details["latents"]
    assert f"localvideo decode {latents}" in e.value.hint and not (tmp_path / "late.mp4").exists()
    r = run_cli("decode", latents, "--output", str(tmp_path / "late.mp4"), "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["frames"] == 17 and d["seed"] == 8 and any("saved latents" in x for x in d["degraded"])
    # identical to a run that decoded (tiled) in one go: the saved generator state reproduces LTX's decode noise
    clean = localvideo.generate(PROMPT, model="tiny-ltx", seed=8, steps=2, vae_tiling=True, hardware=CPU,
                                output=str(tmp_path / "clean.mp4"), cache=cache)
    assert np.array_equal(read_frames(tmp_path / "late.mp4"), read_frames(clean.path))
    assert json.loads(probe(tmp_path / "late.mp4").tags["localvideo"])["decoded_from"] == latents


def test_latents_are_removed_after_a_successful_run_unless_kept(tmp_path, lv_home):
    cache = PipelineCache(8 * 10**9)
    r = localvideo.generate(PROMPT, model="tiny-wan", seed=1, steps=1, output=str(tmp_path / "a.mp4"), hardware=CPU,
                            cache=cache)
    assert not (lv_home / "latents" / "a.latents.safetensors").exists()
    localvideo.generate(PROMPT, model="tiny-wan", seed=1, steps=1, output=str(tmp_path / "b.mp4"), hardware=CPU,
                        cache=cache, keep_latents=True)
    assert (lv_home / "latents" / "b.latents.safetensors").exists() and r.path.exists()


def test_decode_of_a_file_that_is_not_latents_is_a_clear_error(tmp_path):
    bogus = tmp_path / "x.latents.safetensors"
    bogus.write_bytes(b"not safetensors")
    r = run_cli("decode", str(bogus))
    assert r.returncode != 0 and "not a localvideo latents file" in r.stderr and "Traceback" not in r.stderr


RUN_AND_WAIT = """
import sys, time
import torch
import localvideo
from localvideo.errors import GenerationFailed
from localvideo.hardware import Hardware
from localvideo.runtime.runner import MemoryGuard

class Decode(MemoryGuard):
    def check(self, phase, plan, step=None):
        if phase != "decode":
            return
        if sys.argv[1] == "block":  # the latents are saved; the VAE is decoding: stop here until killed
            print("ready", flush=True)
            time.sleep(600)
        raise torch.OutOfMemoryError("CUDA out of memory (simulated decode)")

try:
    localvideo.generate("a paper boat", model="tiny-wan", seed=5, steps=1, width=64, height=64, num_frames=5,
                        output=sys.argv[2], hardware=Hardware.assumed(None, ram_gb=16), guard=Decode())
except GenerationFailed as e:
    print("ready", e.details["latents"], e.hint, flush=True)
    time.sleep(600)  # and then killed, before anyone decoded them
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="judges processes through /proc")
def test_latents_of_a_run_killed_while_decoding_are_swept_but_latents_a_failed_decode_promised_survive(
        tmp_path, lv_home):
    """Two real runs, both SIGKILLed after their latents were saved: one in the middle of its decode (nobody was
    told of its latents: swept), one after its decode failed for good and told the user to finish with `localvideo
    decode FILE` (those latents are the user's: they survive the sweep, and decode)."""
    import os
    import signal
    import subprocess

    from localvideo.runtime import leftovers

    folder = lv_home / "latents"
    runs = {how: subprocess.Popen([sys.executable, "-c", RUN_AND_WAIT, how, str(tmp_path / f"{how}-lat.mp4")],
                                  stdout=subprocess.PIPE, text=True) for how in ("block", "fail")}
    try:
        lines = {how: p.stdout.readline().split(" ", 2) for how, p in runs.items()}
        assert lines["block"] == ["ready\n"] and lines["fail"][0] == "ready"
        promised = lines["fail"][1]
        assert promised == str(folder / "fail-lat.latents.safetensors")
        assert f"localvideo decode {promised}" in lines["fail"][2]
        killed = folder / "block-lat.latents.safetensors"
        assert killed.is_file() and os.path.isfile(promised)
        claims = sorted(p.name for p in folder.glob(".*-lat.latents.safetensors.inuse-*"))
        assert len(claims) == 1 and f"_{runs['block'].pid}_" in claims[0], "the failed run ended its claim"
        assert not [r for r in leftovers.sweep([folder]) if "-lat." in r.path.name], "alive: never swept"
        assert killed.is_file()
    finally:
        for p in runs.values():
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
    removed = [r for r in leftovers.sweep([folder]) if "-lat." in r.path.name]
    assert {(r.kind, r.path.name) for r in removed} == {("latents of a killed run", killed.name),
                                                        ("claim on latents", claims[0])}
    assert not killed.exists() and not list(folder.glob(".block-lat.*"))
    assert os.path.isfile(promised), "promised to the user: kept"
    r = run_cli("decode", promised, "--output", str(tmp_path / "finished.mp4"), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["frames"] == 5


def test_kept_latents_are_released_to_the_user(tmp_path, lv_home):
    from localvideo.runtime import leftovers

    localvideo.generate(PROMPT, model="tiny-wan", seed=1, steps=1, width=64, height=64, num_frames=5,
                        output=str(tmp_path / "kept-lat.mp4"), hardware=CPU, keep_latents=True)
    folder = lv_home / "latents"
    assert (folder / "kept-lat.latents.safetensors").is_file()
    assert not list(folder.glob(".kept-lat.*")), "no claim left: they are the user's"
    localvideo.generate(PROMPT, model="tiny-wan", seed=1, steps=1, width=64, height=64, num_frames=5,
                        output=str(tmp_path / "gone-lat.mp4"), hardware=CPU)
    assert not list(folder.glob("*gone-lat*")) and not list(folder.glob(".gone-lat*")), "latents and claim removed"
    assert all(r.path.name != "kept-lat.latents.safetensors" for r in leftovers.sweep([folder]))
