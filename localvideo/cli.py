"""The command line (typer + rich). Thin: it parses, calls the library, prints. Heavy imports stay inside commands."""

from __future__ import annotations

import errno
import json
import sys
from typing import Optional

import typer

from .errors import LocalVideoError

app = typer.Typer(
    name="localvideo",
    help="Local-first AI video studio: a prompt in, a real MP4 out, on your own GPU.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="List, inspect and download models.", no_args_is_help=True)
app.add_typer(models_app, name="models")


def _console(stderr: bool = False):
    from rich.console import Console

    c = Console(stderr=stderr, highlight=False)
    if not c.is_terminal:  # pipes and logs: no wrapping at 80 columns
        c = Console(stderr=stderr, highlight=False, width=200, soft_wrap=True)
    return c


def _fail(err: LocalVideoError, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"ok": False, **err.to_dict()}))
    else:
        c = _console(stderr=True)
        c.print(f"[bold red]Error:[/] {err.message}")
        if err.hint:
            c.print(f"[yellow]{err.hint}[/]")
    raise typer.Exit(err.exit_code)


OVERWRITE_HELP = "Replace an existing --output file (default: refuse; a name chosen for you is never taken twice)."


@app.command()
def generate(
    prompt: str = typer.Argument(..., help="What the video shows."),
    model: str = typer.Option("wan2.1-t2v-1.3b", "--model", "-m", help="Model id (see `localvideo models list`)."),
    width: Optional[int] = typer.Option(None, help="Width in pixels (snapped to the model's multiple)."),
    height: Optional[int] = typer.Option(None, help="Height in pixels (snapped to the model's multiple)."),
    frames: Optional[int] = typer.Option(None, "--frames", help="Number of frames (snapped to the model's rule)."),
    fps: Optional[float] = typer.Option(None, help="Frames per second of the MP4 (default: the model's native fps)."),
    steps: Optional[int] = typer.Option(None, help="Denoising steps."),
    guidance: Optional[float] = typer.Option(None, help="Classifier-free guidance scale."),
    seed: Optional[int] = typer.Option(None, help="Random seed (same seed → same video). Default: random, recorded."),
    negative: Optional[str] = typer.Option(None, "--negative", help="Negative prompt (default: the model's)."),
    image: Optional[str] = typer.Option(None, "--image", help="Image-to-video: the first frame (a photo). It is "
                                                              "center-cropped to the video's aspect and resized."),
    last_image: Optional[str] = typer.Option(None, "--last-image", help="Image-to-video: the last frame, where the "
                                                                        "model supports it."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Output .mp4 path or folder."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    strategy: str = typer.Option("auto", help="Memory strategy: auto, resident, model_offload, group_offload, "
                                              "group_offload_leaf, sequential_offload."),
    vae_tiling: Optional[bool] = typer.Option(None, "--vae-tiling/--no-vae-tiling", help="Force VAE tiling on/off."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and why, generate nothing."),
    vram: Optional[float] = typer.Option(None, "--vram", help="Plan for a hypothetical GPU with this many GB "
                                                              "(only with --dry-run)."),
    as_json: bool = typer.Option(False, "--json", help="Print a machine-readable result (or plan)."),
    show_prompt: bool = typer.Option(False, "--show-prompt", help="Print the prompt and negative prompt the model "
                                                                  "will read, then continue (with --dry-run: only "
                                                                  "show)."),
    expand: bool = typer.Option(True, "--expand/--no-expand", help="Rewrite the prompt in the style the model's "
                                "family was trained on; hints like [dolly in] [golden hour] [anime] are understood. "
                                "--no-expand sends the prompt as typed."),
    enhance: bool = typer.Option(False, "--enhance", help="Rewrite the prompt with a local LLM (validated; falls back "
                                                          "to the prompt engine with the reason)."),
    enhancer: Optional[str] = typer.Option(None, "--enhancer", help="Enhancer id or local model folder (implies "
                                           "--enhance; default qwen2.5-1.5b-instruct)."),
    quantization: str = typer.Option("auto", "--quantization", help="Transformer storage: auto (fp8 only when "
                                     "nothing else fits short of sequential offload), none, fp8, int8, gguf."),
    gguf: Optional[str] = typer.Option(None, "--gguf", help="A GGUF single-file transformer for this model (e.g. "
                                                            "Q8_0, Q4_K); implies --quantization gguf."),
    cache: Optional[str] = typer.Option(None, "--cache", help="Step cache, off by default: fbc, mag or taylor, "
                                        "optionally :value (fbc:0.1 threshold, taylor:3 interval; run mag:calibrate "
                                        "once before mag)."),
    lora: Optional[list[str]] = typer.Option(None, "--lora", help="LoRA file with an optional weight, "
                                                                   "PATH[:WEIGHT] (repeatable)."),
    attention: str = typer.Option("sdpa", "--attention", help="Attention backend: sdpa, flash, sage (falls back "
                                                              "to sdpa with a warning when not installed)."),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile the transformer's repeated blocks "
                                                           "(the first run is slower while it compiles)."),
) -> None:
    """Generate a video from a text prompt."""
    from .request import GenerationRequest

    try:
        fields = dict(prompt=prompt, model=model, width=width, height=height, num_frames=frames, fps=fps, steps=steps,
                      guidance=guidance, seed=seed, negative_prompt=negative, output=output, strategy=strategy,
                      vae_tiling=vae_tiling, expand_prompt=expand, image=image, last_image=last_image)
        if enhance or enhancer:
            from .prompts.enhancer import DEFAULT_ENHANCER

            fields["enhance"] = enhancer or DEFAULT_ENHANCER
        fields.update(quantization=quantization, gguf_path=gguf, step_cache=cache, loras=tuple(lora or ()),
                      attention=attention, compile=compile_)  # run options (localvideo.runtime.options)
        from .planner import GPU_STRATEGIES

        if strategy != "auto" and strategy not in GPU_STRATEGIES:
            from .errors import InvalidRequest

            raise InvalidRequest(f"Unknown memory strategy '{strategy}'.",
                                 hint=f"Use auto, {', '.join(GPU_STRATEGIES)}.")
        request = GenerationRequest.parse(**fields)
        if vram is not None and not dry_run:
            from .errors import InvalidRequest

            raise InvalidRequest("--vram only makes sense with --dry-run.", hint="Add --dry-run.")
        prompt_info = None
        if show_prompt or request.enhance:  # here, so the text can stream and be shown before the plan
            request, prompt_info = _prepare_prompt(request, as_json, show_prompt)
        if dry_run:
            _dry_run(request, vram, as_json, prompt_info)
            return
        _generate(request, as_json, prompt_info, overwrite)
    except LocalVideoError as e:
        _fail(e, as_json)


