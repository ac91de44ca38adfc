"""The planner: (request, model spec, hardware) → Plan. Pure: no torch, no I/O.

It snaps frames and sizes to the model's rules (and says what it changed), estimates peak memory for each memory
strategy from parameter counts × dtype plus activations from the latent token count, picks the fastest strategy
that fits, and refuses with a reason and a suggestion when nothing does.

The memory model (all figures in bytes):

- weights: Σ params(component) × bytes(dtype(component))
- activations (``activations()``), for the catalog's real models from coefficients traced on the meta device by
  ``bench/memtrace.py`` (the real architectures at full size, flash-attention memory model; stored in
  ``model_configs/activations.json``) × ACT_MARGIN:
  - transformer: video tokens × traced bytes per token (one pipeline call, CFG batch included)
  - VAE encode (image-to-video pipelines that encode a conditioning video): pixels × (a + b × frames), tiled or not
  - VAE decode: pixels × (a + b × frames) — one latent chunk's working set plus the decoded video
  - tiled VAE decode: max(tile working set + c × pixels × frames, d × pixels × frames)
  Models without traced coefficients (the tiny ones) use the generic formula: cfg_batch × tokens × (ACT_HIDDEN ×
  hidden + ACT_FFN × ffn) × bytes(dtype), and frames decoded at once × H × W × decoder_channels × bytes(vae) ×
  VAE_K (one tile of TILE_PIXELS × TILE_FRAMES when tiling).
- GPU overhead: CUDA context, kernel workspaces and allocator slack (GPU_OVERHEAD) — the part the meta trace
  cannot see; ``bench/gpu.py`` measures it on a GPU.
- quantized transformer (``quantization``): fp8 storage / int8 weight-only keep 1 byte per parameter for the
  linear layers and QUANT_KEEP_FRACTION of the parameters (embedders, norms, modulation tables: ≈ 0.1–2 % in the
  real configs) in the compute dtype; a GGUF transformer takes its file size (the tensors stay quantized in memory
  and are dequantized one layer at a time). While loading, fp8/int8 still hold the full-precision transformer in RAM.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .catalog import DTYPE_BYTES, ModelSpec
from .errors import DoesNotFit, InvalidRequest
from .hardware import GB, Hardware
from .request import GenerationRequest

ACT_MARGIN = 1.05  # over the traced peak of live tensors (allocator rounding; see bench/memtrace.py)
ACT_HIDDEN = 8  # generic formula, for models without traced coefficients (the tiny ones)
ACT_FFN = 2
VAE_K = 6
TILE_PIXELS = 256 * 256 * 2  # a tile plus its overlap/blend region
TILE_FRAMES = 16
TEXT_ACT_BYTES = int(0.3 * GB)
GPU_OVERHEAD = int(1.0 * GB)
HOST_OVERHEAD = int(2.0 * GB)
VRAM_USABLE = 0.92  # fraction of free VRAM the plan may use
RAM_USABLE = 0.90

# -- quantization and run options (see localvideo.runtime.options) ----------------------------------------------
QUANTIZATIONS = ("none", "fp8", "int8", "gguf")
QUANT_KEEP_FRACTION = 0.02  # transformer params left in the compute dtype by fp8 casting / int8 weight-only
# bytes per parameter of GGUF quant types (ggml block size / type size); used when a file's size is unknown
GGUF_BYTES_PER_PARAM = {"F32": 4.0, "F16": 2.0, "BF16": 2.0, "Q8_0": 34 / 32, "Q6_K": 210 / 256, "Q5_K": 176 / 256,
                        "Q5_0": 22 / 32, "Q5_1": 24 / 32, "Q4_K": 144 / 256, "Q4_0": 18 / 32, "Q4_1": 20 / 32,
                        "Q3_K": 110 / 256, "Q2_K": 84 / 256}
QUANT_TEXT = {"fp8": "fp8 (e4m3) storage, upcast layer by layer (layerwise casting)",
              "int8": "int8 weight-only (optimum-quanto, or torchao)", "gguf": "GGUF single-file transformer"}
ATTENTION_PACKAGES = {"flash": "flash_attn", "sage": "sageattention"}


def _installed(module: str) -> bool:
    """Whether an importable package is present (no import; tests may replace this)."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def attention_problem(backend: str, on_cpu: bool) -> str | None:
    """Why an attention backend cannot run here, or None when it can (sdpa always can)."""
    if backend == "sdpa":
        return None
    package = ATTENTION_PACKAGES[backend]
    if on_cpu:
        return f"the {backend} attention backend needs a CUDA GPU"
    if not _installed(package):
        return f"the {backend} attention backend needs the `{package}` package, which is not installed"
    return None


def compile_problem(on_cpu: bool) -> str | None:
    """Why torch.compile (inductor) cannot run here, or None when its prerequisites are present."""
    import shutil

    if on_cpu:
        if not any(shutil.which(c) for c in ("g++", "c++", "clang++", "cl")):
            return "torch.compile on the CPU needs a C++ compiler (g++ / clang++ / MSVC), and none is on the PATH"
    elif not _installed("triton"):
        return "torch.compile on a GPU needs the `triton` package, which is not installed"
    return None


