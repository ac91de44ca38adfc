"""The web studio: Gradio Blocks on the job service (the same queue as the REST API), mounted at ``/``.

Every action goes through :class:`~localvideo.jobs.service.JobService` in this process (submit, cancel, retry, delete,
list); the UI never touches the runner. Progress is polled from the service (a ``gr.Timer`` per panel, active only
while its job runs) and drawn as a real ``<progress>`` element with phase, step/total and ETA. Finished videos play
from the API's download URL (``/v1/jobs/{id}/video``, HTTP ranges, so the browser can seek).

Access: with a token configured, :func:`mount` puts a login form at ``/login``; it sets a signed, HttpOnly session
cookie (:func:`localvideo.api.auth.new_session`). Without that cookie every UI route answers 401 (or redirects a
browser to the form); the API accepts the cookie for a job's video and thumbnail only (``<video>`` cannot send
headers), every other ``/v1`` route still needs the bearer token.
"""

import asyncio
import json
import logging
import os
from pathlib import Path

from ..settings import Settings

log = logging.getLogger(__name__)


def _environment(settings: Settings) -> None:
    """Before gradio is imported: no analytics or update checks (local-first), uploads under LOCALVIDEO_HOME."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("GRADIO_TEMP_DIR", str(settings.home / "ui-tmp"))


from ..settings import get_settings  # noqa: E402

_environment(get_settings())

import gradio as gr  # noqa: E402 - after the environment above

from ..catalog import all_models, get_model  # noqa: E402
from ..errors import LocalVideoError  # noqa: E402
from ..jobs.models import RETRYABLE  # noqa: E402
from . import views  # noqa: E402
from .pulls import Pulls  # noqa: E402

POLL_S = 0.4
HISTORY_POLL_S = 2.0
HISTORY_LIMIT = 60
STRATEGIES = ["auto", "resident", "group_offload", "group_offload_leaf", "model_offload", "sequential_offload"]
QUANTIZATIONS = ["auto", "none", "fp8", "int8"]
# MagCache skips steps by magnitude ratios measured once per model: "mag" is refused at planning until a
# "mag:calibrate" run (full quality) has measured and saved them (localvideo.planner.load_mag_ratios).
STEP_CACHES = [("none (default)", "none"), ("First-block cache (fbc)", "fbc"), ("MagCache (mag)", "mag"),
               ("MagCache: measure ratios (mag:calibrate)", "mag:calibrate"), ("TaylorSeer (taylor)", "taylor")]
TILING = [("auto (the planner decides)", "auto"), ("on", "on"), ("off", "off")]
CONTINUITY = [("auto (i2v models)", "auto"), ("on", "on"), ("off (hard cuts)", "off")]
CUSTOM = "custom"
MOVES = ["auto", "zoom-in", "zoom-out", "pan-left", "pan-right", "orbit", "dolly"]
PARALLAX = [("auto (when the subject separates cleanly)", "auto"), ("on", "on"), ("off", "off")]

THEME = gr.themes.Soft(primary_hue="indigo", secondary_hue="slate", neutral_hue="slate",
                       font=["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "sans-serif"],
                       font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "monospace"])

CSS = (Path(__file__).parent / "studio.css").read_text()

HISTORY_JS = """
element.addEventListener('click', (ev) => {
  const row = ev.target.closest('tr[data-job]');
  if (row) trigger('click', {job: row.dataset.job});
});
element.addEventListener('keydown', (ev) => {
  const row = ev.target.closest('tr[data-job]');
  if (row && ev.key === 'Enter') trigger('click', {job: row.dataset.job});
});
"""


def _models_for(task: str) -> list:
    return [m for m in all_models() if task in m.tasks]


def _default_model(task: str) -> str:
    models = _models_for(task)
    return next((m.id for m in models if m.tiny), models[0].id)


def _last_frame_update(spec, value=None) -> dict:
    """The image-to-video last-frame box for ``spec``: shown only where the model takes a last frame, and its label
    says whether the model needs one (first-and-last-frame models) or merely accepts one."""
    label = ("Last frame (required by this model)" if spec.requires_last_image else
             "Last frame (optional: this model supports one)")
    return gr.update(visible=spec.supports_last_image, label=label, value=value)


def _duration_update(spec, seconds: float | None = None) -> dict:
    fps = spec.defaults.fps
    lo = round((spec.frame_rule.step + 1) / fps, 2)
    hi = round(spec.max_frames / fps, 2)
    value = seconds if seconds is not None else round(spec.defaults.frames / fps, 2)
    return gr.update(minimum=lo, maximum=hi, value=min(max(value, lo), hi), step=0.05,
                     info=f"{spec.id}: {spec.frame_rule} frames at {fps:g} fps, at most {hi:g} s")


def _preset_update(spec, value: str | None = None) -> dict:
    choices = views.size_presets(spec) + ([("Custom…", CUSTOM)] if not spec.fixed_size else [])
    values = [v for _, v in choices]
    return gr.update(choices=choices, value=value if value in values else values[0])


def _size(preset: str, width, height) -> tuple[int | None, int | None]:
    if preset == CUSTOM:
        return (int(width) if width else None, int(height) if height else None)
    if preset and "x" in preset:
        w, h = preset.split("x")
        return int(w), int(h)
    return None, None


def _cache_update(value: str | None) -> dict:
    """The step-cache dropdown showing ``value`` exactly: a value the menu does not offer (an API job's
    ``fbc:0.1``) is added as a choice of its own rather than shown as something else."""
    value = value or "none"
    known = [v for _, v in STEP_CACHES]
    extra = [] if value in known else [(f"{value} (from the job)", value)]
    return gr.update(choices=STEP_CACHES + extra, value=value)


def _for_studio(err: Exception, model: str | None) -> Exception:
    """A planner refusal whose hint names CLI flags, with the hint this page's controls need instead."""
    from ..errors import InvalidRequest
    from ..planner import mag_ratios_missing

    if model and isinstance(err, InvalidRequest) and err.message == mag_ratios_missing(model).message:
        return InvalidRequest(err.message, hint="Choose the step cache “MagCache: measure ratios (mag:calibrate)” "
                                                "once (a full-quality run that measures and saves them); after "
                                                "that MagCache (mag) runs. Or choose First-block cache (fbc).")
    return err