def _prepare_prompt(request, as_json: bool, show: bool):
    """Expand (engine) or enhance (local LLM, streamed to stderr) the prompt; print it when asked."""
    from .catalog import get_model
    from .prompts import prepare_prompt

    spec = get_model(request.model)
    err = _console(stderr=True)
    stream = None
    if request.enhance and not as_json:
        err.print(f"enhancing the prompt with {request.enhance}…", style="dim", markup=False)

        def stream(chunk: str) -> None:
            err.print(chunk, end="", style="dim", markup=False, highlight=False)

    request, info = prepare_prompt(request, spec.family, stream=stream)  # Ctrl-C stops the LLM, then exits
    if stream is not None:
        err.print()
    if show and not as_json:
        c = _console()
        how = {"engine": "expanded by the prompt engine", "llm": f"rewritten by {info.enhancer}",
               "as-typed": "as typed"}[info.source]
        negative = request.negative_prompt if request.negative_prompt is not None else spec.defaults.negative_prompt
        c.print(f"[bold]Prompt[/] ({how}, for {spec.family})")
        c.print("  " + info.prompt, markup=False)
        c.print("[bold]Negative prompt[/]")
        c.print("  " + (negative or "(none)"), markup=False)
        for change in info.changes:
            c.print("  - " + change, markup=False, style="yellow" if change == info.fallback_reason else None)
    return request, info


def _dry_run(request, vram: float | None, as_json: bool, prompt_info=None) -> None:
    from .generation import prepare
    from .hardware import Hardware, probe
    from .settings import get_settings

    hw = Hardware.assumed(vram) if vram is not None else probe(get_settings().home)
    spec, plan = prepare(request, hw)
    if as_json:
        print(json.dumps({"ok": True, "dry_run": True, "plan": plan.to_dict(),
                          **({"prompt": prompt_info.to_dict()} if prompt_info else {})}, ensure_ascii=False))
        return
    c = _console()
    c.print("[bold]Plan[/] (dry run, nothing generated)")
    for line in plan.explain():
        c.print("  " + line, markup=False)


