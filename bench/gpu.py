"""GPU benchmark: real-size architectures with random weights, measured against the planner.

    python bench/gpu.py [--models wan2.1-t2v-1.3b,ltx-video-2b] [--sizes 480p,720p] [--steps 3] [--frames N]
                        [--modes resident,group_offload,fbc] [--json]
    python bench/gpu.py --smoke        # CPU: the same code on the real configs cut to 2 layers, at 64x64

For each model and size it builds the real transformer and VAE from ``localvideo/model_configs/`` (the vendored
diffusers configs) with random weights directly on the GPU (bf16; Wan's VAE fp32 as in the catalog), puts them in
the real diffusers pipeline (``WanPipeline`` / ``LTXPipeline``) with *random prompt embeddings of the right shape*
instead of a text encoder (Wan: (1, 512, 4096); LTX: (1, 128, 4096) plus an attention mask), and runs ``--steps``
denoising steps with classifier-free guidance in three modes:

- ``resident``: everything on the GPU; this run also decodes once with the VAE (the decode phase of the estimate);
- ``group_offload``: block-level group offloading with CUDA streams (``use_stream=True``), VAE resident — what
  localvideo's ``group_offload`` strategy does; denoising only;
- ``fbc``: resident with First Block Cache at the catalog's default threshold; denoising only.

Per run it prints seconds per step (median of the steps after the first, which includes warm-up), the measured peak
(``torch.cuda.max_memory_reserved`` + the CUDA context, i.e. what the process holds on the device, and
``max_memory_allocated``), the planner's estimate for that strategy and phase (``localvideo.planner.estimate_memory``
minus the text encoder, which is not built here) and estimate/measured, the speed-up against resident and how many
of the last block's computations actually ran (FBC skips them when the first block's output barely changes; with
random weights that rate says nothing about real checkpoints, the memory and the per-step cost do).

The markdown table goes to stdout and, when ``$OUT`` is set, to ``$OUT/gpu_table.md`` (plus ``gpu_runs.json``).

On the device machine (Python 3.12 with torch, transformers, accelerate, pillow, requests…, but no diffusers, no
pydantic and no network) carry the wheels that ``bench/gpu_prepare.sh`` downloads here into ``bench/wheels/``
(gitignored, ≈ 9 MB) and install them there with ``--no-deps --target /tmp/site`` (the exact command is in that
script). Nothing else is needed: no hub, no weights, no localvideo install (this file puts the repository on
``sys.path``). That install was checked offline in a fresh venv holding only torch, transformers, accelerate, pillow
and requests (``PYVER=3.11 bash bench/gpu_prepare.sh``), where ``--smoke`` then ran.

The activation part of the planner's estimate comes from ``bench/memtrace.py`` (traced on the meta device), so the
ratio measured here isolates what only a GPU shows: the CUDA context, kernel workspaces and the caching allocator's
slack (``planner.GPU_OVERHEAD``, ``planner.ACT_MARGIN``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GB = 1024**3
SIZES = {  # per model family: name -> (width, height); LTX-Video 2B tops out at 1216x704
    "wan": {"480p": (832, 480), "720p": (1280, 720)},
    "ltx": {"480p": (832, 480), "720p": (1216, 704)},
}
PROMPT_TOKENS = {"wan": 512, "ltx": 128}
SMOKE_LAYERS = 2  # FBC needs at least two blocks


@dataclass
class Row:
    model: str
    size: str
    frames: int
    mode: str
    steps: int
    s_per_step: float | None = None
    peak_gb: float | None = None  # reserved + CUDA context
    allocated_gb: float | None = None
    estimate_gb: float | None = None
    phase: str = ""
    ratio: float | None = None  # estimate / measured
    speedup: float | None = None  # resident s/step ÷ this mode's s/step
    block_calls: str = ""
    decode_s: float | None = None
    note: str = ""
    step_times: list = field(default_factory=list)


# -- building ---------------------------------------------------------------------------------------------------

def _config(spec, component: str) -> dict:
    from localvideo.catalog import CONFIGS_DIR

    return json.loads((CONFIGS_DIR / spec.config_dir / f"{component}.json").read_text())


def build_pipeline(spec, device: str, dtype, vae_dtype, layers: int | None = None):
    """The real diffusers pipeline of ``spec`` with random weights and no text encoder / tokenizer."""
    import diffusers
    import torch

    tcfg = {k: v for k, v in _config(spec, "transformer").items() if not k.startswith("_")}
    if layers is not None:
        tcfg["num_layers"] = layers
    vcfg = {k: v for k, v in _config(spec, "vae").items() if not k.startswith("_")}
    scfg = _config(spec, "scheduler")
    tcls = getattr(diffusers, _config(spec, "transformer")["_class_name"])
    vcls = getattr(diffusers, _config(spec, "vae")["_class_name"])
    torch.manual_seed(0)
    with torch.device(device):
        transformer = _cast(tcls.from_config(tcfg), dtype).eval()
        vae = _cast(vcls.from_config(vcfg), vae_dtype).eval()
    scheduler = getattr(diffusers, scfg["_class_name"]).from_config(scfg)
    pipe = getattr(diffusers, spec.pipeline)(tokenizer=None, text_encoder=None, transformer=transformer, vae=vae,
                                             scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _cast(model, dtype):
    """Cast like ``from_pretrained(torch_dtype=…)`` does: modules the class keeps in fp32 stay fp32."""
    import torch

    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    model.to(dtype)
    if dtype != torch.float32 and keep:
        for name, module in model.named_modules():
            if any(k in name.split(".") for k in keep):
                module.to(torch.float32)
    return model


def prompt_kwargs(spec, device: str, dtype) -> dict:
    import torch

    n, dim = PROMPT_TOKENS[spec.family], 4096
    g = torch.Generator("cpu").manual_seed(1)
    kw = {"prompt_embeds": torch.randn(1, n, dim, generator=g).to(device, dtype),
          "negative_prompt_embeds": torch.randn(1, n, dim, generator=g).to(device, dtype)}
    if spec.family == "ltx":
        kw["prompt_attention_mask"] = torch.ones(1, n, dtype=torch.long, device=device)
        kw["negative_prompt_attention_mask"] = torch.ones(1, n, dtype=torch.long, device=device)
    return kw


def last_block_counter(pipe):
    """Count real computations of the last transformer block (a hook on its first attention's query projection)."""
    from localvideo.runtime.options import transformer_blocks

    count = [0]
    handle = transformer_blocks(pipe.transformer)[-1].attn1.to_q.register_forward_hook(
        lambda *_: count.__setitem__(0, count[0] + 1))
    return count, handle


# -- estimate ---------------------------------------------------------------------------------------------------

def planner_estimate(spec, width: int, height: int, frames: int, strategy: str, dtype_name: str, on_cpu: bool):
    """The planner's per-phase device estimate for ``strategy``, without the text encoder (not built here)."""
    from localvideo.catalog import DTYPE_BYTES
    from localvideo.planner import estimate_memory

    est = estimate_memory(spec, width, height, frames, strategy, False, compute_dtype=dtype_name, on_cpu=on_cpu)
    te = sum(n * DTYPE_BYTES[dtype_name] for c, n in spec.component_params.items()
             if c.startswith("text_encoder"))
    resident_te = te if strategy == "resident" else 0  # other strategies keep it off the device while denoising
    return {"denoise": est.denoise_device_bytes - resident_te, "decode": est.decode_device_bytes - resident_te,
            "peak": max(est.denoise_device_bytes, est.decode_device_bytes) - resident_te}


# -- one run ----------------------------------------------------------------------------------------------------

def run_mode(pipe, spec, mode: str, width: int, height: int, frames: int, steps: int, device: str, dtype,
             decode: bool) -> Row:
    import torch

    cuda = device.startswith("cuda")
    row = Row(spec.id, "", frames, mode, steps)
    counter, handle = last_block_counter(pipe)
    if mode == "fbc":
        from diffusers import FirstBlockCacheConfig

        pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=spec.step_cache_params("fbc")["threshold"]))
    stamps: list[float] = []

    def on_step(_p, i, _t, kw):
        if cuda:
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
        return {}

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    try:
        with torch.inference_mode():
            out = pipe(height=height, width=width, num_frames=frames, num_inference_steps=steps,
                       guidance_scale=5.0 if spec.family == "wan" else 3.0,
                       output_type="np" if decode else "latent", generator=torch.Generator("cpu").manual_seed(0),
                       callback_on_step_end=on_step, **prompt_kwargs(spec, device, dtype))
        if cuda:
            torch.cuda.synchronize()
        t_end = time.perf_counter()
        del out
    except torch.OutOfMemoryError as e:
        row.note = f"OOM: {str(e).splitlines()[0][:120]}"
        return row
    finally:
        handle.remove()
        if mode == "fbc":
            pipe.transformer.disable_cache()
    times = [b - a for a, b in zip([t0] + stamps[:-1], stamps)]
    row.step_times = [round(t, 4) for t in times]
    timed = times[1:] or times
    row.s_per_step = statistics.median(timed)
    row.decode_s = (t_end - stamps[-1]) if decode and stamps else None
    passes = 2 if spec.geometry.cfg_batch == 1 else 1  # Wan runs cond and uncond one after the other
    row.block_calls = f"{counter[0]}/{steps * passes}"
    if cuda:
        free, total = torch.cuda.mem_get_info()
        context = (total - free) - torch.cuda.memory_reserved()  # CUDA context and other non-PyTorch memory
        row.peak_gb = (torch.cuda.max_memory_reserved() + max(context, 0)) / GB
        row.allocated_gb = torch.cuda.max_memory_allocated() / GB
    return row


