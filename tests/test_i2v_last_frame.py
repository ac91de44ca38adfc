"""Image-to-video from a first AND a last frame, end to end, on tiny-wan-flf2v: a real diffusers
``WanImageToVideoPipeline`` shaped like Wan 2.1 FLF2V (tiny CLIP vision encoder, transformer with the image branch),
with random weights.

In Wan 2.1 I2V / FLF2V the images do not replace latents (unlike Wan 2.2 TI2V, see tests/test_i2v.py): they reach the
transformer as extra input channels (a frame mask and the VAE latents of the video [first, zeros…, last]) and as CLIP
features for the image cross-attention. These tests record what the transformer is given and check it against what
the two fitted images make through the same VAE and CLIP encoder.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

import localvideo
from conftest import run_cli
from localvideo.catalog import CONFIGS_DIR, get_model
from localvideo.errors import InvalidRequest
from localvideo.hardware import Hardware
from localvideo.media.probe import probe, read_frames
from localvideo.runtime.cache import PipelineCache
from localvideo.runtime.conditioning import fit_image

CPU = Hardware.assumed(None, ram_gb=16)
PROMPT = "the cat walks out of frame and a cup of coffee appears"
MODEL = "tiny-wan-flf2v"
W, H, F = 96, 64, 9  # 9 frames → 3 latent frames: first, one in between, last


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from skimage import data

    d = tmp_path_factory.mktemp("photos")
    Image.fromarray(data.chelsea()).save(d / "first.png")  # 451x300, a cat
    Image.fromarray(data.coffee()).save(d / "last.jpg")  # 600x400
    Image.fromarray(data.astronaut()).save(d / "other_last.png")  # 512x512
    return d


@pytest.fixture(scope="module")
def cache():
    return PipelineCache(8 * 10**9)


@pytest.fixture(scope="module")
def reference(lv_home):
    """The same tiny model loaded separately (same weights as the one generate() uses): its VAE and CLIP encoder
    compute what the conditioning should be."""
    from diffusers import DiffusionPipeline

    from localvideo.runtime import store
    from localvideo.settings import Settings

    folder = store.locate(get_model(MODEL), Settings(home=lv_home))
    return DiffusionPipeline.from_pretrained(folder, local_files_only=True)


def _fitted(path, width=W, height=H) -> Image.Image:
    return fit_image(Image.open(path).convert("RGB"), width, height)[0]


@pytest.fixture(scope="module")
def runs(photos, cache, lv_home, tmp_path_factory):
    """Two runs, same seed and first frame, different last frames; with what the transformer was given in each
    (its hidden_states and encoder_hidden_states_image, per forward call)."""
    from diffusers import WanTransformer3DModel

    out = tmp_path_factory.mktemp("flf2v")
    forward = WanTransformer3DModel.forward
    calls: list[dict] = []

    def recording(self, hidden_states, *args, encoder_hidden_states_image=None, **kwargs):
        calls.append({"hidden_states": hidden_states.detach().clone(),
                      "image": None if encoder_hidden_states_image is None else
                      encoder_hidden_states_image.detach().clone()})
        return forward(self, hidden_states, *args, encoder_hidden_states_image=encoder_hidden_states_image,
                       **kwargs)

    results = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOCALVIDEO_HOME", str(lv_home))  # as conftest's per-test fixture does (not active for modules)
        mp.setattr(WanTransformer3DModel, "forward", recording)
        for last in ("last.jpg", "other_last.png"):
            calls.clear()
            r = localvideo.generate(PROMPT, model=MODEL, image=str(photos / "first.png"),
                                    last_image=str(photos / last), width=W, height=H, num_frames=F, seed=5, steps=2,
                                    output=str(out / f"{last}.mp4"), hardware=CPU, cache=cache)
            results[last] = (r, list(calls))
    return results


def test_first_and_last_frame_make_a_video_with_both_images_recorded(runs, photos):
    r, _ = runs["last.jpg"]
    info = probe(r.path)  # PyAV decodes every frame
    assert (info.frames, info.width, info.height) == (r.plan.num_frames, W, H) == (F, W, H)
    assert r.plan.task == "i2v" and r.plan.last_image == str(photos / "last.jpg")
    tagged = json.loads(info.tags["localvideo"])
    sidecar = json.loads(r.sidecar.read_text())
    for meta in (tagged, sidecar):
        assert meta["task"] == "i2v" and meta["pipeline"] == "WanImageToVideoPipeline" and meta["random_weights"]
        first, last = meta["input_image"], meta["last_image"]
        assert first["sha256"] == hashlib.sha256((photos / "first.png").read_bytes()).hexdigest()
        assert last["sha256"] == hashlib.sha256((photos / "last.jpg").read_bytes()).hexdigest()
        assert (last["name"], last["width"], last["height"]) == ("last.jpg", 600, 400)
        assert last["fit"] == "image 600x400 resized to 96x64"  # already 3:2
        assert first["fit"] == "image 451x300 center-cropped to 450x300 (aspect 96:64) and resized to 96x64"


def _expected_condition(pipe, first: Image.Image, last: Image.Image, frames: int) -> torch.Tensor:
    """Normalized VAE latents of the video [first, zeros…, last], computed here, outside the pipeline."""
    vp = pipe.video_processor
    x0 = vp.preprocess(first, height=first.height, width=first.width).unsqueeze(2)
    x1 = vp.preprocess(last, height=last.height, width=last.width).unsqueeze(2)
    video = torch.cat([x0, x0.new_zeros(1, 3, frames - 2, first.height, first.width), x1], dim=2)
    with torch.inference_mode():
        z = pipe.vae.encode(video).latent_dist.mode()
    cfg = pipe.vae.config
    mean = torch.tensor(cfg.latents_mean).view(1, cfg.z_dim, 1, 1, 1)
    std = torch.tensor(cfg.latents_std).view(1, cfg.z_dim, 1, 1, 1)
    return (z - mean) / std


def _clip_features(pipe, images: list[Image.Image]) -> torch.Tensor:
    with torch.inference_mode():
        pixels = pipe.image_processor(images=images, return_tensors="pt")
        return pipe.image_encoder(**pixels, output_hidden_states=True).hidden_states[-2]


def test_the_last_image_conditions_the_transformer(runs, photos, reference):
    (a, calls_a), (b, calls_b) = runs["last.jpg"], runs["other_last.png"]
    assert len(calls_a) == len(calls_b) == 2 * 2, "2 steps x (cond + uncond), one forward each"
    first_a, first_b = calls_a[0], calls_b[0]  # the first step's conditional forward

    lat_frames = (F - 1) // 4 + 1
    for seen in (first_a, first_b):
        x = seen["hidden_states"]
        assert x.shape == (1, 16 + 4 + 16, lat_frames, H // 8, W // 8)  # noise | frame mask | image latents
        mask = x[:, 16:20]  # 4 pixel frames per latent frame
        assert torch.all(mask[:, :, 0] == 1), "the first frame is given"
        assert torch.all(mask[:, :, 1:-1] == 0), "frames in between are generated"
        assert torch.all(mask[:, :3, -1] == 0) and torch.all(mask[:, 3, -1] == 1), "the very last frame is given"

    cond_a, cond_b = first_a["hidden_states"][:, 20:], first_b["hidden_states"][:, 20:]
    first_img = _fitted(photos / "first.png")
    expected_a = _expected_condition(reference, first_img, _fitted(photos / "last.jpg"), F)
    expected_b = _expected_condition(reference, first_img, _fitted(photos / "other_last.png"), F)
    assert torch.allclose(cond_a, expected_a, atol=1e-5) and torch.allclose(cond_b, expected_b, atol=1e-5)
    # the VAE is causal: only the last latent frame sees the last image
    assert torch.equal(cond_a[:, :, :-1], cond_b[:, :, :-1])
    assert not torch.allclose(cond_a[:, :, -1], cond_b[:, :, -1], atol=1e-3)
    # same seed: the same starting noise
    assert torch.equal(first_a["hidden_states"][:, :16], first_b["hidden_states"][:, :16])

    # the CLIP encoder sees two images, first and last
    clip_a, clip_b = first_a["image"], first_b["image"]
    assert clip_a.shape == (2, reference.transformer.config.pos_embed_seq_len // 2, 16)
    assert torch.allclose(clip_a, _clip_features(reference, [first_img, _fitted(photos / "last.jpg")]), atol=1e-5)
    assert torch.equal(clip_a[0], clip_b[0]) and not torch.allclose(clip_a[1], clip_b[1], atol=1e-3)

    # and so the videos differ (same seed, same first frame, another last frame)
    fa, fb = read_frames(a.path), read_frames(b.path)
    assert fa.shape == fb.shape == (F, H, W, 3) and not np.array_equal(fa, fb)


def test_models_without_last_frame_support_refuse_it_clearly(photos, tmp_path):
    with pytest.raises(InvalidRequest) as e:
        localvideo.generate(PROMPT, model="tiny-wan", image=str(photos / "first.png"),
                            last_image=str(photos / "last.jpg"), output=str(tmp_path / "x.mp4"), hardware=CPU,
                            cache=PipelineCache(1))
    assert "cannot condition on a last frame" in e.value.message and MODEL in e.value.hint
    with pytest.raises(InvalidRequest) as e:  # and this one cannot run without it
        localvideo.generate(PROMPT, model=MODEL, image=str(photos / "first.png"), output=str(tmp_path / "y.mp4"),
                            hardware=CPU, cache=PipelineCache(1))
    assert "last frame" in e.value.message and "--last-image" in e.value.hint
    assert list(tmp_path.iterdir()) == []


def test_a_first_and_a_last_frame_need_at_least_two_frames():
    from localvideo.planner import plan
    from localvideo.request import GenerationRequest

    spec = get_model(MODEL)
    p = plan(GenerationRequest(prompt="x", model=MODEL, image="a.png", last_image="b.png", num_frames=1), spec, CPU)
    assert p.num_frames == 5 and any("a first and a last frame" in n for n in p.notes)


def test_wan21_image_position_embedding_decides_first_only_or_first_and_last():
    """Why wan2.1-i2v-14b-480p does not take a last frame and tiny-wan-flf2v needs one, on real diffusers code.

    Wan2.1-I2V has no ``pos_embed_seq_len``: diffusers encodes [first, last] as a CLIP batch of 2 and fails against
    the text batch of 1. FLF2V's position embedding spans two CLIP sequences, so a first frame alone fails."""
    from diffusers import WanImageToVideoPipeline, WanTransformer3DModel

    from localvideo.runtime.tiny import make_tiny_pipeline

    real = json.loads((CONFIGS_DIR / get_model("wan2.1-i2v-14b-480p").config_dir / "transformer.json").read_text())
    assert real["image_dim"] and real["pos_embed_seq_len"] is None and not get_model("wan2.1-i2v-14b-480p") \
        .supports_last_image
    flf2v = make_tiny_pipeline("wan-flf2v")
    cfg = dict(flf2v.transformer.config)
    assert cfg["image_dim"] == flf2v.image_encoder.config.hidden_size and cfg["in_channels"] == 36
    assert cfg["added_kv_proj_dim"] == cfg["num_attention_heads"] * cfg["attention_head_dim"]
    torch.manual_seed(0)
    i2v = WanImageToVideoPipeline(**{**flf2v.components, "transformer": WanTransformer3DModel.from_config(
        {**cfg, "pos_embed_seq_len": None})})
    first, last = Image.new("RGB", (32, 32), (200, 30, 30)), Image.new("RGB", (32, 32), (30, 30, 200))

    def run(pipe, **images):
        pipe.set_progress_bar_config(disable=True)
        with torch.inference_mode():
            return pipe(prompt="x", height=32, width=32, num_frames=5, num_inference_steps=1, output_type="latent",
                        generator=torch.Generator().manual_seed(0), **images).frames

    assert run(i2v, image=first).shape == (1, 16, 2, 4, 4)
    with pytest.raises(RuntimeError, match="Sizes of tensors must match"):
        run(i2v, image=first, last_image=last)
    assert run(flf2v, image=first, last_image=last).shape == (1, 16, 2, 4, 4)
    with pytest.raises(RuntimeError, match="shape"):
        run(flf2v, image=first)


