"""Animate a still photo without any model weights: a camera move, framed on the subject, optionally in 2.5D.

    photo ─► load (EXIF, colour modes, limits) ─► focus (faces / saliency) ─► layers (mask → judged → inpaint)
          ─► camera plan (eased windows per layer) ─► render (cv2.warpAffine per layer, premultiplied composite)
          ─► the same VideoWriter, tags and sidecar as text-to-video

Which path ran is always recorded (``metadata["path"]``): ``parallax:<mask method>`` when the subject was split from
the background, ``camera-only:<why>`` otherwise (``disabled``, ``low-mask-confidence``, ``no-subject``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from localvideo import __version__
from localvideo.errors import InvalidRequest

from .camera import EASINGS, MOVES, MovePlan, base_window, plan_move
from .focus import Focus, detect_focus
from .image_io import LoadedImage, read_image
from .layers import Layers, Segmentation, build_layers

log = logging.getLogger(__name__)

ALL_MOVES = MOVES + ("auto",)
DEFAULT_DURATION_S = 4.0
DEFAULT_FPS = 24.0
DEFAULT_LONG_SIDE = 768
MAX_SIDE = 4096
MAX_FRAMES = 3600


@dataclass
class AnimateResult:
    path: Path
    sidecar: Path
    metadata: dict
    timings: dict
    move: str
    render_path: str  # e.g. "parallax:mediapipe-selfie" or "camera-only:low-mask-confidence"
    frames: int
    width: int
    height: int
    fps: float
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"path": str(self.path), "sidecar": str(self.sidecar), "move": self.move,
                "render_path": self.render_path, "frames": self.frames, "width": self.width, "height": self.height,
                "fps": self.fps, "timings": self.timings, "warnings": self.warnings, "metadata": self.metadata}


@dataclass
class Scene:
    """Everything decided before rendering: the working image, subject, layers and camera plan."""

    image: LoadedImage
    work: np.ndarray  # RGB uint8 at working resolution
    work_scale: float  # working pixels per source pixel
    focus: Focus
    layers: Layers | None
    segmentation: Segmentation | None
    plan: MovePlan
    render_path: str
    requested_move: str
    notes: list[str]
    warnings: list[str]
    timings: dict


def animate(image: Any, move: str = "auto", *, width: int | None = None, height: int | None = None,
            fps: float = DEFAULT_FPS, duration_s: float | None = None, num_frames: int | None = None,
            output: str | os.PathLike | None = None, parallax: bool | None = None, strength: float = 1.0,
            easing: str = "ease-in-out", seed: int = 0, crf: int = 18, preset: str = "medium",
            on_progress: Callable[[int, int], None] | None = None, settings=None,
            overwrite: bool = False) -> AnimateResult:
    """Turn a photo into an MP4 with a camera move. See the module doc for the stages.

    ``image``: a path, bytes, file object, PIL image or RGB array. ``move``: one of zoom-in, zoom-out, pan-left,
    pan-right, orbit, dolly, auto. ``width``/``height``: output size (default: the photo's own size with its long
    side kept within 256–768: a larger photo is scaled down to 768 long, a smaller one up to 256 long, one in
    between keeps its size; only one given: the other follows the photo's aspect; odd sizes are rounded to even).
    ``duration_s`` or ``num_frames`` (default 4 s). ``parallax``: None = when the subject mask is confident, True =
    ask for it (falls back with a warning), False = plain camera move.
    ``on_progress(frame, total)`` is called as frames are written. An existing ``output`` file is refused unless
    ``overwrite``; a name chosen for you (no output, or a folder) is made unique (``…~1.mp4``).
    """
    from localvideo.media.encode import check_output_path, release_output, reserve_output
    from localvideo.settings import get_settings

    t0 = time.perf_counter()
    move, fps, n, strength, easing = _check_args(move, fps, duration_s, num_frames, strength, easing)
    loaded = read_image(image)
    (w, h), size_notes = _output_size(width, height, loaded.size)
    settings = settings or get_settings()
    path, chosen = _output_path(output, loaded.name, move, settings)
    out_path = check_output_path(path, overwrite=overwrite or chosen)  # fail before heavy work
    out_path = reserve_output(out_path, unique=chosen)  # no other run writes this name until released
    try:
        return _animate_into(out_path, loaded, move, (w, h), n, fps, size_notes, t0, parallax=parallax,
                             strength=strength, easing=easing, seed=seed, crf=crf, preset=preset,
                             on_progress=on_progress)
    finally:
        release_output(out_path)


def _animate_into(out_path: Path, loaded, move: str, size: tuple[int, int], n: int, fps: float, size_notes: list,
                  t0: float, *, parallax, strength, easing, seed, crf, preset, on_progress) -> AnimateResult:
    from localvideo.media.encode import VideoWriter, write_sidecar

    w, h = size
    timings = {"load_s": round(time.perf_counter() - t0, 3)}

    scene = prepare_scene(loaded, move, (w, h), n, parallax=parallax, strength=strength, easing=easing, seed=seed)
    scene.notes[:0] = size_notes
    timings |= scene.timings
    metadata = _metadata(scene, (w, h), n, fps, seed, strength)
    tags = {"title": f"{loaded.name} — {scene.plan.move} (localvideo animate)"[:200],
            "comment": _summary(scene, (w, h), n, fps),
            "localvideo": json.dumps(metadata, ensure_ascii=False, sort_keys=True)}
    t_loop = time.perf_counter()
    with VideoWriter(out_path, fps=fps, crf=crf, preset=preset, metadata=tags) as writer:
        for i, frame in enumerate(render_frames(scene, (w, h))):  # frames stream: never all in memory
            writer.write(frame)
            if on_progress is not None:
                on_progress(i + 1, n)
    enc = writer.result
    total_loop = time.perf_counter() - t_loop
    render_s = scene.timings["render_s"]  # measured inside render_frames; the rest of the loop is encoding
    timings |= {"render_s": round(render_s, 3), "encode_s": round(max(0.0, total_loop - render_s), 3),
                "total_s": round(time.perf_counter() - t0, 3)}
    metadata["timings"] = timings
    metadata["file"] = {"path": str(enc.path), "bytes": enc.bytes, "frames": enc.frames, "width": enc.width,
                        "height": enc.height, "padded": enc.padded}
    sidecar = write_sidecar(enc.path, metadata)
    log.info("animate %s: %s, %s, %d frames in %.1f s", loaded.name, scene.plan.move, scene.render_path, n,
             timings["total_s"])
    return AnimateResult(path=enc.path, sidecar=sidecar, metadata=metadata, timings=timings, move=scene.plan.move,
                         render_path=scene.render_path, frames=enc.frames, width=enc.width, height=enc.height,
                         fps=enc.fps, warnings=list(scene.warnings))


def prepare_scene(image: Any, move: str, out_size: tuple[int, int], num_frames: int, *,
                  parallax: bool | None = None, strength: float = 1.0, easing: str = "ease-in-out",
                  seed: int = 0) -> Scene:
    """Load, find the subject, split layers if safe, resolve ``auto`` and plan the camera (no encoding)."""
    import cv2

    timings: dict = {}
    notes: list[str] = []
    warnings: list[str] = []
    loaded = read_image(image)
    src = np.asarray(loaded.image)
    iw, ih = loaded.size
    # Work at the resolution the closest zoom needs (source pixels ≈ output pixels there): sharper than sampling a
    # huge photo with bilinear taps, and segmentation/inpainting cost follows.
    bw, _ = base_window((iw, ih), out_size)
    scale = min(1.0, (1.0 + 0.4 * strength) * out_size[0] / bw)
    if scale < 1.0:
        work = cv2.resize(src, (max(16, round(iw * scale)), max(16, round(ih * scale))), interpolation=cv2.INTER_AREA)
        scale = work.shape[1] / iw
    else:
        work = np.ascontiguousarray(src)
    t = time.perf_counter()
    focus = detect_focus(work)
    timings["focus_s"] = round(time.perf_counter() - t, 3)

    layers: Layers | None = None
    seg: Segmentation | None = None
    if parallax is False:
        render_path = "camera-only:disabled"
    else:
        t = time.perf_counter()
        layers, seg = build_layers(work, focus, seed=seed)
        timings["layers_s"] = round(time.perf_counter() - t, 3)
        if layers is not None:
            render_path = f"parallax:{seg.method}"
        else:
            render_path = "camera-only:no-subject" if seg.method == "none" else "camera-only:low-mask-confidence"
            if parallax:
                warnings.append(f"Parallax was requested but the subject could not be separated safely "
                                f"({seg.reason}); a plain camera move was rendered instead.")
    resolved = move if move != "auto" else _auto_move(focus, layers is not None, (work.shape[1], work.shape[0]),
                                                       out_size)
    if move == "auto":
        notes.append(f"auto move chose {resolved}")
    t = time.perf_counter()
    plan = plan_move(resolved, (work.shape[1], work.shape[0]), out_size, num_frames, focus_center=focus.center,
                     focus_box=focus.box, focus_confidence=focus.confidence, layered=layers is not None,
                     strength=strength, easing=easing)
    timings["plan_s"] = round(time.perf_counter() - t, 4)
    return Scene(loaded, work, scale, focus, layers, seg, plan, render_path, move, notes, warnings, timings)


def render_frames(scene: Scene, out_size: tuple[int, int]):
    """Yield the frames (H, W, 3 uint8). Every window lies inside the image (see camera.py), and the border mode is
    replicate for the sub-pixel taps at the very edge, so no frame has an empty border."""
    import cv2

    w, h = out_size
    plan = scene.plan
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    bg_src = scene.layers.background if scene.layers is not None else scene.work
    scene.timings["render_s"] = 0.0
    for i in range(len(plan.bg)):
        t = time.perf_counter()
        bg = cv2.warpAffine(bg_src, plan.bg.matrix(i), (w, h), flags=flags, borderMode=cv2.BORDER_REPLICATE)
        if scene.layers is not None and plan.fg is not None:
            fg = cv2.warpAffine(scene.layers.foreground, plan.fg.matrix(i), (w, h), flags=flags,
                                borderMode=cv2.BORDER_REPLICATE)
            a = fg[:, :, 3:4]
            frame = np.clip(fg[:, :, :3] + bg.astype(np.float32) * (1.0 - a) + 0.5, 0, 255).astype(np.uint8)
        else:
            frame = bg
        scene.timings["render_s"] += time.perf_counter() - t
        yield frame


# -- helpers -----------------------------------------------------------------------------------------------------
def _check_args(move, fps, duration_s, num_frames, strength, easing):
    if move not in ALL_MOVES:
        raise InvalidRequest(f"Unknown move '{move}'.", hint=f"Use one of: {', '.join(ALL_MOVES)}.", move=str(move))
    if easing not in EASINGS:
        raise InvalidRequest(f"Unknown easing '{easing}'.", hint=f"Use one of: {', '.join(EASINGS)}.")
    try:
        fps = float(fps)
    except (TypeError, ValueError):
        fps = float("nan")
    if not (1.0 <= fps <= 120.0):
        raise InvalidRequest(f"The frame rate must be between 1 and 120 fps, got {fps:g}.", hint="Try --fps 24.")
    if duration_s is not None and num_frames is not None:
        raise InvalidRequest("Give a duration or a number of frames, not both.", hint="Drop --duration or --frames.")
    if num_frames is None:
        d = DEFAULT_DURATION_S if duration_s is None else float(duration_s)
        if not (0 < d <= MAX_FRAMES / fps):
            raise InvalidRequest(f"The duration must be more than 0 and at most {MAX_FRAMES / fps:g} s at {fps:g} fps, "
                                 f"got {d:g} s.", hint="Try --duration 4.")
        num_frames = max(2, round(d * fps))
    if isinstance(num_frames, bool) or int(num_frames) != num_frames or not 2 <= int(num_frames) <= MAX_FRAMES:
        raise InvalidRequest(f"The number of frames must be a whole number from 2 to {MAX_FRAMES}, got {num_frames}.",
                             hint="Try --frames 96.")
    try:
        strength = float(strength)
    except (TypeError, ValueError):
        strength = float("nan")
    if not 0.1 <= strength <= 3.0:
        raise InvalidRequest(f"The move strength must be between 0.1 and 3, got {strength}.")
    return move, fps, int(num_frames), strength, easing


def _output_size(width, height, image_size) -> tuple[tuple[int, int], list[str]]:
    iw, ih = image_size
    notes: list[str] = []
    for name, v in (("width", width), ("height", height)):
        if v is not None and (isinstance(v, bool) or int(v) != v or not 16 <= int(v) <= MAX_SIDE):
            raise InvalidRequest(f"The output {name} must be a whole number of pixels from 16 to {MAX_SIDE}, got {v}.")
    if width is None and height is None:
        long_side = min(DEFAULT_LONG_SIDE, max(256, iw, ih))
        width, height = (long_side, long_side * ih / iw) if iw >= ih else (long_side * iw / ih, long_side)
    elif width is None:
        width = height * iw / ih
    elif height is None:
        height = width * ih / iw
    w, h = (max(16, min(MAX_SIDE, int(v / 2 + 0.5) * 2)) for v in (width, height))  # odd → next even
    if (width, height) != (w, h) and all(v is not None for v in (width, height)):
        if int(width) == width and int(height) == height and (int(width) % 2 or int(height) % 2):
            notes.append(f"size {int(width)}x{int(height)} rounded to {w}x{h} (H.264 needs even sizes)")
    return (w, h), notes


def _output_path(output, image_name: str, move: str, settings) -> tuple[Path, bool]:
    """The output path, and whether its name was chosen for the user (then made unique when reserved)."""
    from localvideo.media.encode import output_target

    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(image_name).stem)[:40] or "image"
    name = f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-animate-{stem}-{move}.mp4"
    return output_target(output, name, settings.outputs)


def _auto_move(focus: Focus, layered: bool, image_size, out_size) -> str:
    """A person or a confident subject: push in on it (a dolly when it has its own layer). A picture much wider
    than the frame: pan towards the subject's side. Otherwise: zoom in towards the subject."""
    iw, ih = image_size
    if focus.detector in ("blazeface", "haar-face") or focus.confidence >= 0.5:
        return "dolly" if layered else "zoom-in"
    if iw / ih > 1.3 * out_size[0] / out_size[1]:
        return "pan-right" if focus.center[0] >= iw / 2 else "pan-left"
    return "dolly" if layered else "zoom-in"


def _metadata(scene: Scene, size, n, fps, seed, strength) -> dict:
    import cv2

    from .focus import FACE_MODEL
    from .layers import SELFIE_MODEL

    inv = 1.0 / scene.work_scale
    focus = scene.focus.scaled(inv).to_dict()  # in source-image pixels
    return {
        "localvideo_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "kind": "animate",
        "source": scene.image.to_dict(),
        "move": scene.plan.move,
        "requested_move": scene.requested_move,
        "path": scene.render_path,
        "width": size[0], "height": size[1], "num_frames": n, "fps": fps, "duration_s": round(n / fps, 4),
        "easing": scene.plan.easing, "strength": strength, "seed": seed,
        "focus": focus,
        "segmentation": scene.segmentation.to_dict() if scene.segmentation is not None else None,
        "camera": scene.plan.to_dict() | {"working_scale": round(scene.work_scale, 5),
                                          "working_size": [int(scene.work.shape[1]), int(scene.work.shape[0])]},
        "engine": {"opencv_version": cv2.__version__, "models": [FACE_MODEL.name, SELFIE_MODEL.name],
                   "model_licence": "Apache-2.0 (MediaPipe)"},
        "random_weights": False,
        "notes": list(scene.notes),
        "warnings": list(scene.warnings),
        "timings": {},
    }


def _summary(scene: Scene, size, n, fps) -> str:
    return (f"localvideo {__version__}: animate {scene.image.name}, {scene.plan.move} ({scene.render_path}), "
            f"focus {scene.focus.detector}, {size[0]}x{size[1]}, {n} frames @ {fps:g} fps")
