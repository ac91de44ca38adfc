"""The one model catalog.

Every model localvideo knows is a :class:`ModelSpec` here: Hugging Face repo, diffusers pipeline class, tasks,
constraints, defaults, licence and download patterns. Parameter counts and transformer widths are *not* typed in:
they are read from the real architecture configs vendored under ``localvideo/model_configs/`` (``params.json`` was
produced by instantiating every component on the meta device; ``tests/test_catalog.py`` re-derives them).

This module imports nothing of ours and no torch: it is safe for ``--help``, the planner and the API.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from .errors import UnknownModel

CONFIGS_DIR = Path(__file__).parent / "model_configs"

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}

# Files a diffusers-format repo needs; everything else (original single-file checkpoints, .bin/.pth duplicates,
# GGUF, demo assets) is left on the hub.
DIFFUSERS_ALLOW = [
    "model_index.json",
    "*/config.json",
    "*/*.safetensors",
    "*/*.safetensors.index.json",
    "scheduler/*.json",
    "tokenizer*/*",
    "image_processor/*",
    "feature_extractor/*",
    "*/generation_config.json",
]
DIFFUSERS_IGNORE = ["*.bin", "*.pth", "*.pt", "*.ckpt", "*.gguf", "*.msgpack", "*.onnx", "*.h5"]


@dataclass(frozen=True)
class FrameRule:
    """Valid frame counts are ``step * k + 1`` (k ≥ 0), e.g. 4k+1 for Wan, 8k+1 for LTX, 6k+1 for Mochi.

    CogVideoX 1.0 compresses time 4x, but its VAE decodes latent frames in pairs after an odd first batch, so an
    even latent count (e.g. 13 frames → 4 latents) comes back as 16 frames: only 8k+1 (49 = 8*6+1) is exact.
    """

    step: int

    def valid(self, n: int) -> bool:
        return n >= 1 and (n - 1) % self.step == 0

    def snap(self, n: int) -> int:
        """Nearest valid count (ties go up), never below 1."""
        k = max(0, round((n - 1) / self.step + 1e-9))
        return self.step * k + 1

    def __str__(self) -> str:
        return f"{self.step}k+1"


@dataclass(frozen=True)
class Geometry:
    """Latent geometry: how pixels map to latent tokens the transformer sees."""

    vae_spatial: int  # pixels per latent pixel (per side)
    vae_temporal: int  # frames per latent frame (after the first)
    latent_channels: int
    patch: tuple[int, int, int]  # DiT patch (t, h, w)
    text_tokens_joint: int = 0  # text tokens concatenated into the DiT sequence (joint attention models)
    cfg_batch: int = 2  # 2 when the pipeline batches cond+uncond in one forward, 1 when it runs them one after another
    vae_decoder_channels: int = 128  # decoder width at full resolution (activation estimate)
    vae_decode_chunk_frames: int | None = None  # frames decoded at once without tiling (None = all)

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        return ((frames - 1) // self.vae_temporal + 1, height // self.vae_spatial, width // self.vae_spatial)

    def video_tokens(self, frames: int, height: int, width: int) -> int:
        f, h, w = self.latent_shape(frames, height, width)
        pt, ph, pw = self.patch
        return -(-f // pt) * (h // ph) * (w // pw)


@dataclass(frozen=True)
class Defaults:
    width: int
    height: int
    frames: int
    steps: int
    guidance: float
    fps: float
    flow_shift: float | None = None
    negative_prompt: str = ""


@dataclass(frozen=True)
class ModelSpec:
    id: str
    name: str
    repo: str
    pipeline: str  # diffusers pipeline class for text-to-video (or the model's main task)
    family: str  # wan | ltx | cogvideox | hunyuan | mochi
    tasks: tuple[str, ...]
    dtype: str  # compute/storage dtype of the transformer and text encoder
    frame_rule: FrameRule
    size_multiple: int
    max_frames: int
    max_pixels: int  # width*height above which the model is out of its depth
    defaults: Defaults
    geometry: Geometry
    licence: str
    description: str = ""
    config_dir: str | None = None  # under model_configs/; None for tiny models
    i2v_pipeline: str | None = None
    i2v_load_kwargs: dict = field(default_factory=dict)  # extra from_pretrained kwargs for the i2v pipeline
    supports_last_image: bool = False  # the i2v pipeline also conditions on a last frame
    requires_last_image: bool = False  # ... and cannot run without one (Wan 2.1 FLF2V)
    component_dtypes: dict[str, str] = field(default_factory=dict)  # overrides of dtype per component (e.g. vae fp32)
    fixed_size: bool = False  # only the default size works (learned positional embeddings)
    call_kwargs: dict = field(default_factory=dict)  # extra keyword arguments for the pipeline call
    max_sequence_length: int | None = None  # passed to the pipeline where it must match the transformer
    allow_patterns: tuple[str, ...] = tuple(DIFFUSERS_ALLOW)
    ignore_patterns: tuple[str, ...] = tuple(DIFFUSERS_IGNORE)
    tiny: bool = False
    tiny_params: dict[str, int] = field(default_factory=dict)  # measured from the built tiny pipeline (tested)
    tiny_hidden: int = 0
    cache_defaults: dict = field(default_factory=dict)  # per-model overrides of STEP_CACHE_DEFAULTS[family]

    # -- derived from the vendored configs -------------------------------------------------------------------
    @property
    def random_weights(self) -> bool:
        return self.tiny

    @property
    def label(self) -> str:
        return f"{self.id} (RANDOM WEIGHTS: output is noise)" if self.tiny else self.id

    @property
    def component_params(self) -> dict[str, int]:
        if self.tiny:
            return dict(self.tiny_params)
        entry = _params()[self.config_dir]
        return {name: int(c["params"]) + int(c.get("persistent_buffers", 0)) for name, c in entry["components"].items()
                if name != "latent_upsampler"}

    def step_cache_params(self, kind: str) -> dict:
        """Settings for a step cache (``fbc`` | ``mag`` | ``taylor``): the family's defaults, then this model's."""
        return {**STEP_CACHE_DEFAULTS.get(self.family, {}).get(kind, {}), **self.cache_defaults.get(kind, {})}

    def component_dtype(self, component: str) -> str:
        return self.component_dtypes.get(component, self.dtype)

    def component_bytes(self, component: str) -> int:
        return self.component_params[component] * DTYPE_BYTES[self.component_dtype(component)]

    @property
    def total_params(self) -> int:
        return sum(self.component_params.values())

    @property
    def weights_bytes(self) -> int:
        return sum(self.component_bytes(c) for c in self.component_params)

    @property
    def transformer_config(self) -> dict:
        return _config(self.config_dir, "transformer") if self.config_dir else {}

    @property
    def hidden_dim(self) -> int:
        if self.tiny:
            return self.tiny_hidden
        cfg = self.transformer_config
        return int(cfg["num_attention_heads"]) * int(cfg["attention_head_dim"])

    @property
    def ffn_dim(self) -> int:
        cfg = self.transformer_config
        if "ffn_dim" in cfg:
            return int(cfg["ffn_dim"])
        if "mlp_ratio" in cfg:
            return int(float(cfg["mlp_ratio"]) * self.hidden_dim)
        return 4 * self.hidden_dim

    @property
    def traced_activations(self) -> dict | None:
        """Activation coefficients traced from the real architecture (``activations.json``), or None."""
        return None if self.tiny else _activations().get("models", {}).get(self.id)

    @property
    def num_layers(self) -> int:
        cfg = self.transformer_config
        return int(cfg.get("num_layers", 2)) + int(cfg.get("num_single_layers", 0))

    def supports(self, task: str) -> bool:
        return task in self.tasks

    def to_dict(self) -> dict:
        d = self.defaults
        return {
            "id": self.id,
            "name": self.name,
            "repo": self.repo,
            "pipeline": self.pipeline,
            "i2v_pipeline": self.i2v_pipeline,
            "family": self.family,
            "tasks": list(self.tasks),
            "dtype": self.dtype,
            "random_weights": self.tiny,
            "licence": self.licence,
            "description": self.description,
            "params": self.component_params,
            "weights_gb": round(self.weights_bytes / 1e9, 2),
            "constraints": {
                "frame_rule": str(self.frame_rule),
                "size_multiple": self.size_multiple,
                "max_frames": self.max_frames,
                "max_pixels": self.max_pixels,
                "fixed_size": self.fixed_size,
                "native_fps": d.fps,
            },
            "defaults": {
                "width": d.width, "height": d.height, "frames": d.frames, "steps": d.steps,
                "guidance": d.guidance, "fps": d.fps, "flow_shift": d.flow_shift,
            },
        }


# Step caches (diffusers hooks), off unless asked for. Thresholds are diffusers' own defaults (FBC 0.05, MagCache
# 0.06, TaylorSeer interval 5 after 3 full steps), not tuned per model on real weights: raise them with
# ``--cache fbc:0.1`` for more speed. TaylorSeer's module patterns are per family because diffusers' default patterns
# only match attention modules named ``attn`` (Flux), not ``attn1``/``attn2`` (tests check them against the real
# architectures). MagCache needs magnitude ratios measured per checkpoint; none are known here for these models, so
# ``mag_ratios`` stays None and ``--cache mag:calibrate`` measures them once on the user's machine.
_TAYLOR = {"cache_interval": 5, "disable_cache_before_step": 3}
_MAG = {"threshold": 0.06, "max_skip_steps": 3, "retention_ratio": 0.2, "mag_ratios": None}
STEP_CACHE_DEFAULTS: dict[str, dict[str, dict]] = {
    "wan": {"fbc": {"threshold": 0.05}, "mag": dict(_MAG),
            "taylor": _TAYLOR | {"cache_identifiers": [r"blocks\.\d+\.(attn1|attn2|ffn)"]}},
    "ltx": {"fbc": {"threshold": 0.05}, "mag": dict(_MAG),
            "taylor": _TAYLOR | {"cache_identifiers": [r"transformer_blocks\.\d+\.(attn1|attn2|ff)"]}},
    "cogvideox": {"fbc": {"threshold": 0.05}, "mag": dict(_MAG),
                  "taylor": _TAYLOR | {"cache_identifiers": [r"transformer_blocks\.\d+\.(attn1|ff)"]}},
    "hunyuan": {"fbc": {"threshold": 0.05}, "mag": dict(_MAG),
                "taylor": _TAYLOR | {"cache_identifiers": [r"(single_)?transformer_blocks\.\d+\.attn",
                                                           r"transformer_blocks\.\d+\.(ff|ff_context)"]}},
    "mochi": {"fbc": {"threshold": 0.05}, "mag": dict(_MAG),
              "taylor": _TAYLOR | {"cache_identifiers": [r"transformer_blocks\.\d+\.(attn1|ff|ff_context)"]}},
}


@lru_cache(maxsize=1)
def _params() -> dict:
    return json.loads((CONFIGS_DIR / "params.json").read_text())


@lru_cache(maxsize=1)
def _activations() -> dict:
    """Written by ``python bench/memtrace.py --fit ...``: activation memory traced on the meta device."""
    path = CONFIGS_DIR / "activations.json"
    return json.loads(path.read_text()) if path.exists() else {}


@lru_cache(maxsize=None)
def _config(config_dir: str, component: str) -> dict:
    return json.loads((CONFIGS_DIR / config_dir / f"{component}.json").read_text())


WAN_NEGATIVE = (
    "bright colors, overexposed, static, blurred details, subtitles, style, artwork, painting, still picture, "
    "overall gray, worst quality, low quality, JPEG artifacts, ugly, deformed, extra fingers, poorly drawn hands, "
    "poorly drawn face, disfigured, malformed limbs, fused fingers, still frame, cluttered background, "
    "three legs, many people in the background, walking backwards"
)
LTX_NEGATIVE = "worst quality, inconsistent motion, blurry, jittery, distorted"

_WAN21 = Geometry(8, 4, 16, (1, 2, 2), cfg_batch=1, vae_decoder_channels=96, vae_decode_chunk_frames=4)
_WAN22_5B = Geometry(16, 4, 48, (1, 2, 2), cfg_batch=1, vae_decoder_channels=256, vae_decode_chunk_frames=4)
_LTX = Geometry(32, 8, 128, (1, 1, 1), cfg_batch=2, vae_decoder_channels=16)  # 256 ch at 1/4 res (patch 4)
_COG = Geometry(8, 4, 16, (1, 2, 2), text_tokens_joint=226, cfg_batch=2, vae_decoder_channels=128, vae_decode_chunk_frames=8)
_HUNYUAN = Geometry(8, 4, 16, (1, 2, 2), text_tokens_joint=256, cfg_batch=1, vae_decoder_channels=128)
_MOCHI = Geometry(8, 6, 12, (1, 2, 2), text_tokens_joint=256, cfg_batch=2, vae_decoder_channels=128)

_LTX_DISTILLED_TIMESTEPS = [1000, 993, 987, 981, 975, 909, 725, 0.03]

MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        id="wan2.1-t2v-1.3b", name="Wan 2.1 T2V 1.3B", repo="Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
        pipeline="WanPipeline", family="wan", tasks=("t2v",), dtype="bfloat16",
        component_dtypes={"vae": "float32"},
        frame_rule=FrameRule(4), size_multiple=16, max_frames=129, max_pixels=1280 * 720,
        defaults=Defaults(832, 480, 81, 50, 5.0, 16, flow_shift=3.0, negative_prompt=WAN_NEGATIVE),
        geometry=_WAN21, licence="apache-2.0", config_dir="Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
        description="Small Wan 2.1 text-to-video model; 480p, fits consumer GPUs.",
    ),
    ModelSpec(
        id="wan2.1-t2v-14b", name="Wan 2.1 T2V 14B", repo="Wan-AI/Wan2.1-T2V-14B-Diffusers",
        pipeline="WanPipeline", family="wan", tasks=("t2v",), dtype="bfloat16",
        component_dtypes={"vae": "float32"},
        frame_rule=FrameRule(4), size_multiple=16, max_frames=129, max_pixels=1280 * 720,
        defaults=Defaults(1280, 720, 81, 50, 5.0, 16, flow_shift=5.0, negative_prompt=WAN_NEGATIVE),
        geometry=_WAN21, licence="apache-2.0", config_dir="Wan-AI/Wan2.1-T2V-14B-Diffusers",
        description="Large Wan 2.1 text-to-video model; 720p (flow shift 5.0 as the model card advises).",
    ),
    ModelSpec(
        id="wan2.1-i2v-14b-480p", name="Wan 2.1 I2V 14B 480P", repo="Wan-AI/Wan2.1-I2V-14B-480P-Diffusers",
        pipeline="WanImageToVideoPipeline", i2v_pipeline="WanImageToVideoPipeline", family="wan", tasks=("i2v",),
        # No last frame: its transformer has no pos_embed_seq_len (transformer.json), so diffusers 0.42 turns
        # [first, last] into a CLIP batch of 2 against a text batch of 1 and fails; only the FLF2V checkpoint
        # (pos_embed_seq_len 2 x 257) takes one (tests/test_i2v_last_frame.py shows both on tiny transformers).
        dtype="bfloat16", component_dtypes={"vae": "float32", "image_encoder": "float32"},
        frame_rule=FrameRule(4), size_multiple=16, max_frames=129, max_pixels=832 * 480,
        defaults=Defaults(832, 480, 81, 50, 5.0, 16, flow_shift=3.0, negative_prompt=WAN_NEGATIVE),
        geometry=_WAN21, licence="apache-2.0", config_dir="Wan-AI/Wan2.1-I2V-14B-480P-Diffusers",
        description="Wan 2.1 image-to-video, 480p. Its transformer has 16.4B parameters (image cross-attention).",
    ),
    ModelSpec(
        id="wan2.2-ti2v-5b", name="Wan 2.2 TI2V 5B", repo="Wan-AI/Wan2.2-TI2V-5B-Diffusers",
        pipeline="WanPipeline", i2v_pipeline="WanImageToVideoPipeline", family="wan", tasks=("t2v", "i2v"),
        i2v_load_kwargs={"expand_timesteps": True},
        dtype="bfloat16", component_dtypes={"vae": "float32"},
        frame_rule=FrameRule(4), size_multiple=32, max_frames=241, max_pixels=1280 * 704,
        defaults=Defaults(1280, 704, 121, 50, 5.0, 24, flow_shift=5.0, negative_prompt=WAN_NEGATIVE),
        geometry=_WAN22_5B, licence="apache-2.0", config_dir="Wan-AI/Wan2.2-TI2V-5B-Diffusers",
        description="Wan 2.2 text+image-to-video 5B with the 16x-compressing VAE; 720p at 24 fps.",
    ),
    ModelSpec(
        id="ltx-video-2b", name="LTX-Video 2B (0.9.5)", repo="Lightricks/LTX-Video-0.9.5",
        pipeline="LTXPipeline", i2v_pipeline="LTXImageToVideoPipeline", family="ltx", tasks=("t2v", "i2v"),
        dtype="bfloat16", frame_rule=FrameRule(8), size_multiple=32, max_frames=257, max_pixels=1216 * 704,
        defaults=Defaults(768, 512, 121, 40, 3.0, 24, negative_prompt=LTX_NEGATIVE),
        geometry=_LTX, licence="ltxv-open-weights (see the model card)", config_dir="Lightricks/LTX-Video-0.9.5",
        call_kwargs={"decode_timestep": 0.05, "decode_noise_scale": 0.025},
        max_sequence_length=128,
        description="Fast 2B LTX-Video (0.9.5, diffusers format). No diffusers-format 2B distilled repo is listed.",
    ),
    ModelSpec(
        id="ltx-video-13b", name="LTX-Video 13B distilled (0.9.8)", repo="Lightricks/LTX-Video-0.9.8-13B-distilled",
        pipeline="LTXConditionPipeline", i2v_pipeline="LTXConditionPipeline", family="ltx", tasks=("t2v", "i2v"),
        dtype="bfloat16", frame_rule=FrameRule(8), size_multiple=32, max_frames=257, max_pixels=1216 * 704,
        defaults=Defaults(768, 512, 121, 8, 1.0, 24, negative_prompt=LTX_NEGATIVE),
        geometry=_LTX, licence="ltxv-open-weights (see the model card)",
        config_dir="Lightricks/LTX-Video-0.9.8-13B-distilled",
        call_kwargs={"decode_timestep": 0.05, "decode_noise_scale": 0.025, "timesteps": _LTX_DISTILLED_TIMESTEPS},
        description="13B LTX-Video distilled: 8 steps, no CFG. The custom timesteps apply at the default 8 steps.",
    ),
    ModelSpec(
        id="cogvideox-2b", name="CogVideoX 2B", repo="THUDM/CogVideoX-2b",
        pipeline="CogVideoXPipeline", family="cogvideox", tasks=("t2v",), dtype="float16",
        frame_rule=FrameRule(8), size_multiple=16, max_frames=49, max_pixels=720 * 480,
        defaults=Defaults(720, 480, 49, 50, 6.0, 8),
        geometry=_COG, licence="apache-2.0", config_dir="THUDM/CogVideoX-2b", max_sequence_length=226,
        description="CogVideoX 1.0 2B (fp16): 6 s at 8 fps, 720x480.",
    ),
    ModelSpec(
        id="cogvideox-5b", name="CogVideoX 5B", repo="THUDM/CogVideoX-5b",
        pipeline="CogVideoXPipeline", family="cogvideox", tasks=("t2v",), dtype="bfloat16",
        frame_rule=FrameRule(8), size_multiple=16, max_frames=49, max_pixels=720 * 480,
        defaults=Defaults(720, 480, 49, 50, 6.0, 8),
        geometry=_COG, licence="cogvideox-license (see the model card)", config_dir="THUDM/CogVideoX-5b",
        max_sequence_length=226, description="CogVideoX 1.0 5B (bf16): 6 s at 8 fps, 720x480.",
    ),
    ModelSpec(
        id="cogvideox-5b-i2v", name="CogVideoX 5B I2V", repo="THUDM/CogVideoX-5b-I2V",
        pipeline="CogVideoXImageToVideoPipeline", i2v_pipeline="CogVideoXImageToVideoPipeline", family="cogvideox",
        tasks=("i2v",), dtype="bfloat16", frame_rule=FrameRule(8), size_multiple=16, max_frames=49,
        max_pixels=720 * 480, fixed_size=True, defaults=Defaults(720, 480, 49, 50, 6.0, 8),
        geometry=_COG, licence="cogvideox-license (see the model card)", config_dir="THUDM/CogVideoX-5b-I2V",
        max_sequence_length=226,
        description="CogVideoX 1.0 5B image-to-video; learned positional embeddings fix the size at 720x480.",
    ),
    ModelSpec(
        id="hunyuanvideo", name="HunyuanVideo", repo="hunyuanvideo-community/HunyuanVideo",
        pipeline="HunyuanVideoPipeline", family="hunyuan", tasks=("t2v",), dtype="bfloat16",
        component_dtypes={"vae": "float16", "text_encoder_2": "float16"},
        frame_rule=FrameRule(4), size_multiple=16, max_frames=129, max_pixels=1280 * 720,
        defaults=Defaults(1280, 720, 129, 50, 6.0, 24, flow_shift=7.0),
        geometry=_HUNYUAN, licence="tencent-hunyuan-community", config_dir="hunyuanvideo-community/HunyuanVideo",
        description="HunyuanVideo 13B (guidance-distilled: guidance is embedded, one pass per step).",
    ),
    ModelSpec(
        id="mochi-1", name="Mochi 1 (preview)", repo="genmo/mochi-1-preview",
        pipeline="MochiPipeline", family="mochi", tasks=("t2v",), dtype="bfloat16",
        frame_rule=FrameRule(6), size_multiple=16, max_frames=163, max_pixels=848 * 480,
        defaults=Defaults(848, 480, 85, 64, 4.5, 30),
        geometry=_MOCHI, licence="apache-2.0", config_dir="genmo/mochi-1-preview", max_sequence_length=256,
        description="Genmo Mochi 1 10B, 480p at 30 fps.",
    ),
    # -- tiny models: real diffusers pipelines with random weights, built locally (tests and the offline demo) ---
    ModelSpec(
        id="tiny-wan", name="Tiny Wan (random weights)", repo="local:tiny-wan", pipeline="WanPipeline",
        i2v_pipeline="WanImageToVideoPipeline", i2v_load_kwargs={"expand_timesteps": True},  # Wan2.2-TI2V style
        family="wan", tasks=("t2v", "i2v"), dtype="float32", frame_rule=FrameRule(4), size_multiple=16, max_frames=65,
        max_pixels=512 * 512, defaults=Defaults(128, 128, 17, 4, 5.0, 16, flow_shift=3.0),
        geometry=Geometry(8, 4, 16, (1, 2, 2), cfg_batch=1, vae_decoder_channels=3, vae_decode_chunk_frames=4),
        licence="none (random weights)", tiny=True,
        tiny_params={"transformer": 28328, "vae": 13861, "text_encoder": 29344}, tiny_hidden=24,
        description="A real WanPipeline with random weights, built on this machine. Output is noise.",
    ),
    ModelSpec(
        id="tiny-ltx", name="Tiny LTX-Video (random weights)", repo="local:tiny-ltx", pipeline="LTXPipeline",
        i2v_pipeline="LTXImageToVideoPipeline", family="ltx", tasks=("t2v", "i2v"), dtype="float32", frame_rule=FrameRule(8), size_multiple=32, max_frames=65,
        max_pixels=512 * 512, defaults=Defaults(128, 128, 17, 4, 3.0, 24),
        geometry=Geometry(8, 8, 8, (1, 1, 1), cfg_batch=2, vae_decoder_channels=8),
        licence="none (random weights)", tiny=True,
        tiny_params={"transformer": 35464, "vae": 86588, "text_encoder": 26944}, tiny_hidden=32,
        description="A real LTXPipeline with random weights, built on this machine. Output is noise.",
    ),
    ModelSpec(
        id="tiny-cogvideox", name="Tiny CogVideoX (random weights)", repo="local:tiny-cogvideox",
        pipeline="CogVideoXPipeline", family="cogvideox", tasks=("t2v",), dtype="float32", frame_rule=FrameRule(8),
        size_multiple=16, max_frames=33, max_pixels=512 * 512, defaults=Defaults(128, 128, 9, 4, 6.0, 8),
        geometry=Geometry(8, 4, 4, (1, 2, 2), text_tokens_joint=226, cfg_batch=2, vae_decoder_channels=8,
                          vae_decode_chunk_frames=8),
        licence="none (random weights)", tiny=True, max_sequence_length=226,
        tiny_params={"transformer": 16408, "vae": 65195, "text_encoder": 26944}, tiny_hidden=32,
        description="A real CogVideoXPipeline with random weights, built on this machine. Output is noise.",
    ),
    ModelSpec(
        id="tiny-wan-flf2v", name="Tiny Wan 2.1 FLF2V (random weights)", repo="local:tiny-wan-flf2v",
        pipeline="WanImageToVideoPipeline", i2v_pipeline="WanImageToVideoPipeline", family="wan", tasks=("i2v",),
        supports_last_image=True, requires_last_image=True,  # first-last-frame-to-video, like Wan2.1-FLF2V-14B-720P
        dtype="float32", frame_rule=FrameRule(4), size_multiple=16, max_frames=65, max_pixels=512 * 512,
        defaults=Defaults(128, 128, 17, 4, 5.0, 16, flow_shift=3.0),
        geometry=Geometry(8, 4, 16, (1, 2, 2), cfg_batch=1, vae_decoder_channels=3, vae_decode_chunk_frames=4),
        licence="none (random weights)", tiny=True,
        tiny_params={"transformer": 34000, "vae": 13861, "text_encoder": 29344, "image_encoder": 7872},
        tiny_hidden=24,
        description="A real WanImageToVideoPipeline (Wan 2.1 first-last-frame style: CLIP image encoder, image "
                    "cross-attention) with random weights, built on this machine. Takes a first and a last frame. "
                    "Output is noise.",
    ),
)

_BY_ID = {m.id: m for m in MODELS}
DEFAULT_MODEL = "wan2.1-t2v-1.3b"


def all_models(include_tiny: bool = True) -> list[ModelSpec]:
    return [m for m in MODELS if include_tiny or not m.tiny]


def get_model(model_id: str) -> ModelSpec:
    """Look a model up by its short id (case-insensitive; the HF repo id is accepted too)."""
    key = (model_id or "").strip().lower()
    if key in _BY_ID:
        return _BY_ID[key]
    for m in MODELS:
        if m.repo.lower() == key:
            return m
    close = [m.id for m in MODELS if key and (key in m.id or m.id in key)]
    hint = f"Did you mean {', '.join(close)}? " if close else ""
    raise UnknownModel(
        f"Unknown model '{model_id}'.",
        hint=f"{hint}Run `localvideo models list` to see the models localvideo knows.",
        model=model_id,
    )
