"""Planner table tests: snapping, memory strategy per GPU size, refusals with reasons. Pure: no torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from localvideo.catalog import all_models, get_model
from localvideo.errors import DoesNotFit, InvalidRequest
from localvideo.hardware import GB, Hardware
from localvideo.planner import GPU_STRATEGIES, estimate_memory, plan, snap_frames
from localvideo.request import GenerationRequest

ORDER = {s: i for i, s in enumerate(GPU_STRATEGIES)}
GPU_SIZES = [8, 12, 16, 24, 48, 80]


def req(model: str, **kw) -> GenerationRequest:
    return GenerationRequest(prompt="a lighthouse in a storm", model=model, seed=1, **kw)


def hw(vram: float | None, ram: float = 64) -> Hardware:
    return Hardware.assumed(vram, ram_gb=ram)


def try_plan(model: str, vram: float | None, ram: float = 64, **kw):
    try:
        return plan(req(model, **kw), get_model(model), hw(vram, ram))
    except DoesNotFit as e:
        return e


# -- frame and size rules ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("model,asked,expected", [
    ("wan2.1-t2v-1.3b", 80, 81), ("wan2.1-t2v-1.3b", 81, 81), ("wan2.1-t2v-1.3b", 2, 1), ("wan2.1-t2v-1.3b", 3, 5),
    ("ltx-video-2b", 100, 97), ("ltx-video-2b", 120, 121), ("ltx-video-2b", 8, 9),
    ("cogvideox-2b", 48, 49), ("mochi-1", 84, 85), ("hunyuanvideo", 60, 61),
])
def test_frames_snap_to_the_models_rule_and_say_so(model, asked, expected):
    p = plan(req(model, num_frames=asked), get_model(model), hw(80))
    assert p.num_frames == expected
    assert get_model(model).frame_rule.valid(p.num_frames)
    changed = [n for n in p.notes if n.startswith("frames")]
    assert bool(changed) == (asked != expected)
    if changed:
        assert f"{asked} → {expected}" in changed[0]


@pytest.mark.parametrize("model", [m.id for m in all_models()])
def test_every_snapped_frame_count_is_valid_and_within_max(model):
    m = get_model(model)
    for n in range(1, m.max_frames + 1):
        s = snap_frames(m, n)
        assert m.frame_rule.valid(s) and 1 <= s <= m.max_frames


@pytest.mark.parametrize("model,w,h,ew,eh", [
    ("wan2.1-t2v-1.3b", 850, 470, 848, 464), ("ltx-video-2b", 700, 500, 704, 512), ("wan2.2-ti2v-5b", 1280, 720, 1280, 704),
    ("cogvideox-2b", 720, 480, 720, 480), ("ltx-video-2b", 10, 10, 32, 32),
])
def test_sizes_snap_to_the_models_multiple(model, w, h, ew, eh):
    p = plan(req(model, width=w, height=h), get_model(model), hw(80))
    assert (p.width, p.height) == (ew, eh)
    assert bool([n for n in p.notes if n.startswith("size")]) == ((w, h) != (ew, eh))


def test_fixed_size_model_keeps_its_native_size_and_says_so():
    p = plan(req("cogvideox-5b-i2v", width=640, height=640, image="photo.jpg"), get_model("cogvideox-5b-i2v"), hw(80))
    assert (p.width, p.height) == (720, 480) and any("native size" in n for n in p.notes)


# -- strategy per hardware -------------------------------------------------------------------------------------

REAL_T2V = ["wan2.1-t2v-1.3b", "wan2.1-t2v-14b", "wan2.2-ti2v-5b", "ltx-video-2b", "ltx-video-13b", "cogvideox-2b",
            "cogvideox-5b", "hunyuanvideo", "mochi-1"]


@pytest.mark.parametrize("model", REAL_T2V)
def test_more_vram_never_gives_a_slower_strategy(model):
    prev = None
    for gb in GPU_SIZES:
        p = try_plan(model, gb)
        if isinstance(p, DoesNotFit):
            assert prev is None, f"{model} fit on a smaller GPU but not on {gb} GB"
            continue
        rank = (ORDER[p.strategy], p.vae_tiling)
        if prev is not None:
            assert rank <= prev, f"{model}: {gb} GB chose {p.strategy} after {prev}"
        prev = rank
        assert p.estimate.peak_device_bytes <= p.budget_device_bytes
        assert p.estimate.peak_host_bytes <= p.budget_host_bytes


@pytest.mark.parametrize("gb,model,expected", [
    (80, "wan2.1-t2v-1.3b", "resident"), (24, "wan2.1-t2v-1.3b", "resident"),
    (12, "wan2.1-t2v-1.3b", {"model_offload", "group_offload"}), (8, "wan2.1-t2v-1.3b", "group_offload"),
    (80, "wan2.1-t2v-14b", "resident"), (24, "wan2.1-t2v-14b", {"group_offload", "sequential_offload"}),
    (80, "cogvideox-5b", "resident"), (16, "cogvideox-5b", {"model_offload", "group_offload"}),
    (80, "hunyuanvideo", "resident"), (24, "hunyuanvideo", {"group_offload", "sequential_offload"}),
    (48, "ltx-video-2b", "resident"),
])
def test_sensible_strategy_for_known_setups(gb, model, expected):
    p = try_plan(model, gb)
    assert not isinstance(p, DoesNotFit), str(p)
    assert p.strategy in ({expected} if isinstance(expected, str) else expected), (gb, model, p.strategy)


def test_small_models_fit_common_consumer_gpus():
    for gb in (8, 12, 16, 24):
        assert not isinstance(try_plan("wan2.1-t2v-1.3b", gb), DoesNotFit)
        assert not isinstance(try_plan("cogvideox-2b", gb), DoesNotFit)


def test_cpu_only_plans_on_cpu_and_warns_for_real_models():
    p = plan(req("wan2.1-t2v-1.3b", width=480, height=320, num_frames=17), get_model("wan2.1-t2v-1.3b"), hw(None))
    assert p.device == "cpu" and p.strategy == "resident" and p.dtype == "bfloat16"
    assert any("hours" in w for w in p.warnings)
    t = plan(req("tiny-wan"), get_model("tiny-wan"), hw(None))
    assert t.device == "cpu" and t.dtype == "float32" and any("RANDOM WEIGHTS" in w for w in t.warnings)


def test_on_a_gpu_this_torch_cannot_use_the_cpu_warning_says_so_and_how_to_fix_it_not_no_gpu():
    from dataclasses import replace

    from localvideo.hardware import GPU

    rtx = GPU(0, "NVIDIA GeForce RTX 4090", 24 * 2**30, 23 * 2**30, "cuda", "8.9")
    note = ("NVIDIA GeForce RTX 4090 found, but this torch (2.9.0+cpu) has no CUDA: running on the CPU. Install a "
            "CUDA build of torch: pip install torch --index-url https://download.pytorch.org/whl/cuXXX")
    machine = replace(hw(None), unusable_gpus=(rtx,), notes=("A CPU limit applies: 4 of the host's 8 CPUs.", note))
    p = plan(req("wan2.1-t2v-1.3b", width=480, height=320, num_frames=17), get_model("wan2.1-t2v-1.3b"), machine)
    assert p.device == "cpu"
    warning = next(w for w in p.warnings if "hours" in w)
    assert warning == note + " A real model on the CPU takes hours per clip."  # the probe's note, not "No GPU"
    # a Hardware built without the note still names the GPU and says this torch cannot use it
    bare = plan(req("wan2.1-t2v-1.3b", width=480, height=320, num_frames=17), get_model("wan2.1-t2v-1.3b"),
                replace(hw(None), unusable_gpus=(rtx,)))
    warning = next(w for w in bare.warnings if "hours" in w)
    assert warning.startswith("NVIDIA GeForce RTX 4090 found, but this torch cannot use it") and "No GPU" not in warning
    assert not any("GPU" in w for w in plan(req("tiny-wan"), get_model("tiny-wan"), machine).warnings)


def test_vae_tiling_turns_on_when_decoding_at_once_would_not_fit():
    m = get_model("hunyuanvideo")
    untiled = estimate_memory(m, 1280, 720, 129, "resident", False)
    tiled = estimate_memory(m, 1280, 720, 129, "resident", True)
    assert tiled.vae_activation_bytes < untiled.vae_activation_bytes / 10
    p = try_plan("hunyuanvideo", 80)
    assert p.vae_tiling


def test_offload_is_limited_by_system_ram_not_only_vram():
    # a 14B model on a 24 GB GPU must offload, and the offloaded weights must fit in RAM
    e = try_plan("wan2.1-t2v-14b", 24, ram=16)
    assert isinstance(e, DoesNotFit) and "RAM" in e.message
    assert not isinstance(try_plan("wan2.1-t2v-14b", 24, ram=128), DoesNotFit)


def test_memory_estimate_grows_with_frames_and_size():
    m = get_model("wan2.1-t2v-1.3b")
    small = estimate_memory(m, 480, 320, 33, "resident", False)
    big = estimate_memory(m, 832, 480, 81, "resident", False)
    assert big.transformer_activation_bytes > 4 * small.transformer_activation_bytes
    assert big.weights_bytes == small.weights_bytes == pytest.approx(
        1.419e9 * 2 + 5.681e9 * 2 + 0.127e9 * 4, rel=0.01)


def test_impossible_request_is_refused_with_reason_and_suggestion():
    e = try_plan("hunyuanvideo", 8, ram=24)
    assert isinstance(e, DoesNotFit)
    assert "does not fit" in e.message and "GB" in e.message
    assert e.hint and e.hint.startswith("Try")


def test_refusal_suggests_fewer_frames_when_that_would_fit():
    # wan 1.3B at 81 frames 832x480 does not fit in 3 GB even layer by layer; fewer frames do
    e = try_plan("wan2.1-t2v-1.3b", 3, ram=64)
    assert isinstance(e, DoesNotFit) and e.hint.startswith("Try --frames")
    frames = int(e.hint.split("--frames ")[1].split()[0])
    assert f"(API: num_frames {frames})" in e.hint  # REST users are told the field
    assert get_model("wan2.1-t2v-1.3b").frame_rule.valid(frames) and frames < 81
    assert not isinstance(try_plan("wan2.1-t2v-1.3b", 3, num_frames=frames), DoesNotFit)
    # and a smaller size when even one latent frame is too much
    e = try_plan("wan2.1-t2v-1.3b", 2.5, ram=64)
    assert isinstance(e, DoesNotFit) and "--width" in e.hint


@pytest.mark.parametrize("fields,word", [
    ({"num_frames": 500}, "frames"), ({"width": 4096, "height": 4096}, "larger"),
])
def test_requests_beyond_the_model_are_refused(fields, word):
    with pytest.raises(InvalidRequest) as e:
        plan(req("wan2.1-t2v-1.3b", **fields), get_model("wan2.1-t2v-1.3b"), hw(80))
    assert word in e.value.message


def test_forcing_an_accelerator_strategy_on_cpu_is_refused():
    with pytest.raises(InvalidRequest, match="needs a GPU"):
        plan(req("tiny-wan", strategy="model_offload"), get_model("tiny-wan"), hw(None))


def test_image_only_model_refuses_text_to_video():
    with pytest.raises(InvalidRequest, match="i2v"):
        plan(req("wan2.1-i2v-14b-480p"), get_model("wan2.1-i2v-14b-480p"), hw(80), task="t2v")
    with pytest.raises(InvalidRequest, match="from an image"):
        plan(req("wan2.1-i2v-14b-480p"), get_model("wan2.1-i2v-14b-480p"), hw(80), task="i2v")


def test_image_to_video_follows_the_image_aspect_and_uses_the_i2v_pipeline():
    m = get_model("wan2.2-ti2v-5b")
    p = plan(req(m.id, image="portrait.jpg"), m, hw(80), image_size=(1080, 1920))
    assert p.task == "i2v" and p.pipeline == "WanImageToVideoPipeline"
    assert p.height > p.width and p.width % 32 == 0 and p.height % 32 == 0
    assert abs(p.width * p.height - 1280 * 704) / (1280 * 704) < 0.1
    assert any("aspect ratio" in n for n in p.notes)
    t2v = plan(req(m.id), m, hw(80))
    assert t2v.task == "t2v" and t2v.pipeline == "WanPipeline"


def test_last_frame_only_where_the_model_supports_it():
    with pytest.raises(InvalidRequest, match="last frame"):
        plan(req("wan2.2-ti2v-5b", image="a.jpg", last_image="b.jpg"), get_model("wan2.2-ti2v-5b"), hw(80))
    with pytest.raises(InvalidRequest, match="last frame"):  # Wan 2.1 I2V: first frame only (test_i2v_last_frame.py)
        plan(req("wan2.1-i2v-14b-480p", image="a.jpg", last_image="b.jpg"), get_model("wan2.1-i2v-14b-480p"), hw(80))
    p = plan(req("tiny-wan-flf2v", image="a.jpg", last_image="b.jpg"), get_model("tiny-wan-flf2v"), hw(80))
    assert p.last_image == "b.jpg"
    with pytest.raises(InvalidRequest, match="without a first frame"):
        plan(req("tiny-wan-flf2v", last_image="b.jpg"), get_model("tiny-wan-flf2v"), hw(80))


def test_plan_is_json_serialisable_and_explains_itself():
    import json

    p = plan(req("ltx-video-2b", num_frames=100), get_model("ltx-video-2b"), hw(24))
    d = json.loads(json.dumps(p.to_dict()))
    assert d["num_frames"] == 97 and d["strategy"] == p.strategy and d["estimate"]["unit"] == "GB"
    text = "\n".join(p.explain())
    assert "strategy" in text and "97" in text and "changed" in text


def test_distilled_timesteps_only_apply_at_their_step_count():
    m = get_model("ltx-video-13b")
    assert "timesteps" in plan(req(m.id), m, hw(80)).call_kwargs
    p = plan(req(m.id, steps=20), m, hw(80))
    assert "timesteps" not in p.call_kwargs and any("timesteps" in n for n in p.notes)


def test_seed_is_chosen_and_recorded_when_not_given():
    m = get_model("tiny-wan")
    p = plan(GenerationRequest(prompt="x", model="tiny-wan"), m, hw(None))
    assert isinstance(p.seed, int) and 0 <= p.seed < 2**32


def test_planning_does_not_import_torch():
    code = ("import sys; from localvideo.planner import plan; from localvideo.catalog import get_model; "
            "from localvideo.hardware import Hardware; from localvideo.request import GenerationRequest; "
            "plan(GenerationRequest(prompt='x', model='wan2.1-t2v-14b'), get_model('wan2.1-t2v-14b'), "
            "Hardware.assumed(80)); print('torch' in sys.modules, 'diffusers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False False"


# -- "does it fit at its defaults" (doctor, GET /v1/models) --------------------------------------------------------

def test_plan_at_defaults_gives_each_model_the_inputs_it_needs():
    from localvideo.planner import plan_at_defaults

    big = hw(80, 256)
    for spec in all_models():  # every model fits a big GPU at its defaults: no "pass the image / last frame too"
        p = plan_at_defaults(spec, big)
        assert p.task == ("t2v" if "t2v" in spec.tasks else spec.tasks[0]), spec.id
        assert (p.width, p.height, p.num_frames) == (spec.defaults.width, spec.defaults.height,
                                                     spec.defaults.frames), spec.id
    flf2v = plan_at_defaults(get_model("tiny-wan-flf2v"), hw(None, 16))
    assert flf2v.task == "i2v"
    with pytest.raises(InvalidRequest, match="pass the last frame too"):  # what the same plan says without it
        plan(req("tiny-wan-flf2v", image="first.png"), get_model("tiny-wan-flf2v"), hw(None, 16))
    with pytest.raises(DoesNotFit):  # and a model that does not fit still says so
        plan_at_defaults(get_model("hunyuanvideo"), hw(None, 16))