def _generate(request, as_json: bool, prompt_info=None, overwrite: bool = False) -> None:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from .generation import generate as run_generation

    console = _console(stderr=True)
    progress = Progress(TextColumn("[bold]{task.fields[phase]:<10}"), BarColumn(), TextColumn("{task.completed}/"
                        "{task.total} steps"), TimeElapsedColumn(), TimeRemainingColumn(), console=console,
                        disable=as_json or not console.is_terminal, transient=True)
    task = progress.add_task("gen", total=request.steps or 1, phase="planning")

    def on_progress(p) -> None:
        progress.update(task, completed=p.step, total=max(p.total, 1), phase=p.phase)
        if not console.is_terminal and not as_json and p.phase in ("loading", "decoding", "encoding"):
            console.print(f"{p.phase}…")

    with progress:
        result = run_generation(request=request, on_progress=on_progress, prompt_info=prompt_info,
                                overwrite=overwrite)
    if as_json:
        print(json.dumps({"ok": True, **result.to_dict()}, ensure_ascii=False))
        return
    c = _console()
    for w in result.warnings:
        c.print(f"[yellow]warning:[/] {w}")
    for n in result.plan.notes:
        c.print(f"[cyan]changed:[/] {n}")
    for d in result.plan.degraded:
        c.print(f"[yellow]degraded:[/] {d}")
    c.print(f"[green]Wrote[/] {result.path}  ({result.frames} frames, {result.width}x{result.height}, "
            f"{result.fps:g} fps, seed {result.seed}, {result.plan.strategy}, {result.timings['total_s']:.1f} s)")


@app.command()
def decode(
    latents: str = typer.Argument(..., help="A .latents.safetensors file named by a failed run."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Output .mp4 path or folder."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print a machine-readable result."),
) -> None:
    """Finish a run that failed while decoding: decode its saved latents (VAE tiling on) into an MP4."""
    try:
        from .generation import decode_saved

        result = decode_saved(latents, output=output, overwrite=overwrite)
    except LocalVideoError as e:
        _fail(e, as_json)
    if as_json:
        print(json.dumps({"ok": True, **result.to_dict()}, ensure_ascii=False))
        return
    _console().print(f"[green]Wrote[/] {result.path}  ({result.frames} frames, {result.width}x{result.height}, "
                     f"{result.fps:g} fps, seed {result.seed})")


