"""HTML for the web UI, from plain values (jobs, model rows, plans). No gradio here: every view is a function of its
inputs, so it can be tested and reused. Everything user-supplied is escaped."""

from __future__ import annotations

import html
import json
from datetime import datetime, timezone
from typing import Any

from ..catalog import ModelSpec
from ..planner import snap_frames, snap_size

PHASE_TEXT = {"queued": "Waiting in the queue", "loading": "Loading the model", "denoising": "Denoising",
              "decoding": "Decoding frames (VAE)", "encoding": "Encoding the MP4", "joining": "Joining scenes", "rendering": "Rendering frames",
              "done": "Finishing"}
STATE_TEXT = {"queued": "queued", "running": "running", "succeeded": "done", "failed": "failed",
              "cancelled": "cancelled", "interrupted": "interrupted"}
KIND_TEXT = {"text-to-video": "text → video", "image-to-video": "image → video", "story": "story",
             "photo-animation": "photo animation"}
STEPPED = ("denoising", "rendering")  # phases with a step count: a determinate bar
# A running job in phase "queued" is not in the queue, so it must not say so. Its progress message says what it waits
# for (a pipeline another job holds, localvideo.runtime.recovery; another Ray actor after one died, ray_executor).
# Without one (a story's progress carries no message; progress stored by an older localvideo) it is the model wait.
WAITING_FOR_MODEL = "Waiting for the model: another job is using it"

e = html.escape


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "—"
    s = max(0.0, float(s))
    if s < 60:
        return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"
    m, sec = divmod(int(round(s)), 60)
    if m < 60:
        return f"{m} min {sec:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "—"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def fmt_when(t: datetime | None, now: datetime | None = None) -> str:
    if t is None:
        return "—"
    now = now or datetime.now(timezone.utc)
    ago = (now - t).total_seconds()
    if ago < 5:
        return "just now"
    if ago < 3600:
        return f"{fmt_seconds(ago)} ago"
    return t.astimezone().strftime("%Y-%m-%d %H:%M")


def media_urls(job_id: str) -> tuple[str, str]:
    """The API's download URLs (range requests; behind a token, the UI's session cookie admits them)."""
    return f"/v1/jobs/{job_id}/video", f"/v1/jobs/{job_id}/thumbnail"


def phase_text(job) -> str:
    """What the job is doing now, in words: its progress message when it has one (one sentence, shown without the
    final period, like the phase words), else its phase (a running job's ``queued`` without a message: the model)."""
    p = job.progress
    if p.message:
        return p.message[:-1] if p.message.endswith(".") and not p.message.endswith("..") else p.message
    if p.phase == "queued" and job.state == "running":
        return WAITING_FOR_MODEL
    return PHASE_TEXT.get(p.phase, p.phase)


def _bar(value: float, maximum: float, label: str, cls: str = "") -> str:
    maximum = max(maximum, 1e-9)
    pct = max(0.0, min(100.0, 100.0 * value / maximum))
    return (f'<div class="lv-bar {cls}"><progress class="lv-progress" value="{value:g}" max="{maximum:g}" '
            f'aria-label="{e(label)}"></progress><span class="lv-pct">{pct:.0f}%</span></div>')