def gguf_bytes_per_param(path: str | None) -> float:
    """Bytes per parameter from the quant type in a GGUF file name (e.g. ``…-Q4_K_M.gguf``); Q8_0 when unknown."""
    import re

    m = re.search(r"(BF16|F16|F32|Q\d_K|Q\d_\d)", (path or "").upper().replace("-", "_"))
    return GGUF_BYTES_PER_PARAM.get(m.group(1), GGUF_BYTES_PER_PARAM["Q8_0"]) if m else GGUF_BYTES_PER_PARAM["Q8_0"]


def quantized_transformer_bytes(params: int, full_bytes: int, quantization: str, gguf_path: str | None = None) -> int:
    """Memory of a transformer with ``params`` parameters (``full_bytes`` unquantized) under ``quantization``."""
    if quantization in ("fp8", "int8"):
        per_param = full_bytes / max(params, 1)
        return int(params * ((1 - QUANT_KEEP_FRACTION) * 1 + QUANT_KEEP_FRACTION * per_param))
    if quantization == "gguf":
        import os

        try:
            return os.path.getsize(gguf_path) if gguf_path else int(params * gguf_bytes_per_param(gguf_path))
        except OSError:
            return int(params * gguf_bytes_per_param(gguf_path))
    return full_bytes

GPU_STRATEGIES = ("resident", "model_offload", "group_offload", "group_offload_leaf", "sequential_offload")
CPU_STRATEGIES = ("resident", "group_offload", "group_offload_leaf")  # what runs without an accelerator
NEEDS_ACCELERATOR = ("model_offload", "sequential_offload")