def _seed(mode: str, seed) -> int | None:
    return int(seed) if mode == "fixed" and seed is not None and str(seed) != "" else None


def _tiling(v: str):
    return {"on": True, "off": False}.get(v)


class _Panel:
    """Progress + result of the job a tab started, polled while it runs."""

    def __init__(self, name: str) -> None:
        self.job = gr.State(None)
        self.shown = gr.State("")
        self.progress = gr.HTML(views.progress_html(None), elem_id=f"{name}-progress", js_on_load=None)
        self.result = gr.HTML(views.result_html(None), elem_id=f"{name}-result", js_on_load=None)
        self.timer = gr.Timer(POLL_S, active=False)


def build_ui(service, settings: Settings | None = None, *, auth_required: bool = False) -> gr.Blocks:
    """The studio for one job service. Tabs: Create, Image → Video, Photo animation, Story, Queue & History, Models,
    System."""
    settings = settings or service.settings
    pulls = Pulls(settings)

    def model_rows() -> dict[str, dict]:
        return {r["id"]: r for r in service.models()}

    def choices(task: str, rows: dict[str, dict]) -> list[tuple[str, str]]:
        return [(views.model_choice_label(rows[m.id]) if m.id in rows else m.id, m.id) for m in _models_for(task)]

    # -- polling a panel -----------------------------------------------------------------------------------------
    def poll(job_id, shown):
        if not job_id:
            return gr.skip(), gr.skip(), gr.update(interactive=False), shown, gr.Timer(active=False)
        try:
            job = service.get(job_id)
        except LocalVideoError:
            return (views.progress_html(None), views.result_html(None), gr.update(interactive=False), "",
                    gr.Timer(active=False))
        key = f"{job.id}:{job.state}"
        result = views.result_html(job) if key != shown else gr.skip()
        return (views.progress_html(job), result, gr.update(interactive=not job.terminal), key,
                gr.Timer(active=not job.terminal))

    def started(job):
        return (job.id, views.progress_html(job), views.result_html(job), gr.update(interactive=True), "",
                gr.Timer(active=True))

    def refused(err: Exception, previous_id: str | None = None, model: str | None = None):
        """A submission that was not queued: the reason in the panel, and the panel's earlier job (its progress, its
        video) no longer shown there as if it were this one; the reason says where that job is."""
        err = _for_studio(err, model)
        msg = str(err) if isinstance(err, LocalVideoError) else f"Unexpected error: {err}"
        previous = None
        if previous_id:
            try:
                previous = service.get(previous_id)
            except LocalVideoError:
                previous = None
        return (None, views.progress_html(None, error=msg, previous=previous), views.result_html(None),
                gr.update(interactive=False), "", gr.Timer(active=False))

    def cancel(job_id):
        if job_id:
            try:
                service.cancel(job_id)
            except LocalVideoError as e:
                gr.Warning(str(e))
        return gr.update(interactive=False)

    with gr.Blocks(title="localvideo studio", analytics_enabled=False) as demo:
        with gr.Row(elem_classes="lv-header"):
            gr.HTML('<div class="lv-title"><span class="lv-logo">▶</span> localvideo <span>studio</span></div>'
                    '<div class="lv-tagline">Video from a prompt or a photo, on this machine. Same queue as the '
                    'REST API · <a href="/docs">API docs</a>'
                    + (' · <a href="/logout" id="lv-logout">Log out</a>' if auth_required else "") + "</div>",
                    js_on_load=None)
            header_hw = gr.HTML("", elem_id="lv-hw", js_on_load=None)

        with gr.Tabs(selected="create") as tabs:
            # ================================================ Create ==================================================
            t2v_default = get_model(_default_model("t2v"))
            with gr.Tab("Create", id="create", elem_id="tab-create"):
                with gr.Row():
                    with gr.Column(scale=3):
                        c_model = gr.Dropdown(choices=[(m.id, m.id) for m in _models_for("t2v")],
                                              value=t2v_default.id, label="Model", elem_id="create-model")
                        c_model_info = gr.HTML("", elem_id="create-model-info", js_on_load=None)
                        c_prompt = gr.Textbox(label="Prompt", lines=3, elem_id="create-prompt",
                                              placeholder="A red fox trotting through fresh snow at dawn, "
                                                          "low sun, long shadows")
                        c_negative = gr.Textbox(label="Negative prompt", lines=1, elem_id="create-negative",
                                                placeholder="optional: what to avoid (empty: the model's default)")
                        with gr.Row():
                            c_duration = gr.Slider(label="Duration (seconds)", elem_id="create-duration",
                                                   **_slider(_duration_update(t2v_default)))
                            c_preset = gr.Dropdown(label="Resolution", elem_id="create-preset",
                                                   **_dd(_preset_update(t2v_default)))
                        with gr.Row(visible=False) as c_custom_row:
                            c_width = gr.Number(label="Width", value=t2v_default.defaults.width, precision=0,
                                                elem_id="create-width")
                            c_height = gr.Number(label="Height", value=t2v_default.defaults.height, precision=0,
                                                 elem_id="create-height")
                        with gr.Row():
                            c_steps = gr.Slider(1, 100, value=t2v_default.defaults.steps, step=1, label="Steps",
                                                elem_id="create-steps")
                            c_guidance = gr.Slider(0, 20, value=t2v_default.defaults.guidance, step=0.5,
                                                   label="Guidance", elem_id="create-guidance")
                        with gr.Row():
                            c_seed_mode = gr.Radio([("random", "random"), ("fixed", "fixed")], value="random",
                                                   label="Seed", elem_id="create-seed-mode")
                            c_seed = gr.Number(label="Seed value (fixed)", value=0, precision=0, minimum=0,
                                               elem_id="create-seed", interactive=False)
                            c_reuse = gr.Button("Reuse last seed", elem_id="create-reuse-seed", size="sm", scale=0,
                                                min_width=150)
                        with gr.Accordion("Advanced memory options", open=False, elem_id="create-advanced"):
                            with gr.Row():
                                c_strategy = gr.Dropdown(STRATEGIES, value="auto", label="Memory strategy",
                                                         info="auto: the planner picks the fastest that fits; "
                                                              "offloading needs a GPU")
                                c_quant = gr.Dropdown(QUANTIZATIONS, value="auto", label="Quantization",
                                                      info="auto: fp8 storage only when nothing else fits. GGUF "
                                                           "files: CLI only (server paths are not accepted here)")
                            with gr.Row():
                                c_cache = gr.Dropdown(STEP_CACHES, value="none", label="Step cache",
                                                      elem_id="create-cache",
                                                      info="reuse transformer work between steps (faster, "
                                                           "slightly different); MagCache needs one "
                                                           "'measure ratios' run per model first")
                                c_tiling = gr.Dropdown(TILING, value="auto", label="VAE tiling")
                    with gr.Column(scale=2):
                        c_plan = gr.HTML("", elem_id="create-plan", js_on_load=None)
                        with gr.Row():
                            c_go = gr.Button("Generate", variant="primary", elem_id="create-generate")
                            c_cancel = gr.Button("Cancel", variant="stop", interactive=False,
                                                 elem_id="create-cancel")
                        c_panel = _Panel("create")
                c_last_seed = gr.State(None)

            # ============================================ Image → Video ===============================================
            i2v_default = get_model(_default_model("i2v"))
            with gr.Tab("Image → Video", id="i2v", elem_id="tab-i2v"):
                with gr.Row():
                    with gr.Column(scale=3):
                        with gr.Row():
                            i_image = gr.Image(label="First frame (PNG, JPEG or WebP)", type="filepath",
                                               sources=["upload", "clipboard"], elem_id="i2v-image", height=260)
                            last_box = _last_frame_update(i2v_default)
                            i_last = gr.Image(label=last_box["label"], type="filepath",
                                              sources=["upload", "clipboard"], elem_id="i2v-last-image", height=260,
                                              visible=last_box["visible"])
                        i_model = gr.Dropdown(choices=[(m.id, m.id) for m in _models_for("i2v")],
                                              value=i2v_default.id, label="Model", elem_id="i2v-model")
                        i_model_info = gr.HTML("", js_on_load=None)
                        i_prompt = gr.Textbox(label="Prompt (what happens)", lines=2, elem_id="i2v-prompt",
                                              placeholder="the camera slowly pushes in, leaves move in the wind")
                        i_negative = gr.Textbox(label="Negative prompt", lines=1, placeholder="optional")
                        with gr.Row():
                            i_duration = gr.Slider(label="Duration (seconds)", elem_id="i2v-duration",
                                                   **_slider(_duration_update(i2v_default)))
                            i_steps = gr.Slider(1, 100, value=i2v_default.defaults.steps, step=1, label="Steps",
                                                elem_id="i2v-steps")
                            i_guidance = gr.Slider(0, 20, value=i2v_default.defaults.guidance, step=0.5,
                                                   label="Guidance")
                        with gr.Row():
                            i_seed_mode = gr.Radio(["random", "fixed"], value="random", label="Seed")
                            i_seed = gr.Number(label="Seed value (fixed)", value=0, precision=0, minimum=0, interactive=False)
                        gr.Markdown("The size follows the photo's aspect ratio at the model's usual area (the "
                                    "photo is centre-cropped and resized; the job's notes say how).",
                                    elem_classes="lv-sub")
                        gr.Markdown("No model installed? The **Photo animation** tab moves a camera over a photo "
                                    "(2.5D parallax) without any model weights.",
                                    elem_classes="lv-sub", elem_id="i2v-animate-note")
                    with gr.Column(scale=2):
                        with gr.Row():
                            i_go = gr.Button("Generate from image", variant="primary", elem_id="i2v-generate")
                            i_cancel = gr.Button("Cancel", variant="stop", interactive=False, elem_id="i2v-cancel")
                        i_panel = _Panel("i2v")

            # ============================================ Photo animation =============================================
            with gr.Tab("Photo animation", id="animate", elem_id="tab-animate"):
                with gr.Row():
                    with gr.Column(scale=3):
                        a_image = gr.Image(label="Photo (PNG, JPEG or WebP)", type="filepath",
                                           sources=["upload", "clipboard"], elem_id="animate-image", height=260)
                        gr.Markdown("No model weights: a camera move over the photo, framed on its subject, with "
                                    "2.5D parallax when the subject separates cleanly from the background.",
                                    elem_classes="lv-sub")
                        with gr.Row():
                            a_move = gr.Dropdown(MOVES, value="auto", label="Camera move", elem_id="animate-move")
                            a_parallax = gr.Dropdown(PARALLAX, value="auto", label="Parallax")
                        with gr.Row():
                            a_duration = gr.Slider(0.5, 12, value=4, step=0.5, label="Duration (seconds)",
                                                   elem_id="animate-duration")
                            a_fps = gr.Slider(8, 60, value=24, step=1, label="Frames per second", elem_id="animate-fps")
                            a_strength = gr.Slider(0.1, 3, value=1, step=0.1, label="Strength (zoom and travel)")
                        with gr.Row():
                            # the animator never upscales past the photo: 0 and 0 keep its size (long side within
                            # 256–768, localvideo.motion.animator._output_size); one of them keeps its aspect
                            a_width = gr.Number(label="Width (0: the photo's size, long side within 256–768)",
                                                value=0, precision=0, minimum=0, elem_id="animate-width")
                            a_height = gr.Number(label="Height (0: keeps the photo's aspect)", value=0, precision=0,
                                                 minimum=0, elem_id="animate-height")
                    with gr.Column(scale=2):
                        with gr.Row():
                            a_go = gr.Button("Animate the photo", variant="primary", elem_id="animate-generate")
                            a_cancel = gr.Button("Cancel", variant="stop", interactive=False,
                                                 elem_id="animate-cancel")
                        a_panel = _Panel("animate")

            # ================================================ Story ===================================================
            with gr.Tab("Story", id="story", elem_id="tab-story"):
                with gr.Row():
                    with gr.Column(scale=3):
                        s_script = gr.Textbox(
                            label="Script: one scene per line", lines=7, elem_id="story-script",
                            placeholder="[3s] wide shot: a fox wakes in its den at dawn\n"
                                        "[2s] close-up: it sniffs the cold air\n"
                                        "[cut] [3s] aerial: the fox runs across a snowy field")
                        gr.Markdown("`[4s]` or `[33f]` sets a scene's length; `wide shot:`, `close-up:` … steer the "
                                    "framing; `[cut]` starts a scene fresh instead of continuing from the previous "
                                    "scene's last frame.", elem_classes="lv-sub")
                        s_model = gr.Dropdown(choices=[(m.id, m.id) for m in _models_for("t2v")],
                                              value=t2v_default.id, label="Model", elem_id="story-model")
                        with gr.Row():
                            s_crossfade = gr.Slider(0, 3, value=0, step=0.25, label="Crossfade at cuts (s)",
                                                    elem_id="story-crossfade")
                            s_continuity = gr.Dropdown(CONTINUITY, value="auto", label="Continuity",
                                                       elem_id="story-continuity")
                            s_scene_s = gr.Number(label="Seconds for scenes without [Ns] (0: model default)", value=0, minimum=0,
                                                  elem_id="story-scene-seconds")
                        with gr.Row():
                            s_preset = gr.Dropdown(label="Resolution", elem_id="story-preset",
                                                   **_dd(_preset_update(t2v_default)))
                            s_steps = gr.Slider(1, 100, value=t2v_default.defaults.steps, step=1,
                                                label="Steps per scene", elem_id="story-steps")
                            s_seed_mode = gr.Radio(["random", "fixed"], value="random", label="Seed")
                            s_seed = gr.Number(label="Base seed (scene k: seed + k − 1)", value=0, precision=0,
                                               minimum=0, interactive=False)
                        with gr.Row(visible=False) as s_custom_row:
                            s_width = gr.Number(label="Width", value=t2v_default.defaults.width, precision=0,
                                                elem_id="story-width")
                            s_height = gr.Number(label="Height", value=t2v_default.defaults.height, precision=0,
                                                 elem_id="story-height")
                    with gr.Column(scale=2):
                        with gr.Row():
                            s_go = gr.Button("Make the story", variant="primary", elem_id="story-generate")
                            s_cancel = gr.Button("Cancel", variant="stop", interactive=False, elem_id="story-cancel")
                        s_panel = _Panel("story")

            # =========================================== Queue & History =============================================
            with gr.Tab("Queue & History", id="history", elem_id="tab-history"):
                with gr.Row():
                    with gr.Column(scale=3):
                        with gr.Row():
                            h_filter = gr.Dropdown([("all jobs", "all"), ("queued", "queued"),
                                                    ("running", "running"), ("done", "succeeded"),
                                                    ("failed", "failed"), ("cancelled", "cancelled"),
                                                    ("interrupted", "interrupted")], value="all",
                                                   label="Show", scale=1, elem_id="history-filter")
                            h_refresh = gr.Button("Refresh", size="sm", scale=0)
                        h_table = gr.HTML("", elem_id="history-table", js_on_load=HISTORY_JS)
                    with gr.Column(scale=2):
                        h_selected = gr.State(None)
                        h_title = gr.HTML('<div class="lv-sub">Click a job to open it.</div>',
                                          elem_id="history-title", js_on_load=None)
                        h_progress = gr.HTML("", elem_id="history-progress", js_on_load=None)
                        h_result = gr.HTML("", elem_id="history-result", js_on_load=None)
                        with gr.Row():
                            h_reuse = gr.Button("Use these settings", variant="primary", interactive=False,
                                                elem_id="history-reuse")
                            h_retry = gr.Button("Retry", interactive=False, elem_id="history-retry")
                            h_cancel = gr.Button("Cancel", variant="stop", interactive=False,
                                                 elem_id="history-cancel")
                            h_delete = gr.Button("Delete", interactive=False, elem_id="history-delete")
                        with gr.Accordion("Full metadata", open=False, elem_id="history-metadata"):
                            h_meta = gr.JSON(value=None, show_label=False)
                h_timer = gr.Timer(HISTORY_POLL_S)
                h_shown = gr.State("")

            # ================================================ Models ==================================================
            with gr.Tab("Models", id="models", elem_id="tab-models"):
                m_table = gr.HTML("", elem_id="models-table", js_on_load=None)
                with gr.Row():
                    m_pick = gr.Dropdown([m.id for m in all_models()], value=None, label="Model to pull",
                                         elem_id="models-pick", scale=2)
                    m_pull = gr.Button("Pull", variant="primary", elem_id="models-pull", scale=0)
                m_status = gr.HTML("", elem_id="models-pull-status", js_on_load=None)
                gr.Markdown("Pull downloads a model's diffusers files from the Hugging Face hub into the models "
                            "folder (resumable; finished files are kept). Tiny models are built on this machine "
                            "instead.", elem_classes="lv-sub")
                m_timer = gr.Timer(1.0, active=False)

            # ================================================ System ==================================================
            with gr.Tab("System", id="system", elem_id="tab-system"):
                y_html = gr.HTML("", elem_id="system-info", js_on_load=None)
                y_refresh = gr.Button("Refresh", size="sm")

        # ============================================ wiring: Create ==================================================
        def on_model(model_id):
            spec = get_model(model_id)
            row = model_rows().get(model_id)
            d = spec.defaults
            neg = d.negative_prompt[:80] + ("…" if len(d.negative_prompt) > 80 else "")
            return (_duration_update(spec), _preset_update(spec), gr.update(value=d.width), gr.update(value=d.height),
                    gr.update(value=d.steps), gr.update(value=d.guidance),
                    gr.update(placeholder=f"empty: the model's default ({neg})" if neg else "optional"),
                    views.model_info_html(row, spec))

        c_model.input(on_model, c_model, [c_duration, c_preset, c_width, c_height, c_steps, c_guidance, c_negative,
                                          c_model_info])
        c_preset.change(lambda p: gr.update(visible=p == CUSTOM), c_preset, c_custom_row)
        c_seed_mode.change(lambda m: gr.update(interactive=m == "fixed"), c_seed_mode, c_seed)

        create_inputs = [c_model, c_prompt, c_negative, c_duration, c_preset, c_width, c_height, c_steps, c_guidance,
                         c_seed_mode, c_seed, c_strategy, c_quant, c_cache, c_tiling]

        def t2v_fields(model, prompt, negative, duration, preset, width, height, steps, guidance, seed_mode, seed,
                       strategy, quant, cache, tiling) -> dict:
            spec = get_model(model)
            w, h = _size(preset, width, height)
            return dict(prompt=prompt, negative_prompt=negative or None, model=model, width=w, height=h,
                        num_frames=views.frames_for(spec, duration, spec.defaults.fps), steps=int(steps),
                        guidance=float(guidance), seed=_seed(seed_mode, seed), strategy=strategy,
                        quantization=quant, step_cache=None if cache == "none" else cache, vae_tiling=_tiling(tiling))

        def preview(*values):
            from ..planner import plan
            from ..request import GenerationRequest

            try:
                fields = t2v_fields(*values)
                fields["prompt"] = fields["prompt"] or "preview"
                req = GenerationRequest.parse(**fields)
                return views.plan_html(plan(req, get_model(req.model), service.hardware()),
                                       asked_s=float(values[3]))
            except LocalVideoError as e:
                return views.plan_html(error=_for_studio(e, values[0]))

        gr.on([c_model.change, c_duration.change, c_preset.change, c_width.change, c_height.change, c_steps.change,
               c_guidance.change, c_strategy.change, c_quant.change, c_cache.change, c_tiling.change],
              preview, create_inputs, c_plan, show_progress="hidden", trigger_mode="always_last")

        def submit_t2v(*values):
            *values, previous = values
            try:
                job = service.submit(**t2v_fields(*values))
            except Exception as e:  # noqa: BLE001 - shown in the panel, never swallowed
                return (*refused(e, previous, values[0]), gr.skip())
            return (*started(job), job.request.get("seed"))

        panel_out = lambda p, btn: [p.job, p.progress, p.result, btn, p.shown, p.timer]  # noqa: E731
        c_go.click(submit_t2v, [*create_inputs, c_panel.job], [*panel_out(c_panel, c_cancel), c_last_seed])
        c_panel.timer.tick(poll, [c_panel.job, c_panel.shown],
                           [c_panel.progress, c_panel.result, c_cancel, c_panel.shown, c_panel.timer],
                           show_progress="hidden")
        c_cancel.click(cancel, c_panel.job, c_cancel)

        def reuse_seed(last):
            if last is None:
                gr.Warning("No job from this page yet: generate once, then reuse its seed.")
                return gr.skip(), gr.skip()
            return gr.update(value="fixed"), gr.update(value=int(last), interactive=True)

        c_reuse.click(reuse_seed, c_last_seed, [c_seed_mode, c_seed])

        # ============================================ wiring: Image → Video =========================================
        def on_i2v_model(model_id):
            spec = get_model(model_id)
            return (_duration_update(spec), gr.update(value=spec.defaults.steps),
                    gr.update(value=spec.defaults.guidance), _last_frame_update(spec),
                    views.model_info_html(model_rows().get(model_id), spec))

        i_model.input(on_i2v_model, i_model, [i_duration, i_steps, i_guidance, i_last, i_model_info])
        i_seed_mode.change(lambda m: gr.update(interactive=m == "fixed"), i_seed_mode, i_seed)

        def submit_i2v(image, last, model, prompt, negative, duration, steps, guidance, seed_mode, seed, previous):
            from ..errors import InvalidRequest
            from ..media.upload import check_image

            try:
                if not image:
                    raise InvalidRequest("Upload a first frame for image-to-video.",
                                         hint="Drop a PNG, JPEG or WebP on the image box.")
                spec = get_model(model)
                uploads = {}
                for key, path in (("image", image), ("last_image", last)):
                    if path:
                        uploads[key] = check_image(Path(path).read_bytes(),
                                                   max_bytes=settings.api_max_upload_bytes,
                                                   max_pixels=settings.api_max_upload_pixels)
                job = service.submit(uploads=uploads, prompt=prompt, negative_prompt=negative or None, model=model,
                                     num_frames=views.frames_for(spec, duration, spec.defaults.fps),
                                     steps=int(steps), guidance=float(guidance), seed=_seed(seed_mode, seed))
            except Exception as e:  # noqa: BLE001
                return refused(e, previous, model)
            return started(job)

        i_go.click(submit_i2v, [i_image, i_last, i_model, i_prompt, i_negative, i_duration, i_steps, i_guidance,
                                i_seed_mode, i_seed, i_panel.job], panel_out(i_panel, i_cancel))
        i_panel.timer.tick(poll, [i_panel.job, i_panel.shown],
                           [i_panel.progress, i_panel.result, i_cancel, i_panel.shown, i_panel.timer],
                           show_progress="hidden")
        i_cancel.click(cancel, i_panel.job, i_cancel)

        # ============================================ wiring: Photo animation =======================================
        def submit_animation(image, move, parallax, duration, fps, strength, width, height, previous):
            from ..errors import InvalidRequest
            from ..media.upload import check_image

            try:
                if not image:
                    raise InvalidRequest("Upload a photo to animate.", hint="Drop a PNG, JPEG or WebP on the box.")
                upload = check_image(Path(image).read_bytes(), max_bytes=settings.api_max_upload_bytes,
                                     max_pixels=settings.api_max_upload_pixels)
                job = service.submit_animation(uploads={"image": upload}, move=move,
                                               parallax={"on": True, "off": False}.get(parallax),
                                               duration_s=float(duration), fps=float(fps), strength=float(strength),
                                               width=int(width) or None, height=int(height) or None)
            except Exception as e:  # noqa: BLE001
                return refused(e, previous)
            return started(job)

        a_go.click(submit_animation, [a_image, a_move, a_parallax, a_duration, a_fps, a_strength, a_width, a_height,
                                      a_panel.job], panel_out(a_panel, a_cancel))
        a_panel.timer.tick(poll, [a_panel.job, a_panel.shown],
                           [a_panel.progress, a_panel.result, a_cancel, a_panel.shown, a_panel.timer],
                           show_progress="hidden")
        a_cancel.click(cancel, a_panel.job, a_cancel)

        # ================================================ wiring: Story =============================================
        def on_story_model(model_id):
            spec = get_model(model_id)
            return (_preset_update(spec), gr.update(value=spec.defaults.steps), gr.update(value=spec.defaults.width),
                    gr.update(value=spec.defaults.height))

        s_model.input(on_story_model, s_model, [s_preset, s_steps, s_width, s_height])
        s_preset.change(lambda p: gr.update(visible=p == CUSTOM), s_preset, s_custom_row)
        s_seed_mode.change(lambda m: gr.update(interactive=m == "fixed"), s_seed_mode, s_seed)

        def submit_story(script, model, crossfade, continuity, scene_s, preset, width, height, steps, seed_mode, seed,
                         previous):
            try:
                w, h = _size(preset, width, height)
                job = service.submit_story(script=script or "", model=model, crossfade_s=float(crossfade or 0),
                                           continuity={"on": True, "off": False}.get(continuity),
                                           duration_s=float(scene_s) if scene_s else None, width=w, height=h,
                                           steps=int(steps), seed=_seed(seed_mode, seed))
            except Exception as e:  # noqa: BLE001
                return refused(e, previous, model)
            return started(job)

        s_go.click(submit_story, [s_script, s_model, s_crossfade, s_continuity, s_scene_s, s_preset, s_width,
                                  s_height, s_steps, s_seed_mode, s_seed, s_panel.job], panel_out(s_panel, s_cancel))
        s_panel.timer.tick(poll, [s_panel.job, s_panel.shown],
                           [s_panel.progress, s_panel.result, s_cancel, s_panel.shown, s_panel.timer],
                           show_progress="hidden")
        s_cancel.click(cancel, s_panel.job, s_cancel)

        # ========================================== wiring: Queue & History ========================================
        def history(state_filter, selected):
            states = None if state_filter in (None, "all") else [state_filter]
            page = service.list(states, HISTORY_LIMIT, 0)
            return views.history_html(page.jobs, page.total, selected)

        def detail(job_id):
            """Title, progress, result (only when it changed), buttons and metadata of the opened job."""
            if not job_id:
                return ('<div class="lv-sub">Click a job to open it.</div>', "", "", *[gr.update(interactive=False)] * 4,
                        None, "")
            try:
                job = service.get(job_id)
            except LocalVideoError:
                return ('<div class="lv-sub">That job was deleted.</div>', "", "", *[gr.update(interactive=False)] * 4,
                        None, "")
            sidecar = None
            if job.state == "succeeded":
                try:
                    sidecar = json.loads((service.job_dir(job.id) / "video.json").read_text())
                    sidecar = _without_paths(sidecar)
                except (OSError, ValueError):
                    sidecar = None
            prompt = job.request.get("script") or job.request.get("prompt") or ""
            title = (f'<div class="lv-detail-title" data-job="{job.id}"><b>{views.KIND_TEXT.get(job.kind, job.kind)}'
                     f'</b> · job {job.id[:8]} · {views.e(job.request.get("model", ""))}<div class="lv-prompt-full">'
                     f'{views.e(prompt[:600])}</div></div>')
            return (title, views.progress_html(job), views.result_html(job),
                    gr.update(interactive=True), gr.update(interactive=job.state in RETRYABLE),
                    gr.update(interactive=not job.terminal), gr.update(interactive=job.state != "running"),
                    views.job_metadata(job, sidecar), f"{job.id}:{job.state}:{job.version}")

        detail_out = [h_title, h_progress, h_result, h_reuse, h_retry, h_cancel, h_delete, h_meta, h_shown]

        def open_job(state_filter, evt: gr.EventData):
            job_id = getattr(evt, "_data", None) and evt._data.get("job")
            if not job_id:
                return (gr.skip(),) * (len(detail_out) + 2)
            return (job_id, *detail(job_id), history(state_filter, job_id))

        h_table.click(open_job, h_filter, [h_selected, *detail_out, h_table], show_progress="hidden")

        def tick(state_filter, selected, shown):
            table = history(state_filter, selected)
            if not selected:
                return (table, *[gr.skip()] * len(detail_out))
            try:
                job = service.get(selected)
                key = f"{job.id}:{job.state}:{job.version}"
            except LocalVideoError:
                key = "gone"
            if key == shown:
                return (table, *[gr.skip()] * len(detail_out))
            out = list(detail(selected))
            if shown.split(":")[:2] == key.split(":")[:2]:  # same state: keep the <video> element as it is
                out[2] = gr.skip()
            return (table, *out)

        h_timer.tick(tick, [h_filter, h_selected, h_shown], [h_table, *detail_out], show_progress="hidden")
        h_refresh.click(tick, [h_filter, h_selected, gr.State("")], [h_table, *detail_out], show_progress="hidden")
        h_filter.change(history, [h_filter, h_selected], h_table, show_progress="hidden")

        def act(action, job_id, state_filter):
            if job_id:
                try:
                    getattr(service, action)(job_id)
                except LocalVideoError as e:
                    gr.Warning(str(e))
            if action == "delete":
                job_id = None
            return (job_id, *detail(job_id), history(state_filter, job_id))

        for btn, action in ((h_retry, "retry"), (h_cancel, "cancel"), (h_delete, "delete")):
            btn.click(lambda j, f, a=action: act(a, j, f), [h_selected, h_filter],
                      [h_selected, *detail_out, h_table], show_progress="hidden")

        refill_out = [tabs, c_model, c_prompt, c_negative, c_duration, c_preset, c_width, c_height, c_steps,
                      c_guidance, c_seed_mode, c_seed, c_strategy, c_quant, c_cache, c_tiling, c_model_info,
                      i_model, i_prompt, i_negative, i_duration, i_steps, i_guidance, i_seed_mode, i_seed, i_image,
                      i_last, s_script, s_model, s_crossfade, s_continuity, s_scene_s, s_preset, s_steps, s_seed_mode,
                      s_seed, s_width, s_height, a_image, a_move, a_parallax, a_duration, a_fps, a_strength, a_width,
                      a_height]

        def refill(job_id):
            """"Use these settings": the job's request back into its tab (seed fixed), and that tab selected."""
            out: dict = {}
            try:
                job = service.get(job_id or "")
                if job.kind == "photo-animation":
                    r, image = job.request, job.request.get("image")
                    frames = r.get("num_frames")
                    out = {tabs: gr.update(selected="animate"), a_move: r.get("move", "auto"),
                           a_parallax: {True: "on", False: "off"}.get(r.get("parallax"), "auto"),
                           a_duration: r.get("duration_s") or (frames / r.get("fps", 24) if frames else 4),
                           a_fps: r.get("fps", 24), a_strength: r.get("strength", 1.0), a_width: r.get("width") or 0,
                           a_height: r.get("height") or 0,
                           a_image: image if image and Path(image).is_file() else gr.skip()}
                    return [out.get(c, gr.skip()) for c in refill_out]
                spec = get_model(job.request.get("model", ""))
            except LocalVideoError as e:
                gr.Warning(str(e))
                return [gr.skip()] * len(refill_out)
            r, d, seed = job.request, spec.defaults, job.request.get("seed")
            guidance = r.get("guidance") if r.get("guidance") is not None else d.guidance
            w, h = r.get("width") or d.width, r.get("height") or d.height
            seconds = round((r.get("num_frames") or d.frames) / (r.get("fps") or d.fps), 2)
            mode = gr.update(value="fixed" if seed is not None else "random")
            seed_value = gr.update(value=seed if seed is not None else 0, interactive=seed is not None)
            preset = _preset_update(spec, f"{w}x{h}")
            if preset["value"] != f"{w}x{h}":  # not one of the presets: the custom size, exactly
                preset = _preset_update(spec, CUSTOM)
            if job.kind == "story":
                out = {tabs: gr.update(selected="story"), s_script: r.get("script", ""), s_model: spec.id,
                       s_crossfade: r.get("crossfade_s") or 0,
                       s_continuity: {True: "on", False: "off"}.get(r.get("continuity"), "auto"),
                       s_scene_s: r.get("duration_s") or 0, s_preset: preset, s_width: w, s_height: h,
                       s_steps: r.get("steps") or d.steps, s_seed_mode: mode, s_seed: seed_value}
            elif job.kind == "image-to-video":
                image, last = r.get("image"), r.get("last_image")
                out = {tabs: gr.update(selected="i2v"), i_model: spec.id, i_prompt: r.get("prompt", ""),
                       i_negative: r.get("negative_prompt") or "", i_duration: _duration_update(spec, seconds),
                       i_steps: r.get("steps") or d.steps, i_guidance: guidance, i_seed_mode: mode, i_seed: seed_value,
                       i_image: image if image and Path(image).is_file() else gr.skip(),
                       i_last: _last_frame_update(spec, last if last and Path(last).is_file() else None)}
            else:
                out = {tabs: gr.update(selected="create"), c_model: spec.id, c_prompt: r.get("prompt", ""),
                       c_negative: r.get("negative_prompt") or "", c_duration: _duration_update(spec, seconds),
                       c_preset: preset, c_width: w, c_height: h, c_steps: r.get("steps") or d.steps,
                       c_guidance: guidance, c_seed_mode: mode, c_seed: seed_value,
                       c_strategy: r.get("strategy", "auto"), c_quant: r.get("quantization", "auto"),
                       c_cache: _cache_update(r.get("step_cache")),
                       c_tiling: {True: "on", False: "off"}.get(r.get("vae_tiling"), "auto"),
                       c_model_info: views.model_info_html(model_rows().get(spec.id), spec)}
            return [out.get(c, gr.skip()) for c in refill_out]

        h_reuse.click(refill, h_selected, refill_out, show_progress="hidden")

        # ================================================ wiring: Models ============================================
        def models_view():
            from ..runtime.store import find

            rows = service.models()
            disk = {}
            for r in rows:
                found = find(get_model(r["id"]), settings)
                disk[r["id"]] = found.size_bytes if found else None
            return views.models_html(rows, disk, pulls.all())

        def pull(model_id):
            if not model_id:
                gr.Warning("Pick a model first.")
                return gr.skip(), gr.skip(), gr.skip()
            pulls.start(model_id)
            return views.pull_html(model_id, pulls.get(model_id)), models_view(), gr.Timer(active=True)

        def pull_tick(model_id):
            running = pulls.running()
            return (views.pull_html(model_id, pulls.get(model_id)) if model_id else "", models_view(),
                    gr.Timer(active=running))

        m_pull.click(pull, m_pick, [m_status, m_table, m_timer])
        m_timer.tick(pull_tick, m_pick, [m_status, m_table, m_timer], show_progress="hidden")
        m_pick.change(lambda m: views.pull_html(m, pulls.get(m)) if m else "", m_pick, m_status)

        # ================================================ wiring: System ============================================
        def system_view():
            return views.system_html(service.system(), service.models(), auth_required)

        y_refresh.click(system_view, None, y_html)

        # ================================================ on page load ==============================================
        def on_load(c_model_id, i_model_id, s_model_id, state_filter):
            rows = model_rows()
            hw = service.hardware()
            gpu = hw.best_gpu
            where = (f"{gpu.name}, {gpu.free_bytes / 1024 ** 3:.0f} GB free" if gpu else
                     f"no GPU · {hw.ram_available_bytes / 1024 ** 3:.0f} GB RAM free")
            return (gr.update(choices=choices("t2v", rows)), gr.update(choices=choices("i2v", rows)),
                    gr.update(choices=choices("t2v", rows)),
                    views.model_info_html(rows.get(c_model_id), get_model(c_model_id)),
                    views.model_info_html(rows.get(i_model_id), get_model(i_model_id)),
                    f'<div class="lv-hwline">{views.e(where)}</div>', history(state_filter, None),
                    models_view(), system_view())

        demo.load(on_load, [c_model, i_model, s_model, h_filter],
                  [c_model, i_model, s_model, c_model_info, i_model_info, header_hw, h_table, m_table, y_html]
                  ).then(preview, create_inputs, c_plan)
    demo.queue(default_concurrency_limit=None)
    return demo