def progress_html(job, error: str | None = None, previous=None) -> str:
    """The live progress panel of one job: state badge, phase, step/total, a real <progress>, elapsed and ETA.

    With ``error`` (a submission refused): the reason, and where the panel's ``previous`` job went (the panel no
    longer follows it, so its video is not left under a refusal as if it were this submission's).
    ``data-state``/``data-phase``/``data-step`` mirror what is shown, for people with tools (and the browser tests).
    """
    if error:
        before = ""
        if previous is not None:
            doing = "is still " + STATE_TEXT[previous.state] if not previous.terminal else "is"
            before = (f'<div class="lv-sub">Your previous job ({e(previous.id[:8])}) {doing} in '
                      f'<b>Queue &amp; History</b>.</div>')
        return f'<div class="lv-panel lv-error" data-state="refused"><b>Not queued.</b> {e(error)}{before}</div>'
    if job is None:
        return ('<div class="lv-panel lv-idle" data-state="idle">Nothing running yet. Fill in the form and press '
                '<b>Generate</b>.</div>')
    p = job.progress
    state = job.state
    head = (f'<span class="lv-badge lv-{state}">{STATE_TEXT[state]}</span> '
            f'<span class="lv-jobid" title="job id">job {e(job.id[:8])}</span>')
    rows = []
    step = total = 0
    phase = p.phase if p else ("done" if state == "succeeded" else "")
    if state in ("queued", "running") and p is not None:
        step, total = p.step, p.total
        what = phase_text(job)
        if p.scenes:
            what = f"Scene {p.scene} of {p.scenes} · {what}"
            rows.append(_bar((p.scene or 1) - 1 + (step / total if total and p.phase in STEPPED else 0),
                             p.scenes, "scenes", "lv-scenes"))
        if p.phase in STEPPED and total:
            what += f" · {'frame' if p.phase == 'rendering' else 'step'} {step} of {total}"
            rows.append(_bar(step, total, "steps"))
        elif p.phase == "queued":
            rows.append('<div class="lv-bar"><progress class="lv-progress" aria-label="waiting"></progress></div>')
        else:  # loading / decoding / encoding: no step count to show, so an indeterminate bar (honest)
            rows.append('<div class="lv-bar"><progress class="lv-progress" aria-label="working"></progress></div>')
        if job.cancel_requested:
            what += " · cancelling…"
        eta = f" · about {fmt_seconds(p.eta_s)} left" if p.eta_s is not None and p.phase in STEPPED else ""
        rows.insert(0, f'<div class="lv-phase">{e(what)}</div>')
        rows.append(f'<div class="lv-times">elapsed {fmt_seconds(p.elapsed_s)}{eta}</div>')
    elif state == "succeeded":
        r = job.result
        rows.append(_bar(1, 1, "done"))
        took = r.timings.get("total_s") if r else None
        rows.append(f'<div class="lv-phase">Finished{f" in {fmt_seconds(took)}" if took else ""}.</div>')
    elif job.error is not None:
        hint = f' <span class="lv-hint">{e(job.error.hint)}</span>' if job.error.hint else ""
        rows.append(f'<div class="lv-phase">{e(job.error.message)}{hint}</div>')
    return (f'<div class="lv-panel" data-state="{state}" data-phase="{e(phase)}" data-step="{step}" '
            f'data-total="{total}" data-job="{e(job.id)}">{head}{"".join(rows)}</div>')


def result_html(job) -> str:
    """The finished video, inline (an HTML <video> on the API's range-capable URL) with a download link."""
    if job is None or job.state != "succeeded" or job.result is None:
        if job is not None and job.state in ("queued", "running"):
            return '<div class="lv-result lv-pending">The video appears here when it is done.</div>'
        return '<div class="lv-result lv-empty"></div>'
    r = job.result
    video, thumb = media_urls(job.id)
    poster = f' poster="{thumb}"' if r.has_thumbnail else ""
    warn = ""
    if r.random_weights:
        warn = ('<div class="lv-warn">RANDOM WEIGHTS: this test model makes noise, not a picture. Pull a real model '
                'on the Models tab for a real video.</div>')
    degraded = ""
    if r.degraded:  # the OOM ladder's rungs: the video is not what was asked for, so it says so above the video
        degraded = ('<div class="lv-warn lv-degraded" data-degraded="true"><b>Made with less:</b> memory ran out, so '
                    'the run stepped down to finish: <ul>' + "".join(f"<li>{e(d)}</li>" for d in r.degraded)
                    + "</ul></div>")
    notes = "".join(f"<li>{e(n)}</li>" for n in r.notes)
    notes = f'<ul class="lv-notes">{notes}</ul>' if notes else ""
    return (f'<div class="lv-result" data-job="{e(job.id)}">{warn}{degraded}'
            f'<video class="lv-video" controls loop playsinline preload="metadata" src="{video}"{poster}></video>'
            f'<div class="lv-facts">{r.width}×{r.height} · {r.frames} frames · {r.fps:g} fps · {r.duration_s:.2f} s · '
            f'seed {r.seed} · {e(r.model)} · {e(r.strategy)} · {fmt_bytes(r.bytes)}'
            f' · <a class="lv-download" href="{video}" download="localvideo-{e(job.id[:8])}.mp4">Download MP4</a></div>'
            f'{notes}</div>')


