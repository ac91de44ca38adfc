"""Activation memory of the real architectures, traced on the meta device, against the planner's estimate.

    python bench/memtrace.py [--models all|id,id] [--sizes default|other|all] [--frames N] [--no-decode]
                             [--out rows.jsonl] [--check 0.15]
    python bench/memtrace.py --fit rows.jsonl [more.jsonl ...]   # → localvideo/model_configs/activations.json

No GPU and no weights are needed: every model of the catalog is built at full size from its vendored diffusers
configs (``localvideo/model_configs/``) on PyTorch's *meta* device — tensors with shapes and dtypes but no data —
and the real diffusers pipeline runs two denoising steps (``output_type="latent"``, random prompt embeddings of the
right shape instead of a text encoder; the transformer cut to ``LAYERS`` blocks, which leaves the peak unchanged)
and then localvideo's own VAE decode (``runtime/decode.py``), untiled and tiled; image-to-video pipelines run twice,
the second time with a tiled conditioning encode. A ``TorchDispatchMode`` sees every tensor those calls create and
a finalizer on its storage sees it freed, so the tracer knows the bytes alive at every moment; the peak over a
phase is what that phase needs on top of the weights (which were made before tracing starts). This is
``torch.cuda.max_memory_allocated()`` without the CUDA caching allocator's rounding and fragmentation.

What is modelled rather than traced: ``F.scaled_dot_product_attention`` is replaced by what the CUDA flash /
memory-efficient kernels allocate — the output and a float32 log-sum-exp per query — because on meta (as on CPU)
PyTorch would pick the math kernel and materialize the tokens² attention matrix, which no GPU run does; and the few
host-side computations listed in ``_substitutions`` (scheduler steps, Mochi's autocast, Wan I2V's CLIP encoder).
The conversion of decoded frames to numpy happens on the host and is skipped.

So the figures are exact for "which tensors are alive" and say nothing about allocator slack, the CUDA context or
kernel workspaces: ``bench/gpu.py`` measures those on a GPU. Per model and size the table compares the traced
peaks of the transformer's calls, the VAE decode and the tiled decode with the planner's estimates
(``MemoryEstimate.transformer_activation_bytes`` / ``vae_activation_bytes``); ``--out`` keeps every row (also the
I2V encode, untiled and tiled) for ``--fit``, which writes the planner's per-model coefficients and prints the
planner's estimate / traced for every traced phase.

``--check X`` exits 1 when any estimate/traced ratio is outside [1, 1 + X] (an under-estimate is an OOM the planner
promised would not happen); ``tests/test_memtrace.py`` checks the planner against live traces and the stored points.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

GB = 1024**3
# Text embeddings the pipelines expect instead of a text encoder: (tokens, width); Hunyuan also a pooled CLIP vector.
TEXT = {"wan": (512, 4096), "ltx": (128, 4096), "cogvideox": (226, 4096), "hunyuan": (256, 4096),
        "mochi": (256, 4096)}
TRACE_STEPS = 2  # the second step shows whether anything from the first is still alive
LAYERS = 2  # transformer depth traced (see build_meta_pipeline)
DEPTH_KEYS = ("num_layers", "num_single_layers")  # HunyuanVideo has double- and single-stream blocks


_ACTIVE: list = []  # the tracer in use (the module wrappers report to it)


# -- the tracer -------------------------------------------------------------------------------------------------

def _tracer_classes():
    import torch
    import torch.nn.functional as F
    from torch.overrides import TorchFunctionMode
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    class LiveBytes(TorchDispatchMode):
        """Bytes of tensor storage created inside the mode and still alive; ``peak`` is the high-water mark."""

        def __init__(self) -> None:
            super().__init__()
            self.live: dict[int, int] = {}
            self.current = 0
            self.peak = 0
            self.phases: dict[str, int] = {}  # peak added by a module's call (see _substitutions)

        def __enter__(self):
            _ACTIVE.append(self)
            return super().__enter__()

        def __exit__(self, *exc):
            _ACTIVE.remove(self)
            return super().__exit__(*exc)

        def reset_peak(self) -> None:
            self.peak = self.current

        def _track(self, t) -> None:
            if not isinstance(t, torch.Tensor):
                return
            storage = t.untyped_storage()
            key = storage._cdata
            if key in self.live:  # a view, or an in-place op: no new memory
                return
            n = storage.nbytes()
            self.live[key] = n
            self.current += n
            self.peak = max(self.peak, self.current)
            weakref.finalize(storage, self._freed, key)

        def _freed(self, key: int) -> None:
            self.current -= self.live.pop(key, 0)

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_leaves(out):
                self._track(t)
            return out

    class FlashAttentionMemory(TorchFunctionMode):
        """SDPA as the CUDA flash / memory-efficient kernels allocate it: the output and a float32 LSE per query."""

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is F.scaled_dot_product_attention:
                names = ("query", "key", "value")
                q, _k, v = [*args[:3], *(kwargs[n] for n in names[len(args[:3]):])]
                lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
                out = q.new_empty((*q.shape[:-1], v.shape[-1]))
                del lse  # freed when the kernel returns (kept for backward only)
                return out
            return func(*args, **kwargs)

    return LiveBytes, FlashAttentionMemory


# -- building ---------------------------------------------------------------------------------------------------

def build_meta_pipeline(spec, layers: int | None = LAYERS):
    """The real pipeline of ``spec`` at full size on the meta device, with no text encoder (or image encoder).

    ``layers`` cuts the transformer's depth (None: the real depth). At inference a block's activations are freed
    before the next block runs, so the peak does not depend on depth (checked: Wan 2.1 1.3B traces the same peak
    with 30 blocks and with 2), while tracing time does.
    """
    import diffusers
    import torch

    import inspect

    from gpu import _cast, _config  # bench/gpu.py: the same configs and casting as the GPU benchmark

    parts = {}
    with torch.device("meta"):
        for name, dtype in (("transformer", spec.dtype), ("vae", spec.component_dtype("vae"))):
            cfg = _config(spec, name)
            if name == "transformer" and layers is not None:
                cfg = cfg | {k: layers for k in DEPTH_KEYS if k in cfg}
            model = getattr(diffusers, cfg["_class_name"]).from_config(
                {k: v for k, v in cfg.items() if not k.startswith("_")})
            parts[name] = _cast(model, getattr(torch, dtype)).eval()
    scfg = _config(spec, "scheduler")
    parts["scheduler"] = getattr(diffusers, scfg["_class_name"]).from_config(scfg)
    cls = getattr(diffusers, spec.pipeline)
    others = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", *parts)]
    pipe = cls(**parts, **{p: None for p in others})  # no text encoder, tokenizer or image encoder
    pipe.set_progress_bar_config(disable=True)
    return pipe


def prompt_kwargs(spec):
    import torch

    n, dim = TEXT[spec.family]
    dtype = getattr(torch, spec.dtype)
    kw = {"prompt_embeds": torch.empty(1, n, dim, dtype=dtype, device="meta")}
    if spec.geometry.cfg_batch == 2 or spec.family == "wan":
        kw["negative_prompt_embeds"] = torch.empty(1, n, dim, dtype=dtype, device="meta")
    if spec.family in ("ltx", "hunyuan", "mochi"):
        kw["prompt_attention_mask"] = torch.ones(1, n, dtype=torch.long, device="meta")
        if "negative_prompt_embeds" in kw:
            kw["negative_prompt_attention_mask"] = torch.ones(1, n, dtype=torch.long, device="meta")
    if spec.family == "hunyuan":
        kw["pooled_prompt_embeds"] = torch.empty(1, 768, dtype=dtype, device="meta")
    return kw


def sizes_for(spec) -> list[tuple[str, int, int]]:
    """The model's default size and, where the model allows it, the other of 480p / 720p."""
    from localvideo.planner import snap_size

    d = spec.defaults
    out = [("default", d.width, d.height)]
    m = spec.size_multiple
    for name, (w, h) in (("480p", (832, 480)), ("720p", (1280, 720))):
        w, h = snap_size(w, m), snap_size(h, m)
        if (w, h) != (d.width, d.height) and w * h <= spec.max_pixels and abs(w * h - d.width * d.height) > 1000:
            out.append((name, w, h))
    return out


