"""Camera paths with easing over a still image (pure numpy; no OpenCV here).

A *window* is the part of the source image one output frame shows: a rectangle with the output's aspect ratio,
given by its centre (cx, cy) and a zoom ≥ 1 relative to the *base window* — the largest such rectangle that fits in
the image. Every window this module produces lies inside the image, so a frame never needs pixels from outside it:
no black borders by construction, not by cropping afterwards.

In layered (2.5D parallax) mode a move has two windows per frame, one for the background plate and one for the
foreground subject. Both are built so they stay inside the image too (the background's positions are convex
combinations of valid foreground positions, or the foreground window is the background one shrunk about a point
inside it), and they coincide at one frame, where the two layers recompose the original photo exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MOVES = ("zoom-in", "zoom-out", "pan-left", "pan-right", "orbit", "dolly")
EASINGS = ("linear", "ease-in-out", "ease-in-out-cubic", "ease-out")

#: How much the foreground moves relative to the background in layered mode (kept modest: the inpainted area behind
#: the subject is only ever revealed by this much).
PARALLAX = 0.5


def ease(t: np.ndarray | float, name: str = "ease-in-out") -> np.ndarray:
    """Map progress 0..1 to eased progress 0..1 (monotone non-decreasing, ease(0)=0, ease(1)=1)."""
    t = np.clip(np.asarray(t, dtype=np.float64), 0.0, 1.0)
    if name == "linear":
        return t
    if name == "ease-in-out":  # sine: gentle start and stop, the default for camera moves
        return 0.5 - 0.5 * np.cos(np.pi * t)
    if name == "ease-in-out-cubic":
        return np.where(t < 0.5, 4 * t**3, 1 - (-2 * t + 2) ** 3 / 2)
    if name == "ease-out":
        return 1 - (1 - t) ** 3
    raise ValueError(f"unknown easing {name!r}; use one of {', '.join(EASINGS)}")


def base_window(image_size: tuple[int, int], out_size: tuple[int, int]) -> tuple[float, float]:
    """(width, height) of the largest rectangle with the output's aspect ratio that fits in the image."""
    iw, ih = image_size
    w, h = out_size
    aspect = w / h
    if iw / ih >= aspect:
        return ih * aspect, float(ih)
    return float(iw), iw / aspect


@dataclass
class CameraPath:
    """Per-frame windows over an image: centres and zooms (arrays of length num_frames)."""

    image_size: tuple[int, int]
    out_size: tuple[int, int]
    cx: np.ndarray
    cy: np.ndarray
    zoom: np.ndarray

    def __post_init__(self) -> None:
        self.cx, self.cy, self.zoom = (np.asarray(a, dtype=np.float64) for a in (self.cx, self.cy, self.zoom))

    def __len__(self) -> int:
        return len(self.zoom)

    @property
    def base(self) -> tuple[float, float]:
        return base_window(self.image_size, self.out_size)

    def windows(self) -> np.ndarray:
        """(N, 4) array of x0, y0, width, height in source pixels (continuous coordinates, edges not centres)."""
        bw, bh = self.base
        ww, wh = bw / self.zoom, bh / self.zoom
        return np.stack([self.cx - ww / 2, self.cy - wh / 2, ww, wh], axis=1)

    def matrix(self, i: int) -> np.ndarray:
        """2×3 affine map from output pixel (u, v) to source pixel (x, y), pixel centres at integers."""
        x0, y0, ww, wh = self.windows()[i]
        w, h = self.out_size
        sx, sy = ww / w, wh / h
        return np.array([[sx, 0.0, x0 + 0.5 * sx - 0.5], [0.0, sy, y0 + 0.5 * sy - 0.5]])

    def inside(self, tol: float = 1e-6) -> bool:
        """Every window lies within the image."""
        x0, y0, ww, wh = self.windows().T
        iw, ih = self.image_size
        return bool(np.all(x0 >= -tol) and np.all(y0 >= -tol) and np.all(x0 + ww <= iw + tol)
                    and np.all(y0 + wh <= ih + tol))

    def reversed(self) -> "CameraPath":
        return CameraPath(self.image_size, self.out_size, self.cx[::-1], self.cy[::-1], self.zoom[::-1])

    def summary(self) -> dict:
        """First and last windows (rounded) for the metadata."""
        win = self.windows()
        return {"first": [round(float(v), 1) for v in win[0]], "last": [round(float(v), 1) for v in win[-1]],
                "zoom": [round(float(self.zoom[0]), 4), round(float(self.zoom[-1]), 4)]}


@dataclass
class MovePlan:
    """What each layer's camera does. ``fg`` is None for a plain camera move."""

    move: str
    easing: str
    bg: CameraPath
    fg: CameraPath | None
    params: dict

    def to_dict(self) -> dict:
        d = {"move": self.move, "easing": self.easing, "params": self.params, "camera": self.bg.summary()}
        if self.fg is not None:
            d["foreground_camera"] = self.fg.summary()
        return d


def clamp_centers(cx, cy, zoom, image_size, out_size):
    """Move window centres the least amount needed to keep each window inside the image."""
    bw, bh = base_window(image_size, out_size)
    iw, ih = image_size
    zoom = np.maximum(np.asarray(zoom, dtype=np.float64), 1.0)
    hw, hh = bw / zoom / 2, bh / zoom / 2
    return np.clip(cx, hw, iw - hw), np.clip(cy, hh, ih - hh)