def bench_model(spec, sizes: list[str], modes: list[str], steps: int, frames: int | None, device: str,
                smoke: bool, emit) -> list[Row]:
    """All modes at each size; a fresh pipeline per size, group offload last (its hooks are not undone)."""
    import torch

    on_cpu = not device.startswith("cuda")
    dtype_name = "float32" if on_cpu else spec.dtype
    dtype = getattr(torch, dtype_name)
    vae_dtype = getattr(torch, "float32" if on_cpu else spec.component_dtype("vae"))
    modes = sorted(modes, key=lambda m: m == "group_offload")
    rows: list[Row] = []
    for size in sizes:
        width, height = (64, 64) if smoke else SIZES[spec.family][size]
        f = frames or (spec.frame_rule.step + 1 if smoke else spec.defaults.frames)
        t0 = time.perf_counter()
        pipe = build_pipeline(spec, device, dtype, vae_dtype, layers=SMOKE_LAYERS if smoke else None)
        print(f"# {spec.id} {size}: built {type(pipe.transformer).__name__} "
              f"({sum(p.numel() for p in pipe.transformer.parameters()) / 1e9:.2f} B params"
              f"{f', {SMOKE_LAYERS} layers' if smoke else ''}) and {type(pipe.vae).__name__} on {device} in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
        resident_s = None
        for mode in modes:
            if mode == "group_offload" and on_cpu:
                row = Row(spec.id, f"{size} {width}x{height}", f, mode, steps,
                          note="skipped: group offload with CUDA streams needs a GPU")
                rows.append(row)
                emit(row)
                continue
            if mode == "group_offload":
                pipe.transformer.enable_group_offload(onload_device=torch.device(device),
                                                      offload_device=torch.device("cpu"), offload_type="block_level",
                                                      num_blocks_per_group=1, use_stream=True)
            row = run_mode(pipe, spec, mode, width, height, f, steps, device, dtype, decode=(mode == "resident"))
            row.size = f"{size} {width}x{height}"
            strategy = "group_offload" if mode == "group_offload" else "resident"
            row.phase = "peak (denoise+decode)" if mode == "resident" else "denoise"
            if smoke:  # the estimate is for the full-size model; the smoke model has its layers cut
                row.phase = "n/a: layers cut"
            else:
                est = planner_estimate(spec, width, height, f, strategy, dtype_name, on_cpu)
                row.estimate_gb = (est["peak"] if mode == "resident" else est["denoise"]) / GB
            if row.peak_gb:
                row.ratio = row.estimate_gb / row.peak_gb
            if mode == "resident":
                resident_s = row.s_per_step
            if resident_s and row.s_per_step:
                row.speedup = resident_s / row.s_per_step
            rows.append(row)
            emit(row)
            if not on_cpu:
                torch.cuda.empty_cache()
        del pipe
        if not on_cpu:
            torch.cuda.empty_cache()
    return rows


# -- report -----------------------------------------------------------------------------------------------------

HEADER = ("| model | size | frames | mode | s/step | peak GB (measured) | allocated GB | estimate GB (phase) | "
          "est/measured | speed-up vs resident | last-block computes | decode s | note |")


def fmt(v, spec: str = ".2f") -> str:
    return "n/a" if v is None else format(v, spec)


def table_row(r: Row) -> str:
    return (f"| {r.model} | {r.size} | {r.frames} | {r.mode} | {fmt(r.s_per_step, '.3f')} | {fmt(r.peak_gb)} | "
            f"{fmt(r.allocated_gb)} | {fmt(r.estimate_gb)} ({r.phase}) | {fmt(r.ratio)} | {fmt(r.speedup)} | "
            f"{r.block_calls} | {fmt(r.decode_s, '.1f')} | {r.note} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="wan2.1-t2v-1.3b,ltx-video-2b")
    ap.add_argument("--sizes", default="480p,720p")
    ap.add_argument("--modes", default="resident,group_offload,fbc")
    ap.add_argument("--steps", type=int, default=3, help="denoising steps per run (the first is warm-up)")
    ap.add_argument("--frames", type=int, default=None, help="default: the model's default frame count")
    ap.add_argument("--smoke", action="store_true", help="CPU smoke test: real configs cut to 2 layers, 64x64")
    ap.add_argument("--json", action="store_true", help="also print the rows as JSON")
    args = ap.parse_args(argv)

    import torch

    from localvideo.catalog import get_model

    if args.smoke:
        device, sizes, steps = "cpu", ["smoke"], min(args.steps, 2)
    else:
        if not torch.cuda.is_available():
            print("No CUDA GPU: run with --smoke for the CPU smoke test.", file=sys.stderr)
            return 2
        device, sizes, steps = "cuda", args.sizes.split(","), args.steps
    import diffusers

    diffusers.utils.logging.set_verbosity_error()  # _cast keeps the fp32 modules; silence .to()'s warning about them
    info = (f"torch {torch.__version__}, diffusers {diffusers.__version__}, "
            f"{torch.cuda.get_device_name(0) if device == 'cuda' else 'CPU'}")
    print(f"# bench/gpu.py — {info}; {steps} steps per run, random weights, no text encoder", flush=True)
    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else None
    rows: list[Row] = []
    lines = [HEADER, "|" + "---|" * (HEADER.count("|") - 1)]

    def emit(r: Row) -> None:
        lines.append(table_row(r))
        print(table_row(r), flush=True)
        if out_dir:  # written after every run, so a run cut short still leaves its rows
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "gpu_table.md").write_text(f"{info}\n\n" + "\n".join(lines) + "\n")

    print(lines[0] + "\n" + lines[1], flush=True)
    for model in args.models.split(","):
        spec = get_model(model)
        try:
            rows += bench_model(spec, sizes, args.modes.split(","), steps, args.frames, device, args.smoke, emit)
        except torch.OutOfMemoryError as e:
            r = Row(spec.id, "all", 0, "build", steps, note=f"OOM while building: {str(e).splitlines()[0][:100]}")
            rows.append(r)
            emit(r)
    ratios = [r.ratio for r in rows if r.ratio]
    if ratios:
        worst = max(abs(1 - x) for x in ratios)
        print(f"\nplanner error: worst |estimate/measured - 1| = {worst:.1%} over {len(ratios)} runs (goal ≤ 15 %)")
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=1))
    if out_dir:
        (out_dir / "gpu_runs.json").write_text(json.dumps({"info": info, "rows": [asdict(r) for r in rows]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