# -- one trace --------------------------------------------------------------------------------------------------

@dataclass
class Trace:
    model: str
    size: str
    width: int
    height: int
    frames: int
    tokens: int
    denoise_gb: float | None = None
    denoise_est_gb: float | None = None
    transformer_gb: float | None = None  # the transformer's calls alone
    encode_gb: float | None = None  # the VAE encoder's calls alone (image-to-video conditioning)
    encode_tiled_gb: float | None = None  # the same with VAE tiling on
    decode_gb: float | None = None
    decode_est_gb: float | None = None
    tiled_gb: float | None = None
    tiled_est_gb: float | None = None
    seconds: float = 0.0
    note: str = ""

    def ratios(self) -> dict[str, float]:
        out = {}
        for phase in ("denoise", "decode", "tiled"):
            got, est = getattr(self, f"{phase}_gb"), getattr(self, f"{phase}_est_gb")
            if phase == "denoise":  # the transformer's share (an I2V pipeline call also VAE-encodes its image)
                got = self.transformer_gb or got
            if got and est:
                out[phase] = est / got
        return out


def pipeline_kwargs(spec, width: int, height: int, frames: int) -> dict:
    """What the pipeline is called with: the catalog's defaults, prompt embeddings, and for I2V a blank image."""
    import torch

    cfg_like = spec.geometry.cfg_batch == 2 or spec.family == "wan"  # Wan runs the negative pass separately
    kw = dict(height=height, width=width, num_frames=frames, num_inference_steps=TRACE_STEPS,
              guidance_scale=spec.defaults.guidance if cfg_like or spec.family == "hunyuan" else 1.0,
              output_type="latent", **prompt_kwargs(spec))
    if "ImageToVideo" in spec.pipeline:
        from PIL import Image

        kw["image"] = Image.new("RGB", (width, height), (128, 128, 128))
    return kw