def _prompt_of(job) -> str:
    req = job.request
    if job.kind == "story":
        return req.get("script", "")
    if job.kind == "photo-animation":
        return f"camera move: {req.get('move', 'auto')}"
    return req.get("prompt", "")


def history_html(jobs: list, total: int, selected: str | None = None) -> str:
    """Every job (newest first): thumbnail, state, kind, prompt, model, time. Rows carry ``data-job`` (click opens)."""
    if not jobs:
        return '<div class="lv-panel lv-idle">No jobs yet. Jobs from the API, the CLI and this page all show here.</div>'
    now = datetime.now(timezone.utc)
    rows = []
    for j in jobs:
        video, thumb = media_urls(j.id)
        if j.state == "succeeded" and j.result is not None and j.result.has_thumbnail:
            img = f'<img class="lv-thumb" src="{thumb}" alt="thumbnail" loading="lazy">'
        else:
            img = f'<div class="lv-thumb lv-nothumb">{e(STATE_TEXT[j.state])}</div>'
        p = j.progress
        if j.state == "running" and p is not None:
            extra = phase_text(j) + (f" {p.step}/{p.total}" if p.phase in STEPPED else "")
        elif j.error is not None and j.state != "succeeded":
            extra = j.error.message
        else:
            extra = ""
        prompt = _prompt_of(j)
        sel = " lv-selected" if j.id == selected else ""
        rows.append(
            f'<tr class="lv-row{sel}" data-job="{j.id}" data-state="{j.state}" tabindex="0">'
            f'<td>{img}</td>'
            f'<td><span class="lv-badge lv-{j.state}">{STATE_TEXT[j.state]}</span>'
            f'<div class="lv-sub" title="{e(extra[:1000])}">{e(extra[:80])}{"…" if len(extra) > 80 else ""}</div></td>'
            f'<td class="lv-prompt" title="{e(prompt[:500])}">{e(prompt[:140])}{"…" if len(prompt) > 140 else ""}'
            f'<div class="lv-sub">{KIND_TEXT.get(j.kind, j.kind)} · job {j.id[:8]}</div></td>'
            f'<td>{e(j.request.get("model", ""))}</td>'
            f'<td title="{j.created_at.isoformat()}">{fmt_when(j.created_at, now)}</td></tr>')
    more = f'<div class="lv-sub">Showing the newest {len(jobs)} of {total}.</div>' if total > len(jobs) else ""
    return ('<table class="lv-table lv-history"><thead><tr><th></th><th>State</th><th>Prompt</th><th>Model</th>'
            f'<th>Created</th></tr></thead><tbody>{"".join(rows)}</tbody></table>{more}')


def model_choice_label(row: dict) -> str:
    bits = [row["id"]]
    if row["random_weights"]:
        bits.append("RANDOM WEIGHTS")
    bits.append("installed" if row["installed"] else
                f"incomplete ({row['weights_gb']:.1f} GB)" if row.get("incomplete") else
                f"not installed ({row['weights_gb']:.1f} GB)")
    bits.append("fits" if row["fits"] else "does not fit")
    return " · ".join(bits)


