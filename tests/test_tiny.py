"""Tiny random-weight pipelines: build offline, reload with diffusers, generate deterministic noise fast."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # before huggingface_hub is imported (it reads this at import time)

import pytest

from localvideo.runtime.tiny import (
    FAMILIES,
    MARKER_NAME,
    TINY_GEOMETRY,
    TINY_SEED,
    build_tiny_pipeline,
    ensure_tiny_pipeline,
)

PIPELINE_CLASS = {"wan": "WanPipeline", "ltx": "LTXPipeline", "cogvideox": "CogVideoXPipeline"}
FRAMES = {"wan": 17, "ltx": 17, "cogvideox": 9}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {family: build_tiny_pipeline(family, root / f"tiny-{family}") for family in FAMILIES}


@pytest.fixture(scope="module")
def loaded(built):
    from diffusers import DiffusionPipeline

    pipes = {}
    for family, folder in built.items():
        pipe = DiffusionPipeline.from_pretrained(folder, local_files_only=True)
        pipe.set_progress_bar_config(disable=True)
        pipes[family] = pipe
    return pipes


def _generate(pipe, family: str, seed: int, steps: int = 2, **extra):
    import torch

    geometry = TINY_GEOMETRY[family]
    return pipe(
        prompt="a red fox runs across a snowy field, café 東京",
        negative_prompt="blurry",
        width=128,
        height=128,
        num_frames=FRAMES[family],
        num_inference_steps=steps,
        guidance_scale=5.0,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="np",
        **geometry["call_kwargs"],
        **extra,
    ).frames


def test_module_import_does_not_import_torch():
    code = "import sys, localvideo.runtime.tiny; bad = [m for m in ('torch', 'diffusers', 'transformers', 'tokenizers') if m in sys.modules]; assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_family(tmp_path):
    with pytest.raises(ValueError):
        build_tiny_pipeline("sora", tmp_path / "x")


@pytest.mark.parametrize("family", FAMILIES)
def test_build_marker_and_reload(family, built, loaded):
    import diffusers

    folder = built[family]
    marker = json.loads((folder / MARKER_NAME).read_text())
    assert marker["family"] == family
    assert marker["random_weights"] is True
    assert marker["seed"] == TINY_SEED == 0
    assert marker["diffusers"] == diffusers.__version__
    assert "noise" in marker["note"]
    assert not list(folder.parent.glob(f".{folder.name}.*")), "temp build folder left behind"

    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size < 2 * 1024 * 1024, size

    pipe = loaded[family]
    assert type(pipe).__name__ == PIPELINE_CLASS[family]
    tok = pipe.tokenizer
    assert 300 <= len(tok) <= 1000  # not the 4-token fallback vocabulary
    assert len(tok) == pipe.text_encoder.config.vocab_size
    ids = tok("café 東京, a Zebra!").input_ids
    assert ids[-1] == tok.eos_token_id and all(0 <= i < len(tok) for i in ids)
    assert tok.convert_ids_to_tokens(tok("Zebra").input_ids).count(tok.unk_token) == 0  # ASCII never <unk>


@pytest.mark.parametrize("family", FAMILIES)
def test_generation_shape_and_determinism(family, loaded):
    import numpy as np

    pipe = loaded[family]
    steps_seen = []

    def on_step(p, i, t, kwargs):
        steps_seen.append(i)
        assert "latents" in kwargs
        return kwargs

    a = _generate(pipe, family, seed=1, callback_on_step_end=on_step, callback_on_step_end_tensor_inputs=["latents"])
    b = _generate(pipe, family, seed=1)
    c = _generate(pipe, family, seed=2)

    assert isinstance(a, np.ndarray) and a.dtype.kind == "f"
    assert a.shape == (1, FRAMES[family], 128, 128, 3)
    assert a.min() >= 0.0 and a.max() <= 1.0
    assert steps_seen == [0, 1]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("family", FAMILIES)
def test_build_is_deterministic(family, built, tmp_path):
    from safetensors.torch import load_file

    first = built[family]
    second = build_tiny_pipeline(family, tmp_path / f"tiny-{family}")
    weight_files = sorted(p.relative_to(first) for p in first.rglob("*.safetensors"))
    assert {p.parent.name for p in weight_files} == {"transformer", "vae", "text_encoder"}
    assert weight_files == sorted(p.relative_to(second) for p in second.rglob("*.safetensors"))
    for rel in weight_files:
        sd1, sd2 = load_file(first / rel), load_file(second / rel)
        assert sd1.keys() == sd2.keys()
        for key in sd1:
            assert sd1[key].equal(sd2[key]), f"{rel}:{key} differs"
    assert (first / "tokenizer" / "tokenizer.json").read_bytes() == (second / "tokenizer" / "tokenizer.json").read_bytes()


def test_ensure_builds_once_and_reuses(tmp_path):
    dest = ensure_tiny_pipeline("wan", tmp_path)
    assert dest == tmp_path / "tiny-wan"
    marker = dest / MARKER_NAME
    first_mtime = marker.stat().st_mtime_ns
    assert ensure_tiny_pipeline("wan", tmp_path) == dest
    assert marker.stat().st_mtime_ns == first_mtime  # not rebuilt

    marker.unlink()  # a folder without its marker counts as half-built: rebuilt
    ensure_tiny_pipeline("wan", tmp_path)
    assert marker.is_file()
    assert (dest / "model_index.json").is_file()


def test_ensure_concurrent_callers(tmp_path):
    results, errors = [], []

    def worker():
        try:
            results.append(ensure_tiny_pipeline("cogvideox", tmp_path))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert results == [tmp_path / "tiny-cogvideox"] * 3
    assert json.loads((tmp_path / "tiny-cogvideox" / MARKER_NAME).read_text())["family"] == "cogvideox"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".tiny-cogvideox.") and not p.name.endswith(".lock")]
    assert not leftovers


def test_wan_flf2v_variant_builds_reloads_and_is_deterministic(tmp_path):
    """The Wan 2.1 first-last-frame build (tiny-wan-flf2v): its own folder and marker, a CLIP image encoder and
    processor saved with it, the same weights on every build."""
    from diffusers import DiffusionPipeline
    from safetensors.torch import load_file

    assert "wan-flf2v" not in FAMILIES  # not one of the text-to-video builds the tests above run
    first = ensure_tiny_pipeline("wan-flf2v", tmp_path)
    assert first == tmp_path / "tiny-wan-flf2v"
    assert json.loads((first / MARKER_NAME).read_text())["family"] == "wan-flf2v"
    second = build_tiny_pipeline("wan-flf2v", tmp_path / "again")
    weight_files = sorted(p.relative_to(first) for p in first.rglob("*.safetensors"))
    assert {p.parent.name for p in weight_files} == {"transformer", "vae", "text_encoder", "image_encoder"}
    for rel in weight_files:
        sd1, sd2 = load_file(first / rel), load_file(second / rel)
        assert sd1.keys() == sd2.keys() and all(sd1[k].equal(sd2[k]) for k in sd1), rel
    pipe = DiffusionPipeline.from_pretrained(first, local_files_only=True)
    assert type(pipe).__name__ == TINY_GEOMETRY["wan-flf2v"]["pipeline"] == "WanImageToVideoPipeline"
    assert type(pipe.image_encoder).__name__ == "CLIPVisionModel" and pipe.image_processor is not None
    assert not pipe.config.expand_timesteps  # Wan 2.1 style: the images are concatenated as channels
    assert pipe.transformer.config.image_dim == pipe.image_encoder.config.hidden_size