def _substitutions(pipe, spec):
    """Stand-ins for the few host-side computations that cannot run on meta tensors (restored by the caller).

    - ``scheduler.step``: the schedulers index their tables with the timestep (``nonzero``, ``.item()``), which needs
      data. Its memory is a few latent-sized tensors (MBs), so it is traced as allocating the next latents.
    - ``torch.autocast(device_type="meta")`` (Mochi's RoPE) is not supported: a no-op context instead.
    - ``nonzero`` on meta (Mochi selects the prompt's valid tokens with it) is allowed to assume every element is
      non-zero — true here: the prompt masks are all ones.
    - Wan 2.1 I2V's CLIP image encoder is not built: ``encode_image`` returns embeddings of the right shape
      (257 tokens of 1280, ViT-H/14's penultimate layer).
    """
    import contextlib

    import torch

    def step(model_output, timestep, sample, *args, return_dict=True, **kwargs):
        nxt = sample.new_empty(sample.shape)
        return (nxt, nxt) if not return_dict else type("StepOutput", (), {"prev_sample": nxt})()

    pipe.scheduler.step = step
    autocast = torch.autocast

    def meta_autocast(device_type, *args, **kwargs):
        return contextlib.nullcontext() if device_type == "meta" else autocast(device_type, *args, **kwargs)

    torch.autocast = meta_autocast
    import torch.fx.experimental._config as fx_config

    nonzero = fx_config.meta_nonzero_assume_all_nonzero
    fx_config.meta_nonzero_assume_all_nonzero = True
    if spec.family == "wan" and "ImageToVideo" in spec.pipeline:
        pipe.encode_image = lambda image, device=None: torch.empty(1, 257, 1280, dtype=getattr(torch, spec.dtype),
                                                                   device="meta")

    def phase_peak(obj, attr: str, name: str):
        """Record the peak a call of ``obj.attr`` adds on top of what was alive before it (``tracer.phases``)."""
        inner = getattr(obj, attr)

        def forward(*args, **kwargs):
            tracer = _ACTIVE[-1]
            before, base = tracer.peak, tracer.current
            tracer.peak = base
            try:
                return inner(*args, **kwargs)
            finally:
                tracer.phases[name] = max(tracer.phases.get(name, 0), tracer.peak - base)
                tracer.peak = max(before, tracer.peak)

        setattr(obj, attr, forward)

    phase_peak(pipe.transformer, "forward", "transformer")
    phase_peak(pipe.vae, "encode", "vae_encode")

    def restore():
        torch.autocast = autocast
        fx_config.meta_nonzero_assume_all_nonzero = nonzero

    return restore