def test_cli_generate_with_first_and_last_image(photos, tmp_path):
    out = tmp_path / "cli.mp4"
    r = run_cli("generate", PROMPT, "--model", MODEL, "--image", str(photos / "first.png"), "--last-image",
                str(photos / "last.jpg"), "--steps", "1", "--frames", "5", "--width", "64", "--height", "48",
                "--seed", "3", "--output", str(out), "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["metadata"]["task"] == "i2v" and d["metadata"]["last_image"]["name"] == "last.jpg"
    assert "resized to 64x48" in d["metadata"]["last_image"]["fit"]
    assert probe(out).frames == 5


def test_api_image_to_video_with_both_uploads(api, server):
    import io

    from _live import sse_jobs

    def png(color) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", (96, 64), color).save(buf, "PNG")
        return buf.getvalue()

    params = json.dumps({"prompt": "red turns blue", "model": MODEL, "steps": 1, "num_frames": 5, "width": 64,
                         "height": 48})
    r = api.post("/v1/jobs/image-to-video", data={"params": params},
                 files={"image": ("a.png", png((200, 30, 30)), "image/png"),
                        "last_image": ("b.png", png((30, 30, 200)), "image/png")})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["kind"] == "image-to-video" and job["request"]["last_image"] == "uploaded:last_image.png"
    final = sse_jobs(api, job["id"])[-1][2]
    assert final["state"] == "succeeded", final
    assert final["result"]["frames"] == 5 and (final["result"]["width"], final["result"]["height"]) == (64, 48)
    stored = server.home / "uploads" / job["id"] / "last_image.png"
    assert stored.read_bytes() == png((30, 30, 200))
    assert api.delete(f"/v1/jobs/{job['id']}").status_code == 204

    r = api.post("/v1/jobs/image-to-video", data={"params": params},
                 files={"image": ("a.png", png((200, 30, 30)), "image/png")})
    assert r.status_code == 422 and "last frame" in r.json()["message"]


def test_a_story_refuses_a_model_that_needs_a_last_frame_per_clip(photos):
    from localvideo.story import plan_story

    with pytest.raises(InvalidRequest, match="first and a last frame"):
        plan_story("[1s] a cat\n[1s] a cup of coffee", model=MODEL, image=str(photos / "first.png"), hardware=CPU)