STRATEGY_TEXT = {
    "resident": "everything stays on the device (fastest)",
    "model_offload": "one component on the GPU at a time, the rest in RAM (a little slower)",
    "group_offload": "transformer blocks streamed from RAM, overlapped with compute (slower, far less VRAM)",
    "group_offload_leaf": "every leaf layer streamed from RAM (slower still, least VRAM short of sequential)",
    "sequential_offload": "every layer moved on demand (slowest, least VRAM)",
}


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak memory per phase on the device (GPU, or RAM on CPU) and in host RAM, for one strategy."""

    strategy: str
    vae_tiling: bool
    peak_device_bytes: int
    peak_host_bytes: int
    weights_bytes: int
    transformer_activation_bytes: int
    vae_activation_bytes: int
    load_device_bytes: int = 0  # after loading, before anything runs
    text_device_bytes: int = 0  # while encoding the prompt
    denoise_device_bytes: int = 0  # while the transformer runs
    decode_device_bytes: int = 0  # while the VAE decodes
    quantization: str = "none"  # how the transformer is stored (none | fp8 | int8 | gguf)
    encode_device_bytes: int = 0  # while the VAE encodes the conditioning image/video (image-to-video models)
    vae_encode_activation_bytes: int = 0

    def phase_bytes(self, phase: str) -> int:
        return {"load": self.load_device_bytes, "text": self.text_device_bytes, "encode": self.encode_device_bytes,
                "denoise": self.denoise_device_bytes, "decode": self.decode_device_bytes}[phase]

    def to_dict(self) -> dict:
        return {k: (round(v / GB, 2) if k.endswith("bytes") else v) for k, v in asdict(self).items()} | {
            "unit": "GB"}


@dataclass(frozen=True)
class Plan:
    model: str
    repo: str
    pipeline: str
    family: str
    random_weights: bool
    prompt: str
    negative_prompt: str
    width: int
    height: int
    num_frames: int
    fps: float
    steps: int
    guidance: float
    seed: int
    device: str
    dtype: str
    strategy: str
    vae_tiling: bool
    flow_shift: float | None
    max_sequence_length: int | None
    call_kwargs: dict
    latent_shape: tuple[int, int, int]
    tokens: int
    estimate: MemoryEstimate
    budget_device_bytes: int
    budget_host_bytes: int
    notes: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    output: str | None = None
    task: str = "t2v"
    image: str | None = None  # i2v: input image path (first frame)
    last_image: str | None = None
    degraded: tuple[str, ...] = ()  # rungs of the OOM ladder taken, e.g. "frames 81 → 49 after OOM while denoising"
    # run options (applied by localvideo.runtime.options)
    quantization: str = "none"  # none | fp8 | int8 | gguf
    gguf_path: str | None = None
    step_cache: str | None = None  # step cache actually used, e.g. "fbc:0.05", "taylor:5", "mag:calibrate"
    step_cache_params: dict = field(default_factory=dict)  # its resolved settings (catalog defaults + value)
    loras: tuple[tuple[str, float], ...] = ()
    attention: str = "sdpa"  # backend actually used (flash/sage degrade to sdpa with a warning)
    compile: bool = False  # regional torch.compile actually applied (False when its prerequisites are missing)

    def run_options(self) -> dict:
        """The run options as recorded in metadata."""
        return {"quantization": self.quantization, "gguf_path": self.gguf_path, "step_cache": self.step_cache,
                "step_cache_params": dict(self.step_cache_params),
                "loras": [{"path": p, "weight": w} for p, w in self.loras], "attention": self.attention,
                "compile": self.compile}

    @property
    def duration_s(self) -> float:
        return self.num_frames / self.fps

    def to_dict(self) -> dict:
        d = asdict(self)
        d["estimate"] = self.estimate.to_dict()
        d["budget_device_gb"] = round(self.budget_device_bytes / GB, 2)
        d["budget_host_gb"] = round(self.budget_host_bytes / GB, 2)
        del d["budget_device_bytes"], d["budget_host_bytes"]
        d["duration_s"] = round(self.duration_s, 3)
        d["notes"], d["reasons"], d["warnings"] = list(self.notes), list(self.reasons), list(self.warnings)
        d["degraded"] = list(self.degraded)
        return d

    @classmethod
    def from_dict(cls, d: dict, spec: ModelSpec) -> "Plan":
        """Rebuild a plan written by :meth:`to_dict` (e.g. from saved latents); the estimate is recomputed."""
        from dataclasses import fields

        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names and k != "estimate"}
        for k in ("notes", "reasons", "warnings", "degraded"):
            kw[k] = tuple(kw.get(k, ()))
        kw["latent_shape"] = tuple(kw["latent_shape"])
        kw["budget_device_bytes"] = int(d.get("budget_device_gb", 0) * GB)
        kw["budget_host_bytes"] = int(d.get("budget_host_gb", 0) * GB)
        kw["loras"] = tuple((str(p), float(w)) for p, w in kw.get("loras", ()))  # JSON lists → the plan's tuples
        kw["estimate"] = estimate_memory(spec, kw["width"], kw["height"], kw["num_frames"], kw["strategy"],
                                         kw["vae_tiling"], compute_dtype=kw["dtype"], on_cpu=kw["device"] == "cpu",
                                         quantization=kw.get("quantization", "none"), gguf_path=kw.get("gguf_path"))
        return cls(**kw)

    def explain(self) -> list[str]:
        e = self.estimate
        lines = [
            f"model     {self.model}{'  (RANDOM WEIGHTS: output is noise)' if self.random_weights else ''}",
            f"video     {self.width}x{self.height}, {self.num_frames} frames at {self.fps:g} fps "
            f"({self.duration_s:.2f} s), {self.steps} steps, guidance {self.guidance:g}, seed {self.seed}",
            f"device    {self.device} ({self.dtype})",
            f"strategy  {self.strategy}{' + VAE tiling' if self.vae_tiling else ''}: {STRATEGY_TEXT[self.strategy]}",
            f"memory    peak ≈ {e.peak_device_bytes / GB:.1f} GB on {self.device} "
            f"(budget {self.budget_device_bytes / GB:.1f} GB), host RAM ≈ {e.peak_host_bytes / GB:.1f} GB "
            f"(budget {self.budget_host_bytes / GB:.1f} GB)",
            f"latents   {self.latent_shape[0]}x{self.latent_shape[1]}x{self.latent_shape[2]} → {self.tokens} tokens",
        ]
        opts = [QUANT_TEXT[self.quantization]] if self.quantization != "none" else []
        opts += [f"step cache {self.step_cache}"] if self.step_cache else []
        opts += [f"LoRA {Path(p).name} × {w:g}" for p, w in self.loras]
        opts += [f"attention {self.attention}"] if self.attention != "sdpa" else []
        opts += ["torch.compile (regional)"] if self.compile else []
        lines += [f"options   {'; '.join(opts)}"] if opts else []
        lines += [f"changed   {n}" for n in self.notes]
        lines += [f"why       {r}" for r in self.reasons]
        lines += [f"warning   {w}" for w in self.warnings]
        lines += [f"degraded  {d}" for d in self.degraded]
        return lines


# -- snapping ---------------------------------------------------------------------------------------------------

def snap_size(value: int, multiple: int) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)


def snap_frames(spec: ModelSpec, frames: int) -> int:
    n = spec.frame_rule.snap(frames)
    while n > spec.max_frames:
        n -= spec.frame_rule.step
    return max(1, n)


# -- memory -----------------------------------------------------------------------------------------------------

def activations(spec: ModelSpec, width: int, height: int, frames: int, dtype: str, vae_dtype: str,
                vae_tiling: bool) -> tuple[int, int, int]:
    """(transformer, VAE encode, VAE decode) activation bytes for one run.

    Models traced by ``bench/memtrace.py`` (``spec.traced_activations``) use their traced coefficients × ACT_MARGIN,
    scaled when the run's dtype differs from the traced one; other models (tiny ones) use the generic formula.
    """
    geo = spec.geometry
    pixels = width * height
    tokens = geo.video_tokens(frames, height, width) + geo.text_tokens_joint
    dit = geo.cfg_batch * tokens * (ACT_HIDDEN * spec.hidden_dim + ACT_FFN * spec.ffn_dim) * DTYPE_BYTES[dtype]
    chunk = geo.vae_decode_chunk_frames or frames
    if vae_tiling:
        px, chunk = min(pixels, TILE_PIXELS), min(chunk, TILE_FRAMES)
    else:
        px = pixels
    dec = min(chunk, frames) * px * geo.vae_decoder_channels * DTYPE_BYTES[vae_dtype] * VAE_K
    enc = 0.0
    t = spec.traced_activations
    if t:
        scale = DTYPE_BYTES[dtype] / DTYPE_BYTES[t["dtype"]]
        vscale = DTYPE_BYTES[vae_dtype] / DTYPE_BYTES[t["vae_dtype"]]
        dit = geo.video_tokens(frames, height, width) * t["transformer_bytes_per_token"] * scale * ACT_MARGIN
        e = t.get("encode_tiled" if vae_tiling and "encode_tiled" in t else "encode")
        if e:
            enc = pixels * (e["per_pixel"] + e["per_pixel_frame"] * frames) * vscale * ACT_MARGIN
        d = t.get("tiled" if vae_tiling else "decode")
        if d:
            pf = pixels * frames
            dec = max(d["base"] + d["per_pixel"] * pixels + d["per_pixel_frame"] * pf,
                      d.get("end_per_pixel_frame", 0) * pf) * vscale * ACT_MARGIN
    return int(dit), int(enc), int(dec)


def estimate_memory(spec: ModelSpec, width: int, height: int, frames: int, strategy: str, vae_tiling: bool,
                    compute_dtype: str | None = None, on_cpu: bool = False, quantization: str = "none",
                    gguf_path: str | None = None) -> MemoryEstimate:
    dtype = compute_dtype or spec.dtype
    params = spec.component_params

    def wbytes(c: str) -> int:
        d = spec.component_dtype(c) if compute_dtype is None else (
            spec.component_dtypes.get(c) if spec.component_dtypes.get(c) == "float32" else compute_dtype)
        return params[c] * DTYPE_BYTES[d]

    w = {c: wbytes(c) for c in params}
    full_transformer = w.get("transformer", 0)
    if quantization != "none" and "transformer" in w:
        w["transformer"] = quantized_transformer_bytes(params["transformer"], w["transformer"], quantization, gguf_path)
    total_w = sum(w.values())
    vae_dtype = spec.component_dtype("vae") if compute_dtype is None else (
        "float32" if spec.component_dtypes.get("vae") == "float32" else compute_dtype)
    dit_act, enc_act, vae_act = activations(spec, width, height, frames, dtype, vae_dtype, vae_tiling)
    te_act = 0 if spec.tiny else TEXT_ACT_BYTES
    encoders = [c for c in w if c.startswith("text_encoder") or c == "image_encoder"]
    w_te = sum(w[c] for c in encoders)
    w_tr = sum(v for c, v in w.items() if c.startswith("transformer"))
    w_vae = w.get("vae", 0)
    overhead = 0 if on_cpu else GPU_OVERHEAD
    layers = max(1, spec.num_layers)

    # what sits on the device in each phase
    if strategy == "resident":
        load = total_w
        text, denoise, decode = total_w + te_act, total_w + dit_act, total_w + vae_act
        encode = total_w + enc_act
    elif strategy == "model_offload":  # one component at a time
        load = 0
        text, denoise, decode = w_te + te_act, w_tr + dit_act, w_vae + vae_act
        encode = w_vae + enc_act
    elif strategy in ("group_offload", "group_offload_leaf"):
        # block level: ~3 blocks in flight (current + prefetch) plus non-block layers; leaf level: a few layers
        frac = min(1.0, 3 / layers + 0.03) if strategy == "group_offload" else min(1.0, 1 / (2 * layers) + 0.01)
        te_frac = min(1.0, 3 / 24 + 0.03) if strategy == "group_offload" else 0.03
        load = w_vae  # the VAE stays resident
        text, denoise, decode = w_vae + w_te * te_frac + te_act, w_vae + w_tr * frac + dit_act, w_vae + vae_act
        encode = w_vae + enc_act
    elif strategy == "sequential_offload":
        frac = min(1.0, 1 / (4 * layers))
        load = 0
        text, denoise, decode = w_te * frac + te_act, w_tr * frac + dit_act, w_vae * 0.25 + vae_act
        encode = w_vae * 0.25 + enc_act
    else:
        raise InvalidRequest(f"Unknown memory strategy '{strategy}'.",
                             hint=f"Use one of: auto, {', '.join(GPU_STRATEGIES)}.")
    if on_cpu:  # one memory: everything lives in RAM whatever the strategy
        host = total_w + HOST_OVERHEAD
        load, text, denoise, decode = host, host + te_act, host + dit_act, host + vae_act
        encode = host + enc_act
        device = max(text, encode, denoise, decode)
        host = device
    else:
        load, text, encode, denoise, decode = (x + overhead for x in (load, text, encode, denoise, decode))
        device = max(load, text, encode, denoise, decode)
        host = (max(w.values(), default=0) + HOST_OVERHEAD) if strategy == "resident" else total_w + HOST_OVERHEAD
    if quantization in ("fp8", "int8"):  # loaded at full precision, then cast/quantized: a RAM peak while loading
        load_peak = total_w - w["transformer"] + full_transformer + HOST_OVERHEAD
        host = max(host, load_peak)
        device = max(device, load_peak) if on_cpu else device
    return MemoryEstimate(strategy, vae_tiling, int(device), int(host), int(total_w), int(dit_act), int(vae_act),
                          int(load), int(text), int(denoise), int(decode), quantization=quantization,
                          encode_device_bytes=int(encode), vae_encode_activation_bytes=int(enc_act))


# -- the plan ---------------------------------------------------------------------------------------------------

def plan(request: GenerationRequest, spec: ModelSpec, hardware: Hardware, task: str | None = None,
         suggest: bool = True, image_size: tuple[int, int] | None = None) -> Plan:
    """Turn a request into a concrete, explained plan for this model on this hardware, or raise.

    ``task`` defaults to i2v when the request has an image; ``image_size`` (width, height of the input image) lets
    an image-to-video plan follow the image's aspect ratio when no size was asked for.
    """
    task = task or ("i2v" if request.image else "t2v")
    if request.image and task != "i2v":
        raise InvalidRequest("An input image was given for a text-to-video run.", hint="Drop the image or use i2v.")
    if request.last_image and not request.image:
        raise InvalidRequest("A last frame was given without a first frame.", hint="Pass --image too (API: an image upload).")
    if request.last_image and not spec.supports_last_image:
        from .catalog import all_models

        takers = ", ".join(m.id for m in all_models() if m.supports_last_image)
        raise InvalidRequest(f"{spec.id} cannot condition on a last frame.",
                             hint=f"Drop --last-image (API: the last_image upload), or use a model that supports it ({takers}).")
    if request.image and spec.requires_last_image and not request.last_image:
        raise InvalidRequest(f"{spec.id} makes a video from a first and a last frame: pass the last frame too.",
                             hint="Add --last-image end.jpg (API: a last_image upload; studio: the Last frame box).")
    if not spec.supports(task):
        raise InvalidRequest(
            f"{spec.id} does {', '.join(spec.tasks)}, not {task}.",
            hint="Pick a text-to-video model (see `localvideo models list`)." if task == "t2v" else
            "Pick a model that supports this task (see `localvideo models list`).",
        )
    if task == "i2v" and not request.image:
        raise InvalidRequest(f"{spec.id} makes video from an image: pass one.", hint="Add --image photo.jpg (API: an image upload to POST /v1/jobs/image-to-video).")
    d = spec.defaults
    notes: list[str] = []
    reasons: list[str] = []
    warnings: list[str] = []
    if spec.tiny:
        warnings.append(f"{spec.id} has RANDOM WEIGHTS: the video will be noise. "
                        f"For a real video pull a model, e.g. `localvideo models pull wan2.1-t2v-1.3b`.")

    # frames
    frames = request.num_frames if request.num_frames is not None else d.frames
    if frames > spec.max_frames:
        raise InvalidRequest(
            f"{frames} frames is more than {spec.id} can make in one clip (at most {spec.max_frames}, "
            f"{spec.max_frames / d.fps:.1f} s at {d.fps:g} fps).",
            hint=f"Ask for {spec.max_frames} frames or fewer.",
        )
    snapped = snap_frames(spec, frames)
    if snapped != frames:
        notes.append(f"frames {frames} → {snapped} ({spec.id} needs {spec.frame_rule} frames)")
    frames = snapped
    if request.last_image and frames < 2:  # a first and a last frame: at least two
        frames = spec.frame_rule.step + 1
        notes.append(f"frames {snapped} → {frames} (a first and a last frame need at least {frames})")

    # size
    width = request.width if request.width is not None else d.width
    height = request.height if request.height is not None else d.height
    if task == "i2v" and image_size and request.width is None and request.height is None and not spec.fixed_size:
        iw, ih = image_size
        area = d.width * d.height
        width = snap_size(int(round((area * iw / ih) ** 0.5)), spec.size_multiple)
        height = snap_size(int(round((area * ih / iw) ** 0.5)), spec.size_multiple)
        while width * height > spec.max_pixels:
            width, height = snap_size(int(width * 0.95), spec.size_multiple), snap_size(int(height * 0.95),
                                                                                       spec.size_multiple)
        notes.append(f"size {width}x{height} follows the image's aspect ratio ({iw}x{ih}) at the model's usual area")
    if spec.fixed_size:
        if (width, height) != (d.width, d.height):
            notes.append(f"size {width}x{height} → {d.width}x{d.height} ({spec.id} only works at its native size)")
        width, height = d.width, d.height
    else:
        w2, h2 = snap_size(width, spec.size_multiple), snap_size(height, spec.size_multiple)
        if (w2, h2) != (width, height):
            notes.append(f"size {width}x{height} → {w2}x{h2} ({spec.id} needs multiples of {spec.size_multiple})")
        width, height = w2, h2
    if width * height > spec.max_pixels:
        raise InvalidRequest(
            f"{width}x{height} is larger than {spec.id} supports (at most {spec.max_pixels:,} pixels per frame).",
            hint=f"Try its default size {d.width}x{d.height}.",
        )

    steps = request.steps if request.steps is not None else d.steps
    guidance = request.guidance if request.guidance is not None else d.guidance
    fps = request.fps if request.fps is not None else d.fps
    seed = request.seed if request.seed is not None else random.SystemRandom().randrange(0, 2**32)
    negative = request.negative_prompt if request.negative_prompt is not None else d.negative_prompt
    call_kwargs = dict(spec.call_kwargs)
    ts = call_kwargs.get("timesteps")
    if ts is not None and steps != len(ts):
        call_kwargs.pop("timesteps")
        notes.append(f"custom distilled timesteps dropped: they need exactly {len(ts)} steps, you asked for {steps}")

    # device and strategy
    gpu = hardware.best_gpu
    on_cpu = gpu is None
    if on_cpu:
        device = "cpu"
        dtype = "float32" if spec.tiny else "bfloat16"
        budget_device = budget_host = int(hardware.ram_available_bytes * RAM_USABLE)
        if not spec.tiny:
            gpu_note = hardware.unusable_gpu_note  # a GPU is there but this torch cannot use it: say how to fix it
            warnings.append(f"{gpu_note} A real model on the CPU takes hours per clip." if gpu_note else
                            "No GPU: a real model on the CPU takes hours per clip.")
    else:
        device = gpu.device
        dtype = spec.dtype
        budget_device = int(gpu.free_bytes * VRAM_USABLE)
        budget_host = int(hardware.ram_available_bytes * RAM_USABLE)

    tiling_options = [request.vae_tiling] if request.vae_tiling is not None else [False, True]
    if request.strategy != "auto":
        if on_cpu and request.strategy in NEEDS_ACCELERATOR:
            raise InvalidRequest(f"The {request.strategy} strategy needs a GPU and this machine has none.",
                                 hint="Use --strategy auto (API: strategy \"auto\"), or resident / group_offload on the CPU.")
        candidates = [request.strategy]
    else:
        candidates = ["resident"] if on_cpu else list(GPU_STRATEGIES)

    chosen: MemoryEstimate | None = None
    tried: list[MemoryEstimate] = []
    for strategy, quant in _with_quantization(candidates, request, on_cpu):
        for tiling in tiling_options:
            est = estimate_memory(spec, width, height, frames, strategy, tiling, compute_dtype=dtype, on_cpu=on_cpu,
                                  quantization=quant, gguf_path=request.gguf_path)
            tried.append(est)
            if est.peak_device_bytes <= budget_device and est.peak_host_bytes <= budget_host:
                chosen = est
                break
        if chosen:
            break

    if chosen is None and request.strategy != "auto":
        chosen = tried[-1]
        warnings.append(f"You forced {request.strategy}; the estimate ({chosen.peak_device_bytes / GB:.1f} GB) is "
                        f"over the budget ({budget_device / GB:.1f} GB), so it may run out of memory.")
    if chosen is None:
        best = min(tried, key=lambda e: e.peak_device_bytes)
        where = "RAM" if on_cpu else f"GPU memory ({gpu.name})"
        if best.peak_host_bytes > budget_host and best.peak_device_bytes <= budget_device:
            why = (f"it needs about {best.peak_host_bytes / GB:.1f} GB of system RAM to hold the offloaded weights, "
                   f"and {budget_host / GB:.1f} GB is available")
        else:
            why = (f"even with {best.strategy}{' and VAE tiling' if best.vae_tiling else ''} it needs about "
                   f"{best.peak_device_bytes / GB:.1f} GB of {where}, and {budget_device / GB:.1f} GB is usable")
        raise DoesNotFit(
            f"{spec.id} at {width}x{height}, {frames} frames does not fit this machine: {why}.",
            hint=_suggest(spec, width, height, frames, hardware) if suggest else None,
            model=spec.id,
        )

    est = chosen
    if est.strategy == "resident":
        reasons.append(f"all weights ({est.weights_bytes / GB:.1f} GB) and activations fit in "
                       f"{budget_device / GB:.1f} GB{' of RAM' if on_cpu else ''}")
    else:
        reasons.append(f"resident would need ≈ {tried[0].peak_device_bytes / GB:.1f} GB, more than the "
                       f"{budget_device / GB:.1f} GB budget; {est.strategy} needs ≈ {est.peak_device_bytes / GB:.1f} GB"
                       if request.strategy == "auto" else f"{est.strategy} was requested")
    if est.vae_tiling:
        reasons.append("VAE tiling " + ("was requested" if request.vae_tiling else
                       "is on: decoding the whole clip at once would exceed the budget"))
    run_opts = _run_options(request, spec, est, tried, on_cpu, steps, reasons, warnings)

    geo = spec.geometry
    return Plan(
        model=spec.id, repo=spec.repo, pipeline=(spec.i2v_pipeline or spec.pipeline) if task == "i2v" else spec.pipeline,
        task=task, image=request.image, last_image=request.last_image, family=spec.family, random_weights=spec.tiny,
        prompt=request.prompt, negative_prompt=negative, width=width, height=height, num_frames=frames, fps=fps,
        steps=steps, guidance=guidance, seed=seed, device=device, dtype=dtype, strategy=est.strategy,
        vae_tiling=est.vae_tiling, flow_shift=d.flow_shift, max_sequence_length=spec.max_sequence_length,
        call_kwargs=call_kwargs, latent_shape=geo.latent_shape(frames, height, width),
        tokens=geo.video_tokens(frames, height, width), estimate=est, budget_device_bytes=budget_device,
        budget_host_bytes=budget_host, notes=tuple(notes), reasons=tuple(reasons), warnings=tuple(warnings),
        output=request.output, **run_opts,
    )


def plan_at_defaults(spec: ModelSpec, hardware: Hardware) -> Plan:
    """The plan for ``spec`` at its default settings: "does this model fit this machine?" (doctor, GET /v1/models).

    A model that does text-to-video is planned for it; any other for its first task, with a placeholder first frame
    (i2v at the model's default size) and a placeholder last frame where the model requires one (first-and-last-frame
    models such as Wan 2.1 FLF2V). Raises like ``plan`` when it does not fit.
    """
    task = "t2v" if "t2v" in spec.tasks else spec.tasks[0]
    image = None if task == "t2v" else "first-frame.png"
    last_image = "last-frame.png" if image and spec.requires_last_image else None
    request = GenerationRequest(prompt="fit check", model=spec.id, seed=0, image=image, last_image=last_image)
    return plan(request, spec, hardware, task=task)


def _with_quantization(candidates: list[str], request: GenerationRequest, on_cpu: bool) -> list[tuple[str, str]]:
    """(strategy, quantization) pairs to try in order. With ``quantization="auto"`` every strategy short of sequential
    offload is tried unquantized first, then with fp8 storage, and only then sequential offload: fp8 layerwise
    casting costs a little quality and a little speed, sequential offload costs a lot of speed. int8 and GGUF are
    never picked automatically (int8 needs an extra package; GGUF needs a file)."""
    q = "gguf" if request.gguf_path else request.quantization
    if q == "int8" and not (_installed("optimum.quanto") or _installed("torchao")):
        raise InvalidRequest("int8 weight-only quantization needs optimum-quanto (or torchao), and neither is "
                             "installed.", hint="pip install optimum-quanto, or use --quantization fp8 (API: quantization \"fp8\").")
    if q != "auto":
        return [(s, q) for s in candidates]
    before = [s for s in candidates if s != "sequential_offload"]
    last = [s for s in candidates if s == "sequential_offload"]
    return [(s, "none") for s in before] + [(s, "fp8") for s in before] + [(s, "none") for s in last]


def _run_options(request: GenerationRequest, spec: ModelSpec, est: MemoryEstimate, tried: list[MemoryEstimate],
                 on_cpu: bool, steps: int, reasons: list[str], warnings: list[str]) -> dict:
    """Resolve quantization, step cache, LoRAs, attention backend and compile into Plan fields (with reasons and
    warnings for anything that degrades)."""
    quant = est.quantization
    if quant != "none":
        plain = [e for e in tried if e.quantization == "none"]
        if request.quantization == "auto" and not request.gguf_path and plain:
            best = min(plain, key=lambda e: e.peak_device_bytes)
            reasons.append(f"transformer stored in fp8: unquantized, the best strategy needs ≈ "
                           f"{best.peak_device_bytes / GB:.1f} GB; with fp8 storage {est.strategy} needs ≈ "
                           f"{est.peak_device_bytes / GB:.1f} GB (small quality cost, no sequential offload)")
        else:
            reasons.append(f"transformer: {QUANT_TEXT[quant]} was requested")

    cache, params = request.step_cache, {}
    if cache:
        kind, _, value = cache.partition(":")
        params = spec.step_cache_params(kind)
        if kind == "mag" and value == "calibrate":
            params["calibrate"] = True
        elif kind == "mag" and not params.get("mag_ratios") and load_mag_ratios(spec.id) is None:
            raise mag_ratios_missing(spec.id)  # refused before anything loads (a dry run, a job's submit)
        elif kind == "taylor" and value:
            params["cache_interval"] = int(value)
        elif value:
            params["threshold"] = float(value)
        shown = ("calibrate" if params.get("calibrate") else
                 params.get("cache_interval") if kind == "taylor" else params.get("threshold"))
        cache = f"{kind}:{shown:g}" if isinstance(shown, (int, float)) else f"{kind}:{shown}"
        if kind == "taylor" and steps <= params.get("disable_cache_before_step", 0) + 1:
            warnings.append(f"TaylorSeer computes the first {params['disable_cache_before_step']} steps in full, so "
                            f"with {steps} steps it skips nothing.")

    attention = request.attention
    problem = attention_problem(attention, on_cpu)
    if problem:
        warnings.append(f"Attention backend {attention} is not available ({problem}); using PyTorch SDPA instead.")
        attention = "sdpa"
    compile_ = request.compile
    if compile_ and (problem := compile_problem(on_cpu)):
        warnings.append(f"--compile is ignored: {problem}. Running without compilation.")
        compile_ = False
    return {"quantization": quant, "gguf_path": request.gguf_path, "step_cache": cache, "step_cache_params": params,
            "loras": tuple(request.loras), "attention": attention, "compile": compile_}


def _suggest(spec: ModelSpec, width: int, height: int, frames: int, hardware: Hardware) -> str:
    """Find something that would fit: fewer frames, then a smaller size, then another model."""
    from .catalog import all_models

    def fits(s: ModelSpec, w: int, h: int, f: int) -> bool:
        req = GenerationRequest(prompt="x", model=s.id, width=w, height=h, num_frames=f, seed=0,
                                image=None if "t2v" in s.tasks else "input.png")
        try:
            plan(req, s, hardware, suggest=False)
            return True
        except (DoesNotFit, InvalidRequest):
            return False

    step = spec.frame_rule.step
    f = frames - step
    while f >= 1:
        if fits(spec, width, height, f):
            return f"Try --frames {f} (API: num_frames {f}), or a GPU with more memory."
        f -= 4 * step
    w, h = width, height
    for _ in range(4):
        w, h = snap_size(int(w * 0.75), spec.size_multiple), snap_size(int(h * 0.75), spec.size_multiple)
        if fits(spec, w, h, frames):
            return f"Try --width {w} --height {h} (API: width {w}, height {h}), or a GPU with more memory."
    others = [s for s in all_models(include_tiny=False) if s.id != spec.id and "t2v" in s.tasks
              and fits(s, s.defaults.width, s.defaults.height, s.defaults.frames)]
    if others:
        smallest = min(others, key=lambda s: s.weights_bytes)
        return f"Try a smaller model such as {smallest.id}."
    return "No model in the catalog fits this machine; a GPU with more memory (or more RAM) is needed."


def replan(p: Plan, spec: ModelSpec, *, strategy: str | None = None, vae_tiling: bool | None = None,
           num_frames: int | None = None, width: int | None = None, height: int | None = None,
           degraded: str | None = None) -> Plan:
    """The same plan with some knobs changed (used by the OOM ladder); the estimate is recomputed."""
    from dataclasses import replace

    strategy = strategy or p.strategy
    tiling = p.vae_tiling if vae_tiling is None else vae_tiling
    frames = num_frames or p.num_frames
    w, h = width or p.width, height or p.height
    est = estimate_memory(spec, w, h, frames, strategy, tiling, compute_dtype=p.dtype, on_cpu=p.device == "cpu",
                          quantization=p.quantization, gguf_path=p.gguf_path)
    geo = spec.geometry
    return replace(p, strategy=strategy, vae_tiling=tiling, num_frames=frames, width=w, height=h, estimate=est,
                   latent_shape=geo.latent_shape(frames, h, w), tokens=geo.video_tokens(frames, h, w),
                   degraded=p.degraded + ((degraded,) if degraded else ()))


# -- MagCache ratios (measured once per model by ``--cache mag:calibrate``) --------------------------------------------
def magcache_file(model: str) -> Path:
    """Where ``--cache mag:calibrate`` saves the magnitude ratios it measured for ``model``."""
    from .settings import get_settings

    return get_settings().home / "magcache" / f"{model}.json"


def load_mag_ratios(model: str) -> list[float] | None:
    try:
        data = json.loads(magcache_file(model).read_text())
        ratios = [float(x) for x in data["ratios"]]
        return ratios if ratios else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def mag_ratios_missing(model: str) -> InvalidRequest:
    return InvalidRequest(
        f"MagCache needs magnitude ratios measured for {model}, and none are known yet.",
        hint=f"Run once with --cache mag:calibrate (API: step_cache \"mag:calibrate\"; a full-quality run that "
             f"measures them and saves them to {magcache_file(model)}), then use --cache mag; or use --cache fbc.")