def trace_model(spec, width: int, height: int, frames: int, size: str = "", decode_phases=(False, True)) -> Trace:
    """Trace denoising (two steps, ``LAYERS`` blocks) and the VAE decode (untiled / tiled, as asked)."""
    import numpy as np
    import torch

    from localvideo.planner import estimate_memory
    from localvideo.runtime.decode import decode

    LiveBytes, FlashAttentionMemory = _tracer_classes()
    t0 = time.perf_counter()
    tokens = spec.geometry.video_tokens(frames, height, width)
    row = Trace(spec.id, size, width, height, frames, tokens)
    est = estimate_memory(spec, width, height, frames, "resident", False)
    est_tiled = estimate_memory(spec, width, height, frames, "resident", True)
    row.denoise_est_gb = est.transformer_activation_bytes / GB

    pipe = build_meta_pipeline(spec)
    shapes: list = []
    pipe.video_processor.postprocess_video = lambda video, output_type="np": (  # host-side; not device memory
        shapes.append(tuple(video.shape)) or np.zeros((1, 1, 1, 1, 3), dtype=np.float32))
    tracer = LiveBytes()
    restore = _substitutions(pipe, spec)
    try:
        with torch.inference_mode(), FlashAttentionMemory(), tracer:
            latents = pipe(**pipeline_kwargs(spec, width, height, frames))[0]
            row.denoise_gb = tracer.peak / GB
            row.transformer_gb = tracer.phases.get("transformer", 0) / GB
            row.encode_gb = tracer.phases.get("vae_encode", 0) / GB or None
            if row.encode_gb and decode_phases:  # image-to-video: the conditioning encode again, tiled
                pipe.vae.enable_tiling()
                tracer.phases.pop("vae_encode")
                pipe(**pipeline_kwargs(spec, width, height, frames))
                row.encode_tiled_gb = tracer.phases.get("vae_encode", 0) / GB or None
                pipe.vae.disable_tiling()
            for tiled in decode_phases:
                if tiled:
                    pipe.vae.enable_tiling()
                tracer.reset_peak()
                decode(pipe, latents, spec.family, num_frames=frames, height=height, width=width)
                name = "tiled" if tiled else "decode"
                setattr(row, f"{name}_gb", (tracer.peak - tracer.current) / GB)
                setattr(row, f"{name}_est_gb", (est_tiled if tiled else est).vae_activation_bytes / GB)
    finally:
        restore()
    if shapes and shapes[0][2] != frames:
        row.note = f"decoded {shapes[0][2]} frames, not {frames}"
    row.seconds = time.perf_counter() - t0
    return row


# -- report -----------------------------------------------------------------------------------------------------

HEADER = ("| model | size | frames | tokens | transformer traced GB | planner GB | est/traced | decode traced GB | planner GB "
          "| est/traced | tiled decode traced GB | planner GB | est/traced | note |")


def _f(v, spec=".2f") -> str:
    return "n/a" if v is None else format(v, spec)


def table_row(r: Trace) -> str:
    q = r.ratios()
    return (f"| {r.model} | {r.size} {r.width}x{r.height} | {r.frames} | {r.tokens} | "
            f"{_f(r.transformer_gb or r.denoise_gb)} | "
            f"{_f(r.denoise_est_gb)} | {_f(q.get('denoise'))} | {_f(r.decode_gb)} | {_f(r.decode_est_gb)} | "
            f"{_f(q.get('decode'))} | {_f(r.tiled_gb)} | {_f(r.tiled_est_gb)} | {_f(q.get('tiled'))} | {r.note} |")