@models_app.command("list")
def models_list(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """All models localvideo knows, with install state."""
    from .catalog import all_models
    from .runtime.store import Incomplete, Installed, inspect
    from .settings import get_settings

    settings = get_settings()
    rows = []
    for m in all_models():
        found = inspect(m, settings)
        rows.append(m.to_dict() | {"installed": isinstance(found, Installed),
                                   "incomplete": found.describe() if isinstance(found, Incomplete) else None,
                                   "path": str(found.path) if found else None,
                                   "source": found.source if found else None})
    if as_json:
        print(json.dumps(rows, ensure_ascii=False))
        return
    from rich.markup import escape
    from rich.table import Table

    t = Table(title="localvideo models")
    for col in ("id", "tasks", "weights", "default", "frames", "installed", "licence"):
        t.add_column(col)
    for r in rows:
        d, c = r["defaults"], r["constraints"]
        rid = r["id"] + ("\n[red]RANDOM WEIGHTS[/]" if r["random_weights"] else "")
        inst = ("[green]yes[/]" if r["installed"] else f"[yellow]{escape(r['incomplete'])}[/]" if r["incomplete"]
                else "built on first use" if r["random_weights"] else "no")
        t.add_row(rid, ",".join(r["tasks"]), f"{r['weights_gb']:.1f} GB", f"{d['width']}x{d['height']}",
                  f"{d['frames']} ({c['frame_rule']}, ≤{c['max_frames']})", inst, r["licence"])
    _console().print(t)
    from .prompts.enhancer import all_enhancers, locate as locate_enhancer

    e = Table(title="prompt enhancers (optional: --enhance / --enhancer ID)")
    for col in ("id", "params", "weights", "installed", "licence"):
        e.add_column(col)
    for spec in all_enhancers():
        try:
            installed = "built on first use" if spec.tiny else ("[green]yes[/]" if locate_enhancer(spec) else "no")
        except LocalVideoError:
            installed = "no"
        e.add_row(spec.id + ("\n[red]RANDOM WEIGHTS[/]" if spec.tiny else ""), f"{spec.params / 1e9:.2f} B",
                  f"{spec.weights_bytes / 1e9:.1f} GB", installed, spec.licence)
    _console().print(e)


def _gpu_memory(m) -> dict:
    """What the planner estimates a GPU needs for the model's default clip, per strategy (pure: no GPU needed)."""
    from .hardware import GB
    from .planner import GPU_STRATEGIES, estimate_memory

    d = m.defaults
    strategies = {s: {k: round(estimate_memory(m, d.width, d.height, d.frames, s, tiled).peak_device_bytes / GB, 1)
                      for k, tiled in (("untiled", False), ("tiled", True))} for s in GPU_STRATEGIES}
    return {"size": f"{d.width}x{d.height}x{d.frames}", "unit": "GB", "strategies": strategies,
            "source": "activations traced by bench/memtrace.py" if m.traced_activations else "generic formula"}


@models_app.command("show")
def models_show(model_id: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """Everything the catalog knows about one model."""
    from .catalog import get_model
    from .runtime.store import Incomplete, Installed, inspect, pull_command

    try:
        m = get_model(model_id)
    except LocalVideoError as e:
        _fail(e, as_json)
    found = inspect(m)
    info = m.to_dict() | {"installed": isinstance(found, Installed),
                          "incomplete": found.describe() if isinstance(found, Incomplete) else None,
                          "path": str(found.path) if found else None, "source": found.source if found else None,
                          "pull": pull_command(m), "gpu_memory": _gpu_memory(m)}
    if as_json:
        print(json.dumps(info, ensure_ascii=False))
        return
    from rich.markup import escape

    c = _console()
    c.print(f"[bold]{m.name}[/] ({m.id}){'  [red]RANDOM WEIGHTS: output is noise[/]' if m.tiny else ''}")
    c.print(m.description)
    for key in ("repo", "pipeline", "i2v_pipeline", "family", "tasks", "dtype", "licence", "installed", "path"):
        c.print(f"  {key:<13}{info[key]}")
    c.print("  params       " + ", ".join(f"{k} {v / 1e9:.2f} B" if v > 1e7 else f"{k} {v:,}"
                                          for k, v in info["params"].items()))
    c.print(f"  weights      {info['weights_gb']} GB in {m.dtype}")
    c.print(f"  constraints  {info['constraints']}")
    c.print(f"  defaults     {info['defaults']}")
    g = info["gpu_memory"]
    c.print(f"  GPU memory   at {g['size']} ({g['source']}), peak GB per strategy, untiled / VAE tiled:")
    c.print("               " + ", ".join(f"{s} {v['untiled']} / {v['tiled']}" for s, v in g["strategies"].items()))
    if info["incomplete"]:
        c.print(f"  [yellow]{escape(info['incomplete'])}[/]")
        c.print(f"  finish the download with: [bold]{info['pull']}[/]")
    elif not info["installed"]:
        c.print(f"  install with [bold]{info['pull']}[/]")


@models_app.command("pull")
def models_pull(model_id: str) -> None:
    """Download a model from the Hugging Face hub into the models folder (tiny models are built locally)."""
    from .catalog import get_model
    from .runtime.store import pull

    try:
        from .prompts.enhancer import get_enhancer, is_enhancer, pull as pull_enhancer

        if is_enhancer(model_id):  # prompt enhancers (LLMs) are pulled like video models
            m = get_enhancer(model_id)
            installed = pull_enhancer(m)
        else:
            m = get_model(model_id)
            installed = pull(m)
    except LocalVideoError as e:
        _fail(e, False)
    _console().print(f"[green]{m.id}[/] is installed at {installed.path} ({installed.size_bytes / 1e9:.2f} GB)")


@app.command()
def doctor(as_json: bool = typer.Option(False, "--json")) -> None:
    """What this machine has, and which models fit it at their default settings."""
    from .catalog import all_models
    from .errors import LocalVideoError as Err
    from .hardware import GB, probe, software
    from .planner import plan_at_defaults
    from .runtime.store import Incomplete, inspect
    from .settings import get_settings

    settings = get_settings()
    hw = probe(settings.home)
    libs = software()
    fits = []
    for m in all_models():
        found = inspect(m, settings)
        entry = {"model": m.id, "installed": found is not None and not isinstance(found, Incomplete),
                 "incomplete": found.describe() if isinstance(found, Incomplete) else None,
                 "random_weights": m.tiny}
        try:
            p = plan_at_defaults(m, hw)
            entry |= {"fits": True, "strategy": p.strategy, "vae_tiling": p.vae_tiling,
                      "peak_gb": round(p.estimate.peak_device_bytes / GB, 1)}
        except Err as e:
            entry |= {"fits": False, "reason": e.message}
        fits.append(entry)
    if as_json:
        print(json.dumps({"hardware": hw.to_dict(), "software": libs, "home": str(settings.home), "models": fits},
                         ensure_ascii=False))
        return
    c = _console()
    c.print(f"[bold]localvideo doctor[/]  home: {settings.home}")
    cpu_limit = " (container limit)" if hw.container_cpus is not None else ""
    ram_limit = " (container limit)" if hw.container_memory_bytes is not None else ""
    c.print(f"  cpu   {hw.cpu_name} ({hw.cpu_count} cores{cpu_limit}), {hw.platform}", markup=False)
    c.print(f"  ram   {hw.ram_available_bytes / GB:.1f} GB available of {hw.ram_total_bytes / GB:.1f} GB{ram_limit}",
            markup=False)
    c.print(f"  disk  {hw.disk_free_bytes / GB:.1f} GB free")
    for g in hw.gpus:
        c.print(f"  gpu   {g.device}: {g.name}, {g.free_bytes / GB:.1f} GB free of {g.total_bytes / GB:.1f} GB",
                markup=False)
    for g in hw.unusable_gpus:
        c.print(f"  gpu   {g.name}, {g.total_bytes / GB:.1f} GB: not usable by this torch (see below)", markup=False)
    build = libs["torch_build"]
    torch_text = f"{libs['torch']} ({'CPU-only' if build == 'cpu' else build} build)" if libs["torch"] else "missing"
    c.print(f"  libs  torch {torch_text}, diffusers {libs['diffusers'] or 'missing'}, "
            f"transformers {libs['transformers'] or 'missing'}", markup=False)
    for n in hw.notes:
        c.print(f"  {n}", style="yellow", markup=False)
    from rich.table import Table

    t = Table(title="What fits (default settings)")
    for col in ("model", "installed", "fits", "how / why not"):
        t.add_column(col)
    for f in fits:
        how = (f"{f['strategy']}{' + VAE tiling' if f['vae_tiling'] else ''}, ≈{f['peak_gb']} GB"
               if f["fits"] else f["reason"])
        name = f["model"] + (" [red](random)[/]" if f["random_weights"] else "")
        installed = "yes" if f["installed"] else (f"[yellow]{f['incomplete']}[/]" if f["incomplete"] else "no")
        t.add_row(name, installed, "[green]yes[/]" if f["fits"] else "[red]no[/]", how)
    c.print(t)


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Address to bind. Anything but loopback requires a token."),
    port: int = typer.Option(8765, min=1, max=65535, help="TCP port."),
    token: Optional[str] = typer.Option(None, envvar="LOCALVIDEO_API_TOKEN", show_envvar=True,
                                        help="API token (clients send Authorization: Bearer <token>)."),
    cors_origin: list[str] = typer.Option([], "--cors-origin", help="Allow this browser origin (repeatable); "
                                                                    "CORS is off by default."),
    log_level: str = typer.Option("info", help="uvicorn log level: critical, error, warning, info, debug or trace."),
    ui: bool = typer.Option(True, "--ui/--no-ui", help="Serve the web studio at / (behind a token login when a "
                                                       "token is set)."),
    executor: Optional[str] = typer.Option(None, "--executor", help="Where jobs run: local (this process, default) "
                                           "or ray (actors on a Ray cluster; see docs/cluster.md)."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster: auto, HOST:PORT or "
                                              "ray://…; default: start Ray inside this server."),
    ray_actors: Optional[int] = typer.Option(None, "--ray-actors", min=1, help="Ray actors (default: one per GPU "
                                             "in the cluster, else LOCALVIDEO_RAY_CPU_ACTORS CPU actors)."),
) -> None:
    """Run the job service, the REST API (/v1, docs at /docs) and the web studio (/) on one port."""
    from .api.auth import check_bind

    try:
        check_bind(host, token)  # before anything listens
        from .api.app import create_app
        from .settings import get_settings

        settings = get_settings()
        overrides = {k: v for k, v in (("executor", executor), ("ray_address", ray_address),
                                       ("ray_actors", ray_actors)) if v is not None}
        if (ray_address or ray_actors) and (overrides.get("executor") or settings.executor) != "ray":
            overrides["executor"] = "ray"  # --ray-address / --ray-actors only mean something with ray
        if overrides:
            from .errors import InvalidRequest

            if overrides.get("executor") not in (None, "local", "ray"):
                raise InvalidRequest(f"Unknown executor {executor!r}.", hint="Use --executor local or ray.")
            settings = settings.model_copy(update=overrides)
        if log_level.lower() not in _LOG_LEVELS:
            from .errors import InvalidRequest

            raise InvalidRequest(f"Unknown log level {log_level!r}.", hint=f"Use one of {', '.join(_LOG_LEVELS)}.")
        api = create_app(settings, host=host, token=token, cors_origins=cors_origin or None, ui=ui)
        api.state.service.check_available()  # another server on this home: say so before listening
        _check_port_free(host, port)
    except LocalVideoError as e:
        _fail(e, False)
    shown = f"[{host}]" if ":" in host else host
    c = _console(stderr=True)
    if ui:
        c.print(f"localvideo studio on [bold]http://{shown}:{port}/[/]", markup=True)
    c.print(f"localvideo API on [bold]http://{shown}:{port}/v1[/]  (docs: http://{shown}:{port}/docs)", markup=True)
    if token:
        c.print(f"token: {token}  (send Authorization: Bearer <token>)", markup=False)
    from .api.app import serve as run_api  # uvicorn.run that ends open event streams at once on Ctrl-C / SIGTERM

    # keep-alive above httpx's 5 s pool expiry, so a client never reuses a connection the server is closing
    run_api(api, host=host, port=port, log_level=log_level.lower(), timeout_graceful_shutdown=5, timeout_keep_alive=30,
            limit_concurrency=1000, server_header=False)


_LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def _check_port_free(host: str, port: int) -> None:
    """Raise ServiceUnavailable when ``host:port`` cannot be bound now (in use, or not an address of this machine),
    instead of uvicorn's traceback after the service started."""
    import socket

    from .jobs.models import ServiceUnavailable

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ServiceUnavailable(f"Cannot bind {host}: {e.strerror or e}.",
                                 hint="Use an address of this machine, e.g. --host 127.0.0.1.") from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind(addr)
        except OSError as e:
            busy = e.errno in (errno.EADDRINUSE, errno.EACCES)
            raise ServiceUnavailable(
                f"Cannot listen on {host}:{port}: {e.strerror or e}.",
                hint="Another program (perhaps another localvideo serve) uses that port: stop it or pass --port "
                     "with a free one." if busy else "Use an address of this machine, e.g. --host 127.0.0.1.") \
                from None


@app.command()
def animate(
    image: str = typer.Argument(..., help="The photo to animate (JPEG, PNG, WebP, TIFF, …)."),
    move: str = typer.Option("auto", "--move", help="zoom-in, zoom-out, pan-left, pan-right, orbit, dolly or auto."),
    width: Optional[int] = typer.Option(None, help="Output width in pixels (default: the photo's own size, long side "
                                        "kept within 256–768; with only --height, the photo's aspect)."),
    height: Optional[int] = typer.Option(None, help="Output height in pixels (with only --width: the photo's "
                                         "aspect)."),
    fps: float = typer.Option(24.0, help="Frames per second."),
    duration: Optional[float] = typer.Option(None, "--duration", help="Length in seconds (default 4)."),
    frames: Optional[int] = typer.Option(None, "--frames", help="Number of frames (instead of --duration)."),
    parallax: Optional[bool] = typer.Option(None, "--parallax/--no-parallax",
                                            help="2.5D layers: default when the subject separates cleanly."),
    strength: float = typer.Option(1.0, help="Scale the zoom and travel (0.1–3)."),
    easing: str = typer.Option("ease-in-out", "--easing", help="Speed curve of the move: linear, ease-in-out, "
                                                               "ease-in-out-cubic or ease-out."),
    seed: int = typer.Option(0, "--seed", help="Seed of the subject cut-out (GrabCut) for parallax; recorded."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Output .mp4 path or folder."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print a machine-readable result."),
) -> None:
    """Animate a photo with a camera move (no model weights; 2.5D parallax when the subject separates cleanly)."""
    try:
        from .motion.animator import animate as run_animate

        result = run_animate(image, move, width=width, height=height, fps=fps, duration_s=duration,
                             num_frames=frames, output=output, parallax=parallax, strength=strength, easing=easing,
                             seed=seed, overwrite=overwrite)
    except LocalVideoError as e:
        _fail(e, as_json)
    if as_json:
        print(json.dumps({"ok": True, **result.to_dict()}, ensure_ascii=False, default=str))
        return
    c = _console()
    for w in result.warnings:
        c.print(f"[yellow]warning:[/] {w}", markup=True)
    focus = result.metadata["focus"]
    c.print(f"[green]Wrote[/] {result.path}  ({result.move}, {result.render_path}, focus {focus['detector']}, "
            f"{result.frames} frames, {result.width}x{result.height}, {result.fps:g} fps, "
            f"{result.timings['total_s']:.1f} s)")


@app.command()
def story(
    script: str = typer.Argument(..., help="A script file, or the script itself: one scene per line (or per block), "
                                           "e.g. '[4s] wide shot: a fox wakes' (see localvideo.prompts.scenes)."),
    model: str = typer.Option("wan2.1-t2v-1.3b", "--model", "-m", help="Model id (see `localvideo models list`)."),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Output .mp4 path or folder."),
    crossfade: float = typer.Option(0.0, "--crossfade", help="Seconds of crossfade at hard cuts (0: plain cuts)."),
    continuity: Optional[bool] = typer.Option(None, "--continuity/--no-continuity", help="Start each scene from "
                                              "the previous scene's last frame (default: when the model does "
                                              "image-to-video)."),
    seed: Optional[int] = typer.Option(None, help="Base seed; scene k uses seed + k − 1. Default: random, recorded."),
    fps: Optional[float] = typer.Option(None, help="Frames per second (default: the model's native fps)."),
    width: Optional[int] = typer.Option(None, help="Width in pixels (snapped to the model's multiple)."),
    height: Optional[int] = typer.Option(None, help="Height in pixels (snapped to the model's multiple)."),
    steps: Optional[int] = typer.Option(None, help="Denoising steps per scene."),
    guidance: Optional[float] = typer.Option(None, help="Classifier-free guidance scale."),
    negative: Optional[str] = typer.Option(None, "--negative", help="Negative prompt for every scene (default: the "
                                                                    "model's)."),
    duration: Optional[float] = typer.Option(None, "--duration", help="Seconds for scenes that give no [Ns] "
                                                                      "(default: the model's default clip)."),
    image: Optional[str] = typer.Option(None, "--image", help="The first scene starts from this photo (i2v)."),
    from_paragraph: bool = typer.Option(False, "--from-paragraph", help="SCRIPT is a story paragraph: turn it into "
                                        "a shot list (with --enhancer: by a local LLM, validated; else one scene "
                                        "per sentence, a sentence under three words joined to its neighbour, at "
                                        "most --max-scenes)."),
    enhancer: Optional[str] = typer.Option(None, "--enhancer", help="LLM id or folder for --from-paragraph."),
    max_scenes: int = typer.Option(8, "--max-scenes", help="At most this many scenes from a paragraph."),
    expand: bool = typer.Option(True, "--expand/--no-expand", help="Expand each scene's prompt for the model."),
    keep_segments: bool = typer.Option(False, "--keep-segments", help="Keep each scene's clip in NAME.segments/."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check the story as the real run would (on this machine) "
                                 "and print its scenes, transitions, frames and plan; generate nothing."),
    vram: Optional[float] = typer.Option(None, "--vram", help="With --dry-run: plan for a hypothetical GPU with this "
                                                              "many GB (the model need not be installed)."),
    as_json: bool = typer.Option(False, "--json", help="Print a machine-readable result."),
) -> None:
    """Make one video from a story: a scene per line, each generated, joined into one MP4."""
    from pathlib import Path

    from .errors import InvalidRequest

    try:
        if enhancer and not from_paragraph:
            raise InvalidRequest("--enhancer only applies with --from-paragraph.", hint="Add --from-paragraph.")
        text = script
        p = Path(script).expanduser()
        try:
            is_file = len(script) < 4096 and "\n" not in script and p.is_file()
        except OSError:
            is_file = False
        if is_file:
            if p.stat().st_size > 1_000_000:
                raise InvalidRequest(f"{p} is {p.stat().st_size:,} bytes; a story script is at most 1 MB.")
            try:
                text = p.read_text(encoding="utf-8-sig")
            except UnicodeDecodeError as e:
                raise InvalidRequest(f"{p} is not UTF-8 text ({e.reason}).", hint="Save it as UTF-8.") from None
        elif script.strip().lower().endswith((".txt", ".md", ".story")) and "\n" not in script and " " not in \
                script.strip():
            raise InvalidRequest(f"There is no script file at {script}.", hint="Check the path, or pass the text.")
        if from_paragraph:
            from .prompts.scenes import shot_list_from_paragraph

            err = _console(stderr=True)
            stream = None
            if enhancer and not as_json:
                err.print(f"writing a shot list with {enhancer}…", style="dim", markup=False)

                def stream(chunk: str) -> None:
                    err.print(chunk, end="", style="dim", markup=False, highlight=False)

            source = shot_list_from_paragraph(text, enhancer, max_scenes=max_scenes, duration_s=duration,
                                              stream=stream)
            if stream is not None:
                err.print()
            if source.reason_if_fallback and not as_json:
                err.print(f"[yellow]{source.reason_if_fallback}[/]", markup=True)
        else:
            from .prompts.scenes import parse_script

            source = parse_script(text)  # errors (with line numbers) before anything loads
        from .hardware import Hardware, probe
        from .settings import get_settings

        if vram is not None and not dry_run:
            raise InvalidRequest("--vram only makes sense with --dry-run.", hint="Add --dry-run.")
        story_source = source if from_paragraph else text
        hardware = Hardware.assumed(vram) if vram is not None else probe(get_settings().home)
        fields = dict(model=model, crossfade_s=crossfade, continuity=continuity, seed=seed, fps=fps, width=width,
                      height=height, steps=steps, guidance=guidance, negative_prompt=negative, duration_s=duration,
                      image=image, hardware=hardware)  # every scene planned up front, on this machine
        if dry_run:
            _story_dry_run(story_source, as_json, output=output, installed_check=vram is None, overwrite=overwrite,
                           **fields)
            return
        _story(story_source, as_json, output=output, expand_prompt=expand, keep_segments=keep_segments,
               overwrite=overwrite, **fields)
    except LocalVideoError as e:
        _fail(e, as_json)


def _story_dry_run(source, as_json: bool, *, output: Optional[str], seed: Optional[int], installed_check: bool,
                   overwrite: bool = False, **fields) -> None:
    """What the real run checks before it generates anything (plan_story on this machine, the model installed, the
    output name), then the story as it will be made: scenes, transitions, frames, times, the heaviest scene's plan.
    With --vram (a hypothetical machine) the model need not be installed here."""
    from pathlib import Path

    from .errors import InvalidRequest
    from .prompts.scenes import ShotList
    from .runtime.store import locate
    from .settings import get_settings
    from .story import plan_story

    sp = plan_story(source, seed=seed, **fields)
    spec = sp.spec
    if installed_check and not spec.tiny:
        locate(spec, get_settings())  # not installed: the real run's error, word for word (tiny: built on first use)
    if output:
        from .media.encode import output_target, refuse_existing

        p, is_folder = output_target(output, "story.mp4", Path("."))
        if not is_folder and p.suffix.lower() != ".mp4":
            raise InvalidRequest(f"The output file must end in .mp4, got '{p.name}'.",
                                 hint="Use a name like video.mp4.", path=str(p))
        if not is_folder:
            refuse_existing(p, overwrite=overwrite)
    plans, fps = sp.plans, sp.fps
    heaviest = max(range(len(plans)), key=lambda k: (plans[k].estimate.peak_device_bytes, sp.planned[k]))
    rows = []
    for k, (scene, (start, end)) in enumerate(zip(sp.scenes, sp.spans())):
        rows.append(scene.to_dict() | {
            "planned_frames": sp.planned[k], "transition": sp.transitions[k], "task": plans[k].task,
            "seed": sp.seed + k if seed is not None else None, "start_frame": start, "end_frame": end,
            "start_time_s": round(start / fps, 4), "end_time_s": round(end / fps, 4),
            "strategy": plans[k].strategy})
    boundaries = [{"before_scene": r["index"] + 1, "frame": r["start_frame"], "time_s": r["start_time_s"],
                   "transition": r["transition"]} for r in rows[1:]]
    first = plans[0]
    summary = {"model": spec.id, "random_weights": spec.tiny, "fps": fps, "width": first.width,
               "height": first.height, "steps": first.steps, "seed": seed, "continuity": sp.continuity,
               "crossfade_s": sp.crossfade_s, "crossfade_frames": sp.crossfade, "frames": sp.frames,
               "duration_s": round(sp.duration_s, 4)}
    if as_json:
        print(json.dumps({"ok": True, "dry_run": True, **summary, "scenes": rows, "boundaries": boundaries,
                          "heaviest_scene": heaviest + 1, "plan": plans[heaviest].to_dict(),
                          **({"shot_list": source.to_dict()} if isinstance(source, ShotList) else {})},
                         ensure_ascii=False, default=str))
        return
    c = _console()
    c.print(f"[bold]Story[/] (dry run, nothing generated): {len(rows)} scenes on {spec.id}, {sp.frames} frames "
            f"({sp.duration_s:.2f} s) at {fps:g} fps, {first.width}x{first.height}, {first.steps} steps")
    cross = (f"crossfade {sp.crossfade_s:g} s ({sp.crossfade} frames) at hard cuts" if sp.crossfade
             else "hard cuts without crossfade")
    c.print(f"  continuity {'on' if sp.continuity else 'off'}; {cross}", markup=False)
    for r in rows:
        c.print(f"  {r['index'] + 1:>2}. {r['planned_frames']:>3} frames  {r['start_time_s']:6.2f}–"
                f"{r['end_time_s']:.2f} s  {r['transition']:<9}  {r['task']}  {r['prompt']}", markup=False)
    c.print(f"[bold]Plan[/] of the heaviest scene (scene {heaviest + 1})")
    for line in plans[heaviest].explain():
        c.print("  " + line, markup=False)


def _story(source, as_json: bool, **kw) -> None:  # kw: make_story's
    from .story import make_story

    console = _console(stderr=True)
    last = {"scene": 0}

    def on_progress(p) -> None:
        if as_json:
            return
        if p.scene != last["scene"] or p.phase in ("joining", "done"):
            if p.phase != "done":
                console.print(f"scene {p.scene}/{p.scenes}: {p.phase}…" if p.phase != "joining" else "joining…")
            last["scene"] = p.scene

    result = make_story(source, on_progress=on_progress, **kw)
    if as_json:
        print(json.dumps({"ok": True, **result.to_dict()}, ensure_ascii=False, default=str))
        return
    c = _console()
    for w in result.warnings:
        c.print(f"[yellow]warning:[/] {w}", markup=True)
    for s in result.scenes:
        c.print(f"  scene {s.index + 1}: frames {s.start_frame}–{s.end_frame - 1} ({s.transition}, seed {s.seed})",
                markup=False)
    c.print(f"[green]Wrote[/] {result.path}  ({len(result.scenes)} scenes, {result.frames} frames, "
            f"{result.width}x{result.height}, {result.fps:g} fps, continuity {'on' if result.continuity else 'off'}, "
            f"{result.timings['total_s']:.1f} s)")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        print("Interrupted; nothing was written.", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