def plan_move(move: str, image_size: tuple[int, int], out_size: tuple[int, int], num_frames: int, *,
              focus_center: tuple[float, float] | None = None, focus_box: tuple[float, float, float, float] | None = None,
              focus_confidence: float = 0.0, layered: bool = False, strength: float = 1.0,
              easing: str = "ease-in-out") -> MovePlan:
    """Plan one camera move.

    ``focus_center`` pulls the framing towards the subject in proportion to ``focus_confidence`` (a weak cue such
    as saliency moves the camera only a little off-centre). ``strength`` scales zoom amounts and travel (1 = default).
    """
    if move not in MOVES:
        raise ValueError(f"unknown move {move!r}")
    if num_frames < 2:
        raise ValueError("a move needs at least 2 frames")
    if not 0.1 <= strength <= 3.0:
        raise ValueError("strength must be between 0.1 and 3")
    iw, ih = image_size
    bw, bh = base_window(image_size, out_size)
    e = ease(np.linspace(0.0, 1.0, num_frames), easing)
    c0 = np.array([iw / 2.0, ih / 2.0])
    pull = float(np.clip(focus_confidence * 1.25, 0.0, 1.0))
    f = c0 if focus_center is None else c0 + pull * (np.asarray(focus_center, dtype=np.float64) - c0)
    k = strength
    params: dict = {"strength": k, "focus_pull": round(pull, 3), "anchor": [round(float(v), 1) for v in f]}

    def path(cx, cy, zoom) -> CameraPath:
        zoom = np.broadcast_to(np.asarray(zoom, dtype=np.float64), e.shape).copy()
        cx, cy = clamp_centers(np.broadcast_to(cx, e.shape), np.broadcast_to(cy, e.shape), zoom, image_size, out_size)
        return CameraPath(image_size, out_size, cx, cy, zoom)

    def toward(target, zoom):
        """Centres sliding from the image centre to ``target`` as fractions of the room each window has: smooth
        and always inside, however the zoom changes."""
        hw, hh = bw / zoom / 2, bh / zoom / 2
        room_x, room_y = np.maximum(iw - 2 * hw, 1e-9), np.maximum(ih - 2 * hh, 1e-9)
        ux0, uy0 = 0.5, 0.5
        ux1 = np.clip((target[0] - hw[-1]) / room_x[-1], 0, 1) if room_x[-1] > 1e-6 else 0.5
        uy1 = np.clip((target[1] - hh[-1]) / room_y[-1], 0, 1) if room_y[-1] > 1e-6 else 0.5
        ux, uy = ux0 + (ux1 - ux0) * e, uy0 + (uy1 - uy0) * e
        return hw + ux * room_x, hh + uy * room_y

    if move in ("zoom-in", "zoom-out", "dolly"):
        if move == "dolly":
            z_end = 1.0 + (0.10 if layered else 0.18) * k
        else:
            z_end = 1.0 + 0.30 * k
        if focus_box is not None and pull > 0:  # do not zoom past the subject: keep it in the final frame
            fw, fh = focus_box[2], focus_box[3]
            z_fit = min(bw / max(fw * 1.15, 1.0), bh / max(fh * 1.15, 1.0))
            z_end = max(min(z_end, z_fit), 1.0 + 0.12 * k)
        zoom = 1.0 + (z_end - 1.0) * e
        if move == "dolly":  # push in on the subject: it stays put on screen while everything grows around it
            cx, cy = f[0] + (c0[0] - f[0]) / zoom, f[1] + (c0[1] - f[1]) / zoom
        else:
            cx, cy = toward(f, zoom)
        bg = path(cx, cy, zoom)
        fg = None
        if layered:
            # the subject grows faster than the background (it is nearer), scaled about the anchor so it stays put
            extra = 1.0 + (0.14 if move == "dolly" else 0.07) * k * e
            fx, fy = f
            fg = path(fx + (bg.cx - fx) / extra, fy + (bg.cy - fy) / extra, bg.zoom * extra)
            params["foreground_extra_zoom"] = round(float(extra[-1]), 4)
        params["zoom_end"] = round(float(z_end), 4)
        if move == "zoom-out":
            bg = bg.reversed()
            fg = fg.reversed() if fg is not None else None
        return MovePlan(move, easing, bg, fg, params)

    # pans and orbit: a horizontal travel with room made by zooming in just enough
    direction = 1.0 if move in ("pan-right",) else -1.0
    if move == "orbit":
        direction = -1.0  # the camera circles to the right; the background slides right on screen
    travel = 0.18 * k
    z = max(1.0, (1.0 + travel) * bw / iw, 1.06 if move == "orbit" else 1.0)
    ww = bw / z
    slack = iw - ww
    amp = min(slack, travel * ww * (1.0 if iw - bw < travel * ww else 1.6))
    mid_x = float(np.clip(f[0], ww / 2 + amp / 2, iw - ww / 2 - amp / 2))
    cy = np.full_like(e, f[1])
    params |= {"zoom": round(z, 4), "travel_px": round(float(amp), 1)}
    offsets = direction * (e - 0.5) * amp
    if move == "orbit":
        zoom = z * (1.0 + 0.05 * k * e)  # a slight push while circling
        if layered:  # the background slides past a still subject: the whole travel is parallax, so keep it short
            offsets = offsets * 0.6
        bg = path(mid_x + offsets, cy, zoom)
        fg = path(np.full_like(e, mid_x), cy, zoom) if layered else None  # the subject is the pivot
        return MovePlan(move, easing, bg, fg, params)
    if layered:
        fg = path(mid_x + offsets, cy, z)
        bg = path(mid_x + offsets * (1.0 - PARALLAX), cy, z)  # far things move less
        params["background_travel_px"] = round(float(amp * (1.0 - PARALLAX)), 1)
        return MovePlan(move, easing, bg, fg, params)
    return MovePlan(move, easing, path(mid_x + offsets, cy, z), None, params)