def _slider(update: dict) -> dict:
    return {k: v for k, v in update.items() if k in ("minimum", "maximum", "value", "step", "info")}


def _dd(update: dict) -> dict:
    return {k: v for k, v in update.items() if k in ("choices", "value")}


def _without_paths(d):
    """The video sidecar without server file paths (outputs, uploads, LoRA/GGUF files)."""
    if isinstance(d, dict):
        return {k: ("(on the server)" if k in ("output", "path", "image", "last_image", "gguf_path") and
                    isinstance(v, str) else _without_paths(v)) for k, v in d.items()}
    if isinstance(d, list):
        return [_without_paths(v) for v in d]
    return d


# ==================================================== mounting =======================================================

LOGIN_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>localvideo · log in</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>
body{margin:0;min-height:100vh;display:grid;place-items:center;background:#0f172a;color:#e2e8f0;
font:16px ui-sans-serif,system-ui,sans-serif}
form{background:#1e293b;padding:2rem 2.2rem;border-radius:14px;width:min(92vw,380px);box-shadow:0 10px 40px #0008}
h1{margin:0 0 .3rem;font-size:1.4rem}h1 span{color:#818cf8}p{color:#94a3b8;font-size:.9rem;margin:.2rem 0 1.2rem}
label{display:block;font-size:.85rem;margin-bottom:.35rem}
input{width:100%;box-sizing:border-box;padding:.65rem .75rem;border-radius:8px;border:1px solid #334155;
background:#0f172a;color:#e2e8f0;font-size:1rem}
button{margin-top:1rem;width:100%;padding:.7rem;border:0;border-radius:8px;background:#6366f1;color:white;
font-size:1rem;cursor:pointer}button:hover{background:#4f46e5}
.err{background:#7f1d1d;color:#fecaca;padding:.55rem .7rem;border-radius:8px;font-size:.9rem;margin-bottom:1rem}
</style></head><body><form method="post" action="/login" id="login">
<h1>▶ localvideo <span>studio</span></h1><p>This server needs its API token. Ask whoever runs it, or look at the
<code>localvideo serve</code> output.</p>__ERROR__
<label for="token">API token</label><input id="token" name="token" type="password" autocomplete="current-password"
autofocus required><button type="submit">Log in</button></form></body></html>"""


def _login_routes(app, token: str) -> None:
    from fastapi import Form, Request
    from fastapi.responses import HTMLResponse, RedirectResponse

    from ..api.auth import SESSION_COOKIE, SESSION_TTL_S, new_session, session_valid

    def page(error: str | None = None, status: int = 200) -> HTMLResponse:
        err = f'<div class="err" id="login-error">{views.e(error)}</div>' if error else ""
        return HTMLResponse(LOGIN_PAGE.replace("__ERROR__", err), status_code=status,
                            headers={"Cache-Control": "no-store"})

    @app.get("/login", include_in_schema=False)
    def login_form(request: Request):
        if session_valid(request.cookies.get(SESSION_COOKIE), token):
            return RedirectResponse("/", status_code=303)
        return page()

    @app.post("/login", include_in_schema=False)
    async def login(request: Request, token_field: str = Form("", alias="token", max_length=1000)):
        import hmac

        if not hmac.compare_digest(token_field.strip().encode(), token.encode()):
            await asyncio.sleep(0.5)  # slows guessing; tokens are long and random anyway
            return page("That token is not right.", 401)
        resp = RedirectResponse("/", status_code=303)
        resp.set_cookie(SESSION_COOKIE, new_session(token), max_age=SESSION_TTL_S, httponly=True, samesite="lax",
                        secure=request.url.scheme == "https", path="/")
        return resp

    @app.get("/logout", include_in_schema=False)
    def logout():
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(SESSION_COOKIE, path="/")
        return resp


class _Gate:
    """In front of the mounted UI: ``/v1`` paths no API route took get the API's own 404/405 (not the UI's), and,
    with a token, nothing of the UI is served without a valid session cookie (browsers are sent to ``/login``)."""

    def __init__(self, app, token: str | None, api_routes: list) -> None:
        self.app = app
        self.token = token
        self.api_routes = api_routes

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if scope["type"] == "http" and (path == "/v1" or path.startswith("/v1/")):
            from starlette.exceptions import HTTPException
            from starlette.routing import Match

            if any(r.matches(scope)[0] == Match.PARTIAL for r in self.api_routes):
                raise HTTPException(405)
            raise HTTPException(404)
        if self.token:
            from starlette.requests import HTTPConnection

            from ..api.auth import SESSION_COOKIE, session_valid

            conn = HTTPConnection(scope)
            if not session_valid(conn.cookies.get(SESSION_COOKIE), self.token):
                if scope["type"] == "websocket":
                    return await send({"type": "websocket.close", "code": 1008})
                from starlette.responses import JSONResponse, RedirectResponse

                if scope["method"] in ("GET", "HEAD") and "text/html" in conn.headers.get("accept", ""):
                    resp = RedirectResponse("/login", status_code=303)
                else:
                    resp = JSONResponse({"error": "unauthorized", "message": "Log in first.",
                                         "hint": "Open /login in a browser (the UI), or use the API with "
                                                 "Authorization: Bearer <token>."}, status_code=401)
                return await resp(scope, receive, send)
        return await self.app(scope, receive, send)


def mount(app, service, settings: Settings | None = None, *, token: str | None = None) -> list[str]:
    """Mount the studio at ``/`` of ``app`` (after its API routes), with a login when ``token`` is set.

    Returns the UI's upload paths, for the caller's body-size guard."""
    from starlette.routing import Mount

    from ..api.auth import SESSION_COOKIE, session_valid

    settings = settings or service.settings
    if token:
        _login_routes(app, token)
    api_routes = [r for r in app.router.routes if not isinstance(r, Mount)]
    blocks = build_ui(service, settings, auth_required=bool(token))
    uploads = settings.home / "uploads"
    gr.mount_gradio_app(
        app, blocks, path="/", theme=THEME, css=CSS, ssr_mode=False, footer_links=[], show_error=True,
        max_file_size=settings.api_max_upload_bytes, allowed_paths=[str(uploads)],
        auth_dependency=(lambda request: "token" if session_valid(request.cookies.get(SESSION_COOKIE), token)
                         else None) if token else None)
    for route in app.router.routes:
        if isinstance(route, Mount) and route.path == "":
            route.app = _Gate(route.app, token, api_routes)
    return ["/gradio_api/upload"]