def model_info_html(row: dict | None, spec: ModelSpec | None) -> str:
    if row is None or spec is None:
        return ""
    parts = [f"<b>{e(row['name'])}</b> — {e(spec.description)}"]
    if row["random_weights"]:
        parts.append('<span class="lv-badge lv-failed">random weights</span> output is noise (for trying the UI).')
    if row["installed"]:
        parts.append('<span class="lv-badge lv-succeeded">installed</span>'
                     + (" built on this machine on first use" if row["built_on_first_use"] else ""))
    elif row.get("incomplete"):
        parts.append(f'<span class="lv-badge lv-failed">incomplete</span> {e(row["incomplete"])}: finish the download '
                     f'on the Models tab (or <code>{e(row["pull_command"] or "")}</code>)')
    else:
        parts.append(f'<span class="lv-badge lv-queued">not installed</span> pull it on the Models tab '
                     f'(or <code>{e(row["pull_command"] or "")}</code>)')
    if row["fits"]:
        parts.append(f'<span class="lv-badge lv-succeeded">fits</span> at default settings: {e(row["strategy"] or "")}'
                     f', peak ≈ {row["peak_gb"]:.1f} GB')
    else:
        parts.append(f'<span class="lv-badge lv-failed">does not fit</span> {e(row["reason"] or "")}')
    return '<div class="lv-modelinfo">' + "<br>".join(parts) + "</div>"


