"""Image-to-video with tiny real pipelines: Wan (Wan2.2-TI2V style, first latent frame replaced by the image) and
LTX (LTXImageToVideoPipeline, first latent frame conditioned on the image).

With random weights the VAE is not a faithful autoencoder, so "close to the input image" is measured against what
this VAE makes of the image (its encode → decode round trip), and in latent space, where conditioning is exact.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import localvideo
from conftest import run_cli
from localvideo.catalog import get_model
from localvideo.errors import InvalidRequest
from localvideo.hardware import Hardware
from localvideo.media.probe import probe, read_frames
from localvideo.runtime.cache import PipelineCache
from localvideo.runtime.conditioning import fit_image

CPU = Hardware.assumed(None, ram_gb=16)
PROMPT = "the cat turns its head and blinks"


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from skimage import data

    d = tmp_path_factory.mktemp("photos")
    Image.fromarray(data.chelsea()).save(d / "chelsea.png")  # 451x300, a cat
    Image.fromarray(data.coffee()).save(d / "coffee.jpg")  # 600x400
    Image.fromarray(data.chelsea()).convert("CMYK").save(d / "cmyk.jpg")
    rgba = Image.fromarray(data.astronaut()).convert("RGBA")
    rgba.putalpha(128)
    rgba.save(d / "alpha.png")
    rotated = Image.fromarray(data.coffee())  # stored landscape, EXIF says rotate 90° → portrait
    exif = rotated.getexif()
    exif[0x0112] = 6
    rotated.save(d / "exif.jpg", exif=exif)
    (d / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    Image.new("RGB", (1, 1)).save(d / "tiny.png")
    return d


@pytest.fixture(scope="module")
def cache():
    return PipelineCache(8 * 10**9)


def _vae_roundtrip_first_frame(pipe, family, image: Image.Image) -> np.ndarray:
    """What this (random) VAE makes of the image: encode it as a 1-frame video, decode, first frame in [0, 1]."""
    x = pipe.video_processor.preprocess(image, height=image.height, width=image.width).unsqueeze(2)
    with torch.inference_mode():
        lat = pipe.vae.encode(x.to(pipe.vae.dtype)).latent_dist.mode()
        kw = {"temb": None} if family == "ltx" and pipe.vae.config.timestep_conditioning else {}
        video = pipe.vae.decode(lat, return_dict=False, **kw)[0] if family != "ltx" else \
            pipe.vae.decode(lat, None, return_dict=False)[0]
    return pipe.video_processor.postprocess_video(video, output_type="np")[0][0]


@pytest.mark.parametrize("model", ["tiny-wan", "tiny-ltx"])
def test_first_frame_follows_the_input_image(model, photos, cache, tmp_path):
    r = localvideo.generate(PROMPT, model=model, image=str(photos / "chelsea.png"), width=128, height=96, seed=2,
                            steps=3, output=str(tmp_path / "i2v.mp4"), hardware=CPU, cache=cache)
    info = probe(r.path)
    assert (info.frames, info.width, info.height) == (r.plan.num_frames, 128, 96) and r.plan.task == "i2v"
    meta = json.loads(info.tags["localvideo"])
    assert meta["task"] == "i2v" and meta["input_image"]["sha256"] and "center-cropped" in meta["input_image"]["fit"]
    assert meta["pipeline"] == get_model(model).i2v_pipeline

    pipe = next(v for k, v in cache.pipelines() if k[0] == model)
    fitted, _ = fit_image(Image.open(photos / "chelsea.png").convert("RGB"), 128, 96)
    other, _ = fit_image(Image.open(photos / "coffee.jpg").convert("RGB"), 128, 96)
    first = read_frames(r.path)[0].astype(np.float32) / 255
    own = _vae_roundtrip_first_frame(pipe, get_model(model).family, fitted)
    foreign = _vae_roundtrip_first_frame(pipe, get_model(model).family, other)
    # the first frame is this image as the (random) VAE renders it, not any image
    assert np.abs(first - own).mean() < np.abs(first - foreign).mean()


def test_wan_first_latent_frame_is_exactly_the_input_image(photos, cache, tmp_path, lv_home):
    from localvideo.runtime import latents as latents_io

    r = localvideo.generate(PROMPT, model="tiny-wan", image=str(photos / "chelsea.png"), width=128, height=96, seed=4,
                            steps=3, output=str(tmp_path / "w.mp4"), hardware=CPU, cache=cache, keep_latents=True)
    saved = latents_io.load(lv_home / "latents" / "w.latents.safetensors")
    pipe = next(v for k, v in cache.pipelines() if k[0] == "tiny-wan")
    fitted, _ = fit_image(Image.open(photos / "chelsea.png").convert("RGB"), 128, 96)
    x = pipe.video_processor.preprocess(fitted, height=96, width=128).unsqueeze(2)
    with torch.inference_mode():
        z = pipe.vae.encode(x).latent_dist.mode()
    cfg = pipe.vae.config
    mean = torch.tensor(cfg.latents_mean).view(1, cfg.z_dim, 1, 1, 1)
    std = torch.tensor(cfg.latents_std).view(1, cfg.z_dim, 1, 1, 1)
    cond = (z - mean) / std
    assert torch.allclose(saved.latents[:, :, :1], cond, atol=1e-5)
    assert not torch.allclose(saved.latents[:, :, 1:2], cond, atol=1e-2)  # later frames are generated


def test_ltx_conditioned_first_frame_is_kept_through_denoising(photos, cache):
    from localvideo.planner import plan as make_plan
    from localvideo.request import GenerationRequest
    from localvideo.runtime import runner, store

    spec = get_model("tiny-ltx")
    p = make_plan(GenerationRequest(prompt=PROMPT, model="tiny-ltx", image=str(photos / "chelsea.png"), width=128,
                                    height=96, seed=4, steps=3), spec, CPU, image_size=(451, 300))
    pipe, _ = runner.get_pipeline(cache, spec, store.locate(spec), p)
    fitted, _ = fit_image(Image.open(photos / "chelsea.png").convert("RGB"), 128, 96)
    per_frame = (96 // 8) * (128 // 8)  # packed tokens of one latent frame (patch 1)
    seen = []

    def keep(_pipe, i, t, kw):
        seen.append(kw["latents"].clone())
        return {}

    with torch.inference_mode():
        pipe(image=fitted, generator=torch.Generator("cpu").manual_seed(4), callback_on_step_end=keep,
             callback_on_step_end_tensor_inputs=["latents"], **runner.call_kwargs(pipe, p))
    firsts = [s[:, :per_frame] for s in seen]
    rest = [s[:, per_frame:] for s in seen]
    assert all(torch.equal(firsts[0], f) for f in firsts[1:])  # the image frame is never denoised away
    assert not torch.allclose(rest[0], rest[-1])  # the other frames are


def test_size_follows_the_image_and_the_fit_is_recorded(photos, cache, tmp_path):
    r = localvideo.generate(PROMPT, model="tiny-wan", image=str(photos / "exif.jpg"), seed=1, steps=1,
                            output=str(tmp_path / "p.mp4"), hardware=CPU, cache=cache)
    # coffee is 600x400 stored; EXIF orientation 6 makes it a 400x600 portrait
    assert r.plan.height > r.plan.width and r.plan.width % 16 == 0
    meta = json.loads(r.sidecar.read_text())
    assert meta["input_image"]["width"] == 400 and meta["input_image"]["height"] == 600
    assert meta["input_image"]["exif_orientation"] == 6 and "aspect ratio" in " ".join(meta["notes"])


@pytest.mark.parametrize("name", ["cmyk.jpg", "alpha.png"])
def test_unusual_but_valid_images_work(name, photos, cache, tmp_path):
    r = localvideo.generate(PROMPT, model="tiny-ltx", image=str(photos / name), width=96, height=64, seed=1,
                            steps=1, output=str(tmp_path / "u.mp4"), hardware=CPU, cache=cache)
    assert probe(r.path).frames == r.plan.num_frames


@pytest.mark.parametrize("name,words", [("corrupt.jpg", "not an image"), ("tiny.png", "only 1x1 pixels"),
                                        ("missing.png", "")])
def test_bad_images_are_refused_before_any_work(name, words, photos, tmp_path):
    with pytest.raises(InvalidRequest) as e:
        localvideo.generate(PROMPT, model="tiny-wan", image=str(photos / name), output=str(tmp_path / "b.mp4"),
                            hardware=CPU, cache=PipelineCache(1))
    assert words in e.value.message
    assert list(tmp_path.iterdir()) == []


def test_last_frame_is_refused_where_the_pipeline_cannot_use_it(photos, tmp_path):
    with pytest.raises(InvalidRequest, match="last frame"):
        localvideo.generate(PROMPT, model="tiny-ltx", image=str(photos / "chelsea.png"),
                            last_image=str(photos / "coffee.jpg"), output=str(tmp_path / "x.mp4"), hardware=CPU)


def test_text_only_model_refuses_an_image(photos, tmp_path):
    with pytest.raises(InvalidRequest, match="t2v"):
        localvideo.generate(PROMPT, model="tiny-cogvideox", image=str(photos / "chelsea.png"),
                            output=str(tmp_path / "x.mp4"), hardware=CPU)


def test_cli_generate_with_image(photos, tmp_path):
    out = tmp_path / "cli.mp4"
    r = run_cli("generate", PROMPT, "--model", "tiny-wan", "--image", str(photos / "coffee.jpg"), "--steps", "1",
                "--frames", "5", "--seed", "3", "--output", str(out), "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["metadata"]["task"] == "i2v" and probe(out).frames == 5
