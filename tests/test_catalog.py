"""The one catalog: real entries, and parameter counts that match the real architectures."""

from __future__ import annotations

import json

import pytest

from localvideo.catalog import CONFIGS_DIR, all_models, get_model
from localvideo.errors import UnknownModel

REQUIRED = {
    "wan2.1-t2v-1.3b": ("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "WanPipeline", 4, 16),
    "wan2.1-t2v-14b": ("Wan-AI/Wan2.1-T2V-14B-Diffusers", "WanPipeline", 4, 16),
    "wan2.1-i2v-14b-480p": ("Wan-AI/Wan2.1-I2V-14B-480P-Diffusers", "WanImageToVideoPipeline", 4, 16),
    "wan2.2-ti2v-5b": ("Wan-AI/Wan2.2-TI2V-5B-Diffusers", "WanPipeline", 4, 32),
    "ltx-video-2b": ("Lightricks/LTX-Video-0.9.5", "LTXPipeline", 8, 32),
    "ltx-video-13b": ("Lightricks/LTX-Video-0.9.8-13B-distilled", "LTXConditionPipeline", 8, 32),
    "cogvideox-2b": ("THUDM/CogVideoX-2b", "CogVideoXPipeline", 8, 16),  # 4x VAE, but only 8k+1 decodes exactly
    "cogvideox-5b": ("THUDM/CogVideoX-5b", "CogVideoXPipeline", 8, 16),
    "cogvideox-5b-i2v": ("THUDM/CogVideoX-5b-I2V", "CogVideoXImageToVideoPipeline", 8, 16),
    "hunyuanvideo": ("hunyuanvideo-community/HunyuanVideo", "HunyuanVideoPipeline", 4, 16),
    "mochi-1": ("genmo/mochi-1-preview", "MochiPipeline", 6, 16),
}


@pytest.mark.parametrize("model_id", sorted(REQUIRED))
def test_required_models_have_correct_repo_pipeline_and_rules(model_id):
    repo, pipeline, step, multiple = REQUIRED[model_id]
    m = get_model(model_id)
    assert (m.repo, m.pipeline, m.frame_rule.step, m.size_multiple) == (repo, pipeline, step, multiple)
    assert m.frame_rule.valid(m.defaults.frames) and m.defaults.frames <= m.max_frames
    assert m.defaults.width % multiple == 0 and m.defaults.height % multiple == 0
    assert m.licence and m.allow_patterns and not m.tiny
    assert m.tasks and set(m.tasks) <= {"t2v", "i2v"}
    # the diffusers pipeline class really exists
    import diffusers

    assert hasattr(diffusers, m.pipeline)
    if m.i2v_pipeline:
        assert hasattr(diffusers, m.i2v_pipeline)


def test_ids_are_short_lowercase_and_unique():
    ids = [m.id for m in all_models()]
    assert len(ids) == len(set(ids))
    assert all(i == i.lower() and " " not in i for i in ids)
    assert {"tiny-wan", "tiny-ltx", "tiny-cogvideox"} <= set(ids)


def test_tiny_models_are_labelled_random_everywhere():
    for m in all_models():
        if m.tiny:
            assert "RANDOM" in m.label and m.to_dict()["random_weights"] is True
            assert "random" in m.name.lower() and "noise" in m.description.lower()


def test_lookup_is_case_insensitive_and_accepts_repo_ids():
    assert get_model("WAN2.1-T2V-1.3B").id == "wan2.1-t2v-1.3b"
    assert get_model("THUDM/CogVideoX-2b").id == "cogvideox-2b"


def test_unknown_model_is_a_typed_error_with_a_hint():
    with pytest.raises(UnknownModel) as e:
        get_model("wan3")
    assert "wan3" in e.value.message and "localvideo models list" in e.value.hint


def test_wan_i2v_transformer_is_16b_not_14b():
    # the name says 14B; the architecture (image cross-attention) has 16.39B
    assert get_model("wan2.1-i2v-14b-480p").component_params["transformer"] == pytest.approx(16.39e9, rel=1e-3)


def _build_on_meta(cls_name: str, config: dict):
    import diffusers
    import transformers
    from accelerate import init_empty_weights

    with init_empty_weights():
        if hasattr(diffusers, cls_name):
            model = getattr(diffusers, cls_name).from_config(config)
        else:
            cfg = transformers.AutoConfig.for_model(**{k: v for k, v in config.items() if k != "architectures"})
            model = getattr(transformers, cls_name)(cfg)
    if hasattr(model, "tie_weights"):
        model.tie_weights()  # transformers 5 leaves shared embeddings untied under init_empty_weights
    return sum(p.numel() for p in model.parameters()) + sum(
        b.numel() for _, b in model.named_buffers() if b is not None and _persistent(model, _))


def _persistent(model, name: str) -> bool:
    mod_name, _, buf = name.rpartition(".")
    mod = model.get_submodule(mod_name) if mod_name else model
    return buf not in getattr(mod, "_non_persistent_buffers_set", set())


@pytest.mark.parametrize("model_id", ["wan2.1-t2v-1.3b", "wan2.1-i2v-14b-480p", "wan2.2-ti2v-5b", "ltx-video-2b",
                                      "ltx-video-13b", "cogvideox-2b", "cogvideox-5b-i2v", "hunyuanvideo", "mochi-1"])
def test_parameter_counts_match_architectures_built_on_meta_device(model_id):
    """Counts in the catalog are re-derived here from the real configs (no number typed from memory)."""
    m = get_model(model_id)
    for component, expected in m.component_params.items():
        cfg = json.loads((CONFIGS_DIR / m.config_dir / f"{component}.json").read_text())
        cls_name = cfg.get("_class_name") or cfg["architectures"][0]
        counted = _build_on_meta(cls_name, cfg)
        if component in ("transformer",) or component.startswith("text_encoder") or component == "vae":
            assert counted == pytest.approx(expected, rel=0.002), (model_id, component, counted, expected)


@pytest.mark.parametrize("model_id", ["tiny-wan", "tiny-ltx", "tiny-cogvideox", "tiny-wan-flf2v"])
def test_tiny_entries_match_the_pipelines_actually_built(model_id):
    import torch

    from localvideo.runtime.tiny import TINY_GEOMETRY, make_tiny_pipeline

    m = get_model(model_id)
    build = m.id.removeprefix("tiny-")  # the tiny build: "wan", …, "wan-flf2v"
    geo = TINY_GEOMETRY[build]
    assert (m.size_multiple, m.geometry.vae_spatial, m.geometry.vae_temporal, m.geometry.latent_channels,
            m.geometry.patch, m.pipeline) == (geo["size_multiple"], geo["vae_spatial"], geo["vae_temporal"],
                                              geo["latent_channels"], tuple(geo["patch_size"]), geo["pipeline"])
    assert m.frame_rule.step == geo["frame_step"]
    pipe = make_tiny_pipeline(build)
    counted = {k: sum(p.numel() for p in v.parameters()) for k, v in pipe.components.items()
               if isinstance(v, torch.nn.Module)}
    assert counted == m.component_params
    t = pipe.transformer.config
    assert m.hidden_dim == t["num_attention_heads"] * t["attention_head_dim"]
