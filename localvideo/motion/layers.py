"""Split a photo into a foreground subject and a background plate for 2.5D parallax — only when it is safe.

Masks, in order of preference:

* ``mediapipe-selfie`` — MediaPipe's selfie-segmentation model (vendored ``.tflite``, Apache-2.0) run by OpenCV's DNN
  module; tried when a face was found, because it segments people and nothing else (on a cat it happily marks most
  of the picture).
* ``grabcut`` — OpenCV GrabCut seeded by the focus box, for everything else.

The soft mask is snapped to the image's edges with a guided filter, then judged: a mask that is too small, too large,
uncertain, or whose outline does not follow real edges in the photo is refused, and the animator falls back to a plain
camera move (saying why). Behind an accepted subject, the hole is filled with ``cv2.inpaint`` (at reduced
resolution, where the smooth fill costs little) so that the small amount of background the parallax reveals has
plausible colours.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .focus import Focus

log = logging.getLogger(__name__)

MODELS = Path(__file__).resolve().parent / "models"
SELFIE_MODEL = MODELS / "selfie_segmentation.tflite"
MIN_CONFIDENCE = 0.5
_LOCK = threading.Lock()
_PERSON_DETECTORS = ("blazeface", "haar-face")


@dataclass
class Segmentation:
    """A soft subject mask (float32 0..1, image size) or None, with how it was made and how far to trust it."""

    alpha: np.ndarray | None
    method: str  # mediapipe-selfie | grabcut | none
    confidence: float
    coverage: float  # fraction of the image covered by the subject (alpha > 0.5)
    checks: dict = field(default_factory=dict)
    reason: str = ""

    def to_dict(self) -> dict:
        return {"method": self.method, "confidence": round(float(self.confidence), 3),
                "coverage": round(float(self.coverage), 3), "checks": self.checks, "reason": self.reason}


@dataclass
class Layers:
    """Premultiplied foreground (H, W, 4 float32: r·a, g·a, b·a, a) over an inpainted background plate (uint8)."""

    foreground: np.ndarray
    background: np.ndarray
    segmentation: Segmentation
    inpaint_s: float = 0.0


def segment_foreground(rgb: np.ndarray, focus: Focus, *, seed: int = 0) -> Segmentation:
    """The best subject mask we can make for this image, judged (see module doc). Never raises for a bad image."""
    tried: list[str] = []
    if focus.detector in _PERSON_DETECTORS:
        try:
            seg = _judge(rgb, _selfie_mask(rgb), "mediapipe-selfie", focus)
            if seg.confidence >= MIN_CONFIDENCE:
                return seg
            tried.append(f"mediapipe-selfie: {seg.reason}")
        except Exception as e:  # e.g. an OpenCV build without the TFLite importer
            log.warning("selfie segmentation failed: %s", e)
            tried.append(f"mediapipe-selfie unavailable ({type(e).__name__}: {e})")
    if focus.confidence <= 0.0:
        return Segmentation(None, "none", 0.0, 0.0, reason="; ".join(tried + ["no subject found to seed GrabCut"]))
    try:
        seg = _judge(rgb, _grabcut_mask(rgb, focus, seed=seed), "grabcut", focus)
    except Exception as e:
        log.warning("GrabCut failed: %s", e)
        return Segmentation(None, "none", 0.0, 0.0, reason="; ".join(tried + [f"grabcut failed ({e})"]))
    if tried:
        seg.reason = "; ".join(tried + [seg.reason])
    return seg


def build_layers(rgb: np.ndarray, focus: Focus, *, seed: int = 0,
                 min_confidence: float = MIN_CONFIDENCE) -> tuple[Layers | None, Segmentation]:
    """Foreground + inpainted background when the mask is confident enough, else (None, the refused segmentation)."""
    import time

    seg = segment_foreground(rgb, focus, seed=seed)
    if seg.alpha is None or seg.confidence < min_confidence:
        return None, seg
    t = time.perf_counter()
    plate = inpaint_background(rgb, seg.alpha)
    a = seg.alpha.astype(np.float32)
    fg = np.empty(rgb.shape[:2] + (4,), np.float32)
    fg[:, :, :3] = rgb.astype(np.float32) * a[:, :, None]
    fg[:, :, 3] = a
    return Layers(fg, plate, seg, time.perf_counter() - t), seg


# -- masks -------------------------------------------------------------------------------------------------------
def _selfie_mask(rgb: np.ndarray) -> np.ndarray:
    """Person probability at image size (float32 0..1)."""
    import cv2

    h, w = rgb.shape[:2]
    blob = cv2.dnn.blobFromImage(rgb.astype(np.float32) / 255.0, 1.0, (256, 256), swapRB=False, crop=False)
    with _LOCK:
        net = getattr(_selfie_mask, "net", None)
        if net is None:
            net = cv2.dnn.readNetFromTFLite(str(SELFIE_MODEL))
            _selfie_mask.net = net  # type: ignore[attr-defined]
        net.setInput(blob)
        out = net.forward()
    prob = np.clip(np.squeeze(out).astype(np.float32), 0.0, 1.0)
    if prob.shape != (256, 256):
        raise RuntimeError(f"unexpected selfie-segmentation output shape {out.shape}")
    return cv2.resize(prob, (w, h), interpolation=cv2.INTER_CUBIC).clip(0.0, 1.0)


def _grabcut_mask(rgb: np.ndarray, focus: Focus, *, seed: int = 0, work_side: int = 320) -> np.ndarray:
    """GrabCut seeded by the focus box: outside a margin around it is background, its core probably foreground."""
    import cv2

    h, w = rgb.shape[:2]
    f = min(1.0, work_side / max(h, w))
    small = cv2.resize(rgb, (max(8, round(w * f)), max(8, round(h * f))), interpolation=cv2.INTER_AREA)
    sh, sw = small.shape[:2]
    x, y, bw, bh = (v * f for v in focus.box)
    mask = np.full((sh, sw), cv2.GC_BGD, np.uint8)
    mx, my = 0.15 * bw, 0.15 * bh
    x0, y0 = int(max(1, x - mx)), int(max(1, y - my))
    x1, y1 = int(min(sw - 1, x + bw + mx)), int(min(sh - 1, y + bh + my))
    if x1 - x0 < 4 or y1 - y0 < 4:
        raise ValueError("focus box too small for GrabCut")
    mask[y0:y1, x0:x1] = cv2.GC_PR_BGD
    mask[int(y):int(y + bh), int(x):int(x + bw)] = cv2.GC_PR_FGD
    for (fx, fy, fw, fh), _ in focus.faces[:1]:  # a detected face is certainly foreground
        fx, fy, fw, fh = (v * f for v in (fx, fy, fw, fh))
        mask[int(fy + fh * 0.25):int(fy + fh * 0.75), int(fx + fw * 0.25):int(fx + fw * 0.75)] = cv2.GC_FGD
    cv2.setRNGSeed(int(seed))
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.grabCut(small, mask, None, bgd, fgd, 5, cv2.GC_INIT_WITH_MASK)
    hard = np.isin(mask, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.float32)
    hard = cv2.GaussianBlur(hard, (0, 0), 0.8)
    return cv2.resize(hard, (w, h), interpolation=cv2.INTER_LINEAR).clip(0.0, 1.0)


def _refine(rgb: np.ndarray, prob: np.ndarray) -> np.ndarray:
    """Snap a soft mask's edge to the photo's edges (guided filter when available, else a light blur)."""
    import cv2

    h, w = prob.shape
    r = max(2, round(min(h, w) / 160))
    if hasattr(cv2, "ximgproc"):
        out = cv2.ximgproc.guidedFilter(guide=rgb, src=prob.astype(np.float32), radius=r, eps=(0.04 * 255) ** 2)
    else:
        out = cv2.GaussianBlur(prob.astype(np.float32), (0, 0), r / 2)
    # sharpen the transition back to a few pixels: soft enough not to alias, hard enough not to ghost
    out = np.clip((out - 0.5) * 1.6 + 0.5, 0.0, 1.0)
    return out.astype(np.float32)


def _keep_subject(prob: np.ndarray, focus: Focus) -> np.ndarray:
    """Drop mask islands that do not touch the subject (stray patches the model or GrabCut picked up)."""
    import cv2

    hard = (prob > 0.5).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(hard, connectivity=8)
    if n <= 2:
        return prob
    x, y, bw, bh = focus.faces[0][0] if focus.faces else focus.box
    seed_region = labels[int(y):int(y + bh), int(x):int(x + bw)]
    ids = set(np.unique(seed_region[seed_region > 0]).tolist())
    if not ids:  # nothing under the subject box: keep the biggest island
        ids = {int(np.argmax(stats[1:, cv2.CC_STAT_AREA])) + 1}
    keep = np.isin(labels, list(ids)).astype(np.float32)
    keep = cv2.dilate(keep, np.ones((5, 5), np.uint8))
    keep = cv2.GaussianBlur(keep, (0, 0), 2)
    return prob * keep


def _judge(rgb: np.ndarray, prob: np.ndarray, method: str, focus: Focus) -> Segmentation:
    """Score a raw mask; its confidence is its weakest check:

    * coverage — the subject covers between ~3 % and ~70 % of the picture;
    * certainty — few pixels are undecided (0.15 < p < 0.85) relative to the subject's area;
    * boundary_contrast — the outline runs along edges that are stronger than the texture just inside and outside it
      (the picture's own border does not count);
    * separation — colours just inside the outline differ from those just outside (Bhattacharyya distance of Lab
      histograms): a cut through one surface (a cat's fur, a saucer) scores low even when GrabCut is sure of itself;
    * subject_inside — the face (or focus box) centre is in the mask.
    """
    import cv2

    prob = _keep_subject(prob, focus)
    hard = (prob > 0.5).astype(np.uint8)
    h, w = hard.shape
    coverage = float(hard.mean())
    uncertain = float(((prob > 0.15) & (prob < 0.85)).sum()) / max(1.0, float(hard.sum()))
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    grad = cv2.magnitude(cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3))
    edge = cv2.morphologyEx(hard, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    edge[:3], edge[-3:], edge[:, :3], edge[:, -3:] = False, False, False, False
    r = max(6, round(min(h, w) * 0.03))
    ring = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    ring_out = (cv2.dilate(hard, ring) > 0) & (hard == 0)
    ring_in = (hard > 0) & ~(cv2.erode(hard, ring) > 0)
    near = cv2.dilate(edge.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))) > 0
    bands = (ring_in | ring_out) & ~near
    if edge.any() and bands.any():
        on_edge = cv2.dilate(grad, np.ones((5, 5), np.uint8))[edge].mean()  # tolerate a 2-pixel offset
        contrast = float(on_edge / max(1e-6, float(grad[bands].mean())))
    else:
        contrast = 0.0
    if ring_in.any() and ring_out.any():
        lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)

        def hist(m: np.ndarray) -> np.ndarray:
            hh = cv2.calcHist([lab], [0, 1, 2], m.astype(np.uint8), [8, 8, 8], [0, 256, 0, 256, 0, 256])
            return cv2.normalize(hh, hh).flatten()

        separation = float(cv2.compareHist(hist(ring_in), hist(ring_out), cv2.HISTCMP_BHATTACHARYYA))
    else:
        separation = 0.0
    x, y, bw, bh = focus.faces[0][0] if focus.faces else focus.box
    inside = float(prob[int(np.clip(y + bh / 2, 0, h - 1)), int(np.clip(x + bw / 2, 0, w - 1))])
    scores = {
        "coverage": float(np.clip(min((coverage - 0.02) / 0.02, (0.70 - coverage) / 0.10), 0.0, 1.0)),
        "certainty": float(np.clip(1.0 - (uncertain - 0.10) / 0.40, 0.0, 1.0)),
        "boundary_contrast": float(np.clip((contrast - 1.5) / 1.5, 0.0, 1.0)),
        "separation": float(np.clip((separation - 0.35) / 0.20, 0.0, 1.0)),
        "subject_inside": float(np.clip((inside - 0.3) / 0.4, 0.0, 1.0)),
    }
    conf = min(scores.values())
    weakest = min(scores, key=scores.get)
    checks = {k: round(v, 3) for k, v in scores.items()} | {
        "uncertain_fraction": round(uncertain, 3), "contrast_ratio": round(contrast, 2),
        "bhattacharyya": round(separation, 3)}
    if conf >= MIN_CONFIDENCE:
        return Segmentation(_refine(rgb, prob), method, conf, coverage, checks, "mask accepted")
    return Segmentation(prob, method, conf, coverage, checks,
                        f"{method} mask refused: weakest check '{weakest}' scored {scores[weakest]:.2f}")


# -- background plate --------------------------------------------------------------------------------------------
def inpaint_background(rgb: np.ndarray, alpha: np.ndarray, *, work_side: int = 384) -> np.ndarray:
    """The photo with the subject (grown by a margin) removed and the hole filled (cv2.inpaint, Telea)."""
    import cv2

    h, w = rgb.shape[:2]
    grow = max(3, round(min(h, w) * 0.02))
    hole = cv2.dilate((alpha > 0.02).astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE,
                                                                                  (2 * grow + 1, 2 * grow + 1)))
    f = min(1.0, work_side / max(h, w))
    sw, sh = max(8, round(w * f)), max(8, round(h * f))
    small = cv2.resize(rgb, (sw, sh), interpolation=cv2.INTER_AREA)
    small_hole = (cv2.resize(hole.astype(np.float32), (sw, sh), interpolation=cv2.INTER_AREA) > 0).astype(np.uint8)
    filled = cv2.inpaint(small, small_hole, max(3, round(6 * f * min(h, w) / 256)), cv2.INPAINT_TELEA)
    filled = cv2.GaussianBlur(filled, (0, 0), 1.0)  # hide the fill's streaks a little; it is only seen in slivers
    filled = cv2.resize(filled, (w, h), interpolation=cv2.INTER_CUBIC)
    soft = np.clip(cv2.GaussianBlur(hole.astype(np.float32), (0, 0), max(1.0, grow / 3)) * 2.0, 0.0, 1.0)[:, :, None]
    return np.clip(rgb.astype(np.float32) * (1 - soft) + filled.astype(np.float32) * soft, 0, 255).astype(np.uint8)