def short_frames(spec) -> int:
    """A short clip on the model's frame rule: the second point of each sweep (about a quarter of the default)."""
    from localvideo.planner import snap_frames

    return snap_frames(spec, max(spec.frame_rule.step + 1, spec.defaults.frames // 4))


def sweep_points(spec, frames: int | None, sizes: str) -> list[tuple[str, int, int, int]]:
    """(size, width, height, frames) to trace: each size at the default and a short length (``--frames``: only it)."""
    points = []
    for i, (size, w, h) in enumerate(sizes_for(spec)):
        if (sizes == "default" and i) or (sizes == "other" and not i):
            continue
        for f in ([frames] if frames else sorted({spec.defaults.frames, short_frames(spec)})):
            points.append((size, w, h, f))
    return points


# -- fitting the planner's coefficients ---------------------------------------------------------------------------

def _two_point(points, x_of, y_of):
    """Line through the smallest and largest x (slope ≥ 0): (intercept, slope)."""
    pts = sorted(points, key=x_of)
    (x0, y0), (x1, y1) = (x_of(pts[0]), y_of(pts[0])), (x_of(pts[-1]), y_of(pts[-1]))
    slope = max(0.0, (y1 - y0) / (x1 - x0)) if x1 != x0 else 0.0
    return y0 - slope * x0, slope


def fit(rows: list[dict]) -> dict:
    """Per-model coefficients for ``planner.activations`` from traced rows (bytes; see the planner's docstring).

    - transformer: the largest traced bytes per video token (the traces are linear in tokens, no intercept);
    - encode / decode (untiled): pixels × (per_pixel + per_pixel_frame × frames), through the shortest and longest
      clip at the model's default size (the peak is linear in pixels: one latent chunk's working set plus the
      decoded video accumulating);
    - tiled decode: the larger of a line in pixels × frames through the two smallest traced clips (one tile's
      working set plus what accumulates meanwhile) and ``end_per_pixel_frame`` × pixels × frames (at the end every
      decoded tile and the blended video are alive; from the largest clip traced);
    - then each phase is scaled up, if needed, until it covers every traced point of that model ("cover").
    """
    from localvideo.catalog import get_model

    out: dict[str, dict] = {}
    by_model: dict[str, list[dict]] = {}
    for r in rows:
        if not r.get("note", "").startswith("not traced"):
            by_model.setdefault(r["model"], []).append(r)

    def value(coef: dict, r: dict) -> float:
        px, pf = r["width"] * r["height"], r["width"] * r["height"] * r["frames"]
        return max(coef.get("base", 0) + coef["per_pixel"] * px + coef["per_pixel_frame"] * pf,
                   coef.get("end_per_pixel_frame", 0) * pf)

    def cover(coef: dict, pts: list[dict], key: str) -> dict:
        need = max(r[key] * GB / value(coef, r) for r in pts)
        if need > 1:
            coef = {k: (v * need if isinstance(v, float | int) else v) for k, v in coef.items()} | {"cover": need}
        return coef

    for model, rs in sorted(by_model.items()):
        spec = get_model(model)
        entry = {"dtype": spec.dtype, "vae_dtype": spec.component_dtype("vae"),
                 "transformer_bytes_per_token": int(max(r["transformer_gb"] * GB / r["tokens"] for r in rs
                                                        if r.get("transformer_gb")))}
        for key, name in (("encode_gb", "encode"), ("encode_tiled_gb", "encode_tiled"), ("decode_gb", "decode")):
            pts = [r for r in rs if r.get(key)]
            if not pts:
                continue
            size = next((r["size"] for r in pts if r["size"] == "default"), pts[0]["size"])
            same = [r for r in pts if r["size"] == size]
            px = same[0]["width"] * same[0]["height"]
            a, b = _two_point(same, lambda r: r["frames"], lambda r, k=key: r[k] * GB / px)
            entry[name] = cover({"base": 0, "per_pixel": a, "per_pixel_frame": b}, pts, key)
        tiled = [r for r in rs if r.get("tiled_gb")]
        if tiled:
            def pf(r):
                return r["width"] * r["height"] * r["frames"]

            smallest = sorted(tiled, key=pf)[:2]
            base, slope = _two_point(smallest, pf, lambda r: r["tiled_gb"] * GB)
            largest = max(tiled, key=pf)
            end = largest["tiled_gb"] * GB / pf(largest)
            entry["tiled"] = cover({"base": base, "per_pixel": 0, "per_pixel_frame": slope,
                                    "end_per_pixel_frame": end}, tiled, "tiled_gb")
        entry["points"] = [{k: r[k] for k in ("size", "width", "height", "frames", "tokens", "transformer_gb",
                                              "encode_gb", "encode_tiled_gb", "decode_gb", "tiled_gb")
                            if r.get(k) is not None}
                           for r in rs]
        out[model] = entry
    # models with the same VAE (identical config) share its encode/decode coefficients: traced once
    from localvideo.catalog import all_models

    def vae_key(spec) -> str:
        from gpu import _config

        return json.dumps({k: v for k, v in _config(spec, "vae").items() if not k.startswith("_")}, sort_keys=True)

    for spec in all_models():
        if spec.tiny or spec.id not in out:
            continue
        for other in all_models():
            if other.tiny or other.id == spec.id or other.id not in out or vae_key(other) != vae_key(spec):
                continue
            for k in ("decode", "tiled"):
                if k not in out[spec.id] and k in out[other.id] and other.component_dtype("vae") == \
                        spec.component_dtype("vae"):
                    out[spec.id][k] = dict(out[other.id][k], traced_on=other.id)
    return out


def compare(rows: list[dict]) -> list[tuple[str, float]]:
    """Planner estimate / traced peak for every traced phase of ``rows``, with the planner as it is now."""
    from localvideo.catalog import get_model
    from localvideo.planner import estimate_memory

    out = []
    for r in rows:
        if r.get("note", "").startswith("not traced"):
            continue
        spec = get_model(r["model"])
        args = (spec, r["width"], r["height"], r["frames"], "resident")
        est, tiled = estimate_memory(*args, False), estimate_memory(*args, True)
        name = f"{r['model']} {r['width']}x{r['height']}x{r['frames']}"
        pairs = (("transformer", r.get("transformer_gb"), est.transformer_activation_bytes),
                 ("encode", r.get("encode_gb"), est.vae_encode_activation_bytes),
                 ("encode_tiled", r.get("encode_tiled_gb"), tiled.vae_encode_activation_bytes),
                 ("decode", r.get("decode_gb"), est.vae_activation_bytes),
                 ("tiled", r.get("tiled_gb"), tiled.vae_activation_bytes))
        out += [(f"{name} {phase}", e / (g * GB)) for phase, g, e in pairs if g]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="all", help="catalog ids, comma separated, or 'all' (every non-tiny model)")
    ap.add_argument("--frames", type=int, default=None,
                    help="trace this length only (default: each model's default length and a short one)")
    ap.add_argument("--sizes", choices=("default", "other", "all"), default="all",
                    help="the model's default size, the other of 480p/720p where the model allows it, or both")
    ap.add_argument("--no-decode", action="store_true", help="denoising only (decode tracing is the slow part)")
    ap.add_argument("--out", type=Path, default=None, help="append each row as a JSON line to this file")
    ap.add_argument("--fit", type=Path, nargs="+", default=None, metavar="JSONL",
                    help="fit the planner's coefficients from rows written with --out, and write them to "
                         "localvideo/model_configs/activations.json (no tracing)")
    ap.add_argument("--check", type=float, default=None, metavar="X",
                    help="exit 1 unless every estimate/traced ratio lies in [1, 1+X]")
    args = ap.parse_args(argv)

    import diffusers
    import torch

    from localvideo.catalog import all_models, get_model

    diffusers.utils.logging.set_verbosity_error()
    if args.fit:
        from localvideo.catalog import CONFIGS_DIR

        rows = [json.loads(line) for f in args.fit for line in f.read_text().splitlines() if line.strip()]
        models = fit(rows)
        dest = CONFIGS_DIR / "activations.json"
        dest.write_text(json.dumps({
            "about": "Activation memory traced on the meta device by bench/memtrace.py (real architectures, flash-"
                     "attention memory model, no allocator slack); read by localvideo.planner.activations. "
                     "Regenerate: python bench/memtrace.py --out rows.jsonl && python bench/memtrace.py --fit rows.jsonl",
            "traced_with": f"torch {torch.__version__.split('+')[0]}, diffusers {diffusers.__version__}",
            "models": models}, indent=1) + "\n")
        print(f"wrote {dest} ({len(models)} models)")
        from localvideo import catalog

        catalog._activations.cache_clear()
        ratios = compare(rows)
        for name, q in ratios:
            print(f"{q:6.2f}  {name}")
        lo, hi = min(q for _, q in ratios), max(q for _, q in ratios)
        print(f"estimate/traced over {len(ratios)} traced phases: {lo:.2f} … {hi:.2f}")
        return 0
    specs = [s for s in all_models() if not s.tiny] if args.models == "all" else [
        get_model(m) for m in args.models.split(",")]
    print(f"# bench/memtrace.py — torch {torch.__version__}, diffusers {diffusers.__version__}; meta device, "
          f"flash-attention memory model, {TRACE_STEPS} steps, transformer cut to {LAYERS} blocks", flush=True)
    print(HEADER + "\n|" + "---|" * (HEADER.count("|") - 1), flush=True)
    bad = []
    for spec in specs:
        for size, w, h, frames in sweep_points(spec, args.frames, args.sizes):
            try:
                r = trace_model(spec, w, h, frames, size, decode_phases=() if args.no_decode else (False, True))
            except Exception as e:  # noqa: BLE001 - one architecture that does not trace must not hide the rest
                r = Trace(spec.id, size, w, h, frames, 0, note=f"not traced: {type(e).__name__}: {e}"[:160])
            print(table_row(r), flush=True)
            if args.out:
                with args.out.open("a") as fh:
                    fh.write(json.dumps(asdict(r) | {"ratios": r.ratios()}) + "\n")
            if args.check is not None:
                bad += [f"{r.model} {r.size} {r.frames} {k} {v:.2f}" for k, v in r.ratios().items()
                        if not 1.0 <= v <= 1.0 + args.check]
    if args.check is not None:
        if bad:
            print("outside [1, 1+%.2f]: %s" % (args.check, "; ".join(bad)))
            return 1
        print(f"every estimate within [1, 1+{args.check:.2f}] of the traced peak")
    return 0


if __name__ == "__main__":
    sys.exit(main())