def size_presets(spec: ModelSpec) -> list[tuple[str, str]]:
    """Sizes this model handles well: native, portrait, square of the same area, half size, double (tiny models);
    all snapped to the model's multiple and within its pixel limit. Values are ``"WxH"``."""
    d = spec.defaults
    w, h = d.width, d.height
    out = [(f"{w}×{h} (native)", f"{w}x{h}")]
    if spec.fixed_size:
        return out
    m = spec.size_multiple
    side = snap_size(int((w * h) ** 0.5), m)
    cands = [((h, w), "portrait" if w > h else "landscape"), ((side, side), "square"),
             ((snap_size(w // 2, m), snap_size(h // 2, m)), "half, faster"),
             ((snap_size(w * 2, m), snap_size(h * 2, m)), "double")]
    seen = {(w, h)}
    for (cw, ch), what in cands:
        if (cw, ch) in seen or cw * ch > spec.max_pixels:
            continue
        seen.add((cw, ch))
        out.append((f"{cw}×{ch} ({what})", f"{cw}x{ch}"))
    return out


def frames_for(spec: ModelSpec, seconds: float, fps: float) -> int:
    """Seconds → the nearest frame count this model can make (its 4k+1 / 8k+1 rule, within its maximum)."""
    return snap_frames(spec, max(1, int(round(float(seconds) * fps))))


def plan_html(plan=None, error=None, asked_s: float | None = None) -> str:
    """The planner's answer for the form as it stands: what will run, what was changed and why, or why it cannot."""
    if error is not None:
        hint = f'<div class="lv-hint">{e(error.hint)}</div>' if getattr(error, "hint", None) else ""
        return (f'<div class="lv-plan lv-nofit" data-fits="false"><b>Will not run:</b> {e(error.message)}'
                f'{hint}</div>')
    if plan is None:
        return ""
    est = plan.estimate
    gb = 1024 ** 3
    where = "RAM" if plan.device == "cpu" else plan.device
    lines = [f"<b>{plan.width}×{plan.height}</b>, <b>{plan.num_frames} frames</b> at {plan.fps:g} fps = "
             f"<b>{plan.duration_s:.2f} s</b>"
             + (f" (you asked {asked_s:.2f} s; the model needs {e(_rule(plan))} frames)" if asked_s is not None
                and abs(asked_s - plan.duration_s) > 0.005 else ""),
             f"{plan.steps} steps · guidance {plan.guidance:g} · {e(plan.strategy)}"
             f"{' + VAE tiling' if plan.vae_tiling else ''} · peak ≈ {est.peak_device_bytes / gb:.1f} GB of "
             f"{e(where)} (budget {plan.budget_device_bytes / gb:.1f} GB)"]
    if plan.quantization != "none":
        lines.append(f"quantization: {e(plan.quantization)}")
    if plan.step_cache:
        lines.append(f"step cache: {e(plan.step_cache)}"
                     + (" (a full-quality run that measures MagCache's ratios for this model)"
                        if plan.step_cache == "mag:calibrate" else ""))
    lines += [f'<span class="lv-note">changed: {e(n)}</span>' for n in plan.notes]
    lines += [f'<span class="lv-warnline">{e(w)}</span>' for w in plan.warnings]
    return '<div class="lv-plan" data-fits="true">' + "<br>".join(lines) + "</div>"


def _rule(plan) -> str:
    from ..catalog import get_model

    try:
        return str(get_model(plan.model).frame_rule)
    except Exception:  # noqa: BLE001
        return "valid"


def models_html(rows: list[dict], disk: dict[str, int | None], pulls: dict[str, dict]) -> str:
    out = []
    for r in rows:
        size = disk.get(r["id"])
        on_disk = fmt_bytes(size) if size else "—"
        pull = pulls.get(r["id"])
        if pull and pull["state"] == "running":
            inst = f'<span class="lv-badge lv-running">pulling</span>'
        elif r["installed"]:
            inst = ('<span class="lv-badge lv-succeeded">installed</span>' if not r["built_on_first_use"] else
                    '<span class="lv-badge lv-queued">built on first use</span>')
        elif r.get("incomplete"):
            inst = f'<span class="lv-badge lv-failed">incomplete</span><div class="lv-sub">{e(r["incomplete"])}</div>'
        else:
            inst = '<span class="lv-badge lv-cancelled">not installed</span>'
        fit = ('<span class="lv-badge lv-succeeded">fits</span> ' + e(r["strategy"] or "")
               if r["fits"] else f'<span class="lv-badge lv-failed">no</span> <span class="lv-sub">{e(r["reason"] or "")}</span>')
        name = e(r["name"]) + (' <span class="lv-badge lv-failed">random weights</span>' if r["random_weights"] else "")
        out.append(f'<tr data-model="{e(r["id"])}"><td><b>{e(r["id"])}</b><div class="lv-sub">{name}</div></td>'
                   f'<td>{e(", ".join(r["tasks"]))}</td><td>{_weights(r)}</td><td>{on_disk}</td>'
                   f'<td>{e(r["licence"])}</td><td>{inst}</td><td>{fit}</td></tr>')
    return ('<table class="lv-table lv-models"><thead><tr><th>Model</th><th>Tasks</th><th>Weights</th>'
            '<th>On disk</th><th>Licence</th><th>Installed</th><th>Fits this machine</th></tr></thead>'
            f'<tbody>{"".join(out)}</tbody></table>')


def _weights(row: dict) -> str:
    from ..catalog import get_model

    try:
        return fmt_bytes(get_model(row["id"]).weights_bytes)
    except Exception:  # noqa: BLE001 - a model the catalog no longer has
        return f'{row["weights_gb"]:.2f} GB'


def pull_html(model_id: str | None, pull: dict | None) -> str:
    if not model_id:
        return ""
    if pull is None:
        return f'<div class="lv-panel lv-idle" data-state="idle">Pick a model and press Pull.</div>'
    state = pull["state"]
    if state == "running":
        need, have = pull.get("total"), pull.get("bytes", 0)
        bar = (_bar(have, need, "download") if need else
               '<div class="lv-bar"><progress class="lv-progress" aria-label="working"></progress></div>')
        what = (f"{fmt_bytes(have)} of {fmt_bytes(need)}" if need else "asking the hub for the file list…")
        return (f'<div class="lv-panel" data-state="running"><span class="lv-badge lv-running">pulling</span> '
                f'{e(model_id)}{bar}<div class="lv-times">{what}</div></div>')
    if state == "succeeded":
        return (f'<div class="lv-panel" data-state="succeeded"><span class="lv-badge lv-succeeded">installed</span> '
                f'{e(model_id)} at <code>{e(pull.get("path", ""))}</code> ({fmt_bytes(pull.get("size"))})</div>')
    hint = f' <span class="lv-hint">{e(pull["hint"])}</span>' if pull.get("hint") else ""
    return (f'<div class="lv-panel lv-error" data-state="failed"><span class="lv-badge lv-failed">pull failed</span> '
            f'{e(pull.get("message", ""))}{hint}</div>')


def system_html(system: dict, models: list[dict], auth_required: bool) -> str:
    hw = system["hardware"]
    gb = 1024 ** 3
    gpus = hw.get("gpus") or []
    if gpus:
        gpu_rows = "".join(f'<li><b>{e(g["name"])}</b> ({e(g["device"])}): {g["free_bytes"] / gb:.1f} GB free of '
                           f'{g["total_bytes"] / gb:.1f} GB{", compute " + e(g["capability"]) if g.get("capability") else ""}'
                           f'</li>' for g in gpus)
    elif not hw.get("notes"):
        gpu_rows = "<li>No GPU found: jobs run on the CPU (fine for tiny models, hours for real ones).</li>"
    else:
        gpu_rows = ""
    notes = "".join(f"<li>{e(n)}</li>" for n in hw.get("notes") or [])
    fits = [m for m in models if m["fits"]]
    nofit = [m for m in models if not m["fits"]]
    fit_list = "".join(f'<li><b>{e(m["id"])}</b>: {e(m["strategy"] or "")}, peak ≈ {m["peak_gb"]:.1f} GB'
                       f'{" (random weights)" if m["random_weights"] else ""}</li>' for m in fits)
    nofit_list = "".join(f'<li><b>{e(m["id"])}</b>: {e(m["reason"] or "")}</li>' for m in nofit)
    workers = "".join(f'<li>{e(w["name"])} on {e(w["device"])}: '
                      f'{("job " + e(w["job_id"][:8])) if w.get("job_id") else "idle"}</li>'
                      for w in system.get("workers") or []) or "<li>starting…</li>"
    q = system.get("queue", {})
    sw = dict(system.get("software") or {})
    if sw.get("torch") and sw.get("torch_build"):
        sw["torch"] += f" ({sw['torch_build']})"
    libs = ", ".join(f"{name} {sw[name]}" for name in ("torch", "diffusers", "transformers") if sw.get(name))
    return (
        '<div class="lv-system">'
        f'<h3>This machine</h3><ul><li>CPU: {e(hw.get("cpu_name") or "?")} ({hw.get("cpu_count")} cores), '
        f'{e(hw.get("platform") or "")}</li>'
        f'<li>RAM: {hw["ram_available_bytes"] / gb:.1f} GB available of {hw["ram_total_bytes"] / gb:.1f} GB</li>'
        f'<li>Disk: {hw["disk_free_bytes"] / gb:.0f} GB free</li>{gpu_rows}{notes}'
        + (f'<li>Software: {e(libs)}</li>' if libs else "") + '</ul>'
        f'<h3>What fits (default settings)</h3><ul>{fit_list or "<li>nothing</li>"}</ul>'
        + (f'<details><summary>Does not fit ({len(nofit)})</summary><ul>{nofit_list}</ul></details>' if nofit else "")
        + f'<h3>Job service</h3><ul>{workers}<li>queue: {q.get("queued", 0)} waiting, {q.get("running", 0)} '
        f'running</li><li>localvideo {e(system.get("version", ""))}; REST API at <a href="/docs">/docs</a> '
        f'(same queue as this page)</li><li>access: '
        + ("token required (this browser is logged in; <a href=\"/logout\">log out</a>)" if auth_required else
           "loopback only, no token") + "</li></ul></div>")


def job_metadata(job, sidecar: dict | None) -> dict[str, Any]:
    """Everything recorded about a job, for the History detail view (server paths of uploads are not shown)."""
    d = json.loads(job.model_dump_json())
    for key in ("image", "last_image"):
        if d["request"].get(key):
            d["request"][key] = "uploaded:" + str(d["request"][key]).replace("\\", "/").rsplit("/", 1)[-1]
    if sidecar is not None:
        d["video_metadata"] = sidecar
    return d
