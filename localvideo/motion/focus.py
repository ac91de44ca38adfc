"""Where the subject of a photo is: faces first, then saliency, then the centre — and which of them answered.

Detectors, tried in order:

1. ``blazeface`` — MediaPipe's BlazeFace short-range model (vendored ``.tflite``, Apache-2.0) run by OpenCV's DNN
   module. Reliable for people facing the camera.
2. ``haar-face`` — OpenCV's frontal-face Haar cascade (shipped inside the 4.x OpenCV wheels as ``cv2.data``), when
   present: human faces BlazeFace missed (small or far away).
3. ``saliency`` — OpenCV's spectral-residual saliency. A weak cue, so its confidence stays low and the camera
   leans towards the centre accordingly.
4. ``center`` — nothing found; the middle of the picture with confidence 0.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

MODELS = Path(__file__).resolve().parent / "models"
FACE_MODEL = MODELS / "face_detection_short_range.tflite"
_LOCK = threading.Lock()  # cv2.dnn nets are not safe to share between threads

Box = tuple[int, int, int, int]  # x, y, w, h in image pixels


@dataclass
class Focus:
    """The subject's box (for framing), how sure we are (0..1), and the detector that found it."""

    box: Box
    confidence: float
    detector: str
    image_size: tuple[int, int]  # (width, height) the box refers to
    faces: list[tuple[Box, float]] = field(default_factory=list)  # raw face boxes with scores, best first
    notes: list[str] = field(default_factory=list)

    @property
    def center(self) -> tuple[float, float]:
        x, y, w, h = self.box
        return x + w / 2.0, y + h / 2.0

    def scaled(self, factor: float) -> "Focus":
        """The same focus for the image resized by ``factor``."""
        def s(b: Box) -> Box:
            return tuple(int(round(v * factor)) for v in b)  # type: ignore[return-value]
        w, h = self.image_size
        return Focus(s(self.box), self.confidence, self.detector, (int(round(w * factor)), int(round(h * factor))),
                     [(s(b), sc) for b, sc in self.faces], list(self.notes))

    def to_dict(self) -> dict:
        return {"box": list(self.box), "confidence": round(float(self.confidence), 3), "detector": self.detector,
                "faces": [{"box": list(b), "score": round(float(s), 3)} for b, s in self.faces],
                "notes": list(self.notes)}


def detect_focus(rgb: np.ndarray, *, use_haar: bool = True) -> Focus:
    """Find the subject in an RGB uint8 image (H, W, 3)."""
    h, w = rgb.shape[:2]
    notes: list[str] = []
    faces: list[tuple[Box, float]] = []
    try:
        faces = detect_faces(rgb)
    except Exception as e:  # a broken OpenCV build must not stop the animation; say so
        notes.append(f"blazeface unavailable ({type(e).__name__}: {e})")
        log.warning("BlazeFace failed: %s", e)
    if faces:
        return Focus(_head_and_shoulders(faces[0][0], w, h), float(faces[0][1]), "blazeface", (w, h), faces, notes)
    if use_haar:
        # (The cat-face cascades were tried too: on the chelsea sample they find a paw, not the face.)
        for cascade, name, conf in (("haarcascade_frontalface_default.xml", "haar-face", 0.6),):
            found = _haar(rgb, cascade)
            if found is None:
                notes.append(f"{name} cascade not available in this OpenCV build")
                continue
            if found:
                return Focus(_head_and_shoulders(found[0], w, h), conf, name, (w, h), [(b, conf) for b in found],
                             notes)
    sal = _saliency_box(rgb)
    if sal is not None:
        box, conf = sal
        return Focus(box, conf, "saliency", (w, h), [], notes)
    notes.append("saliency unavailable")
    return Focus((w // 4, h // 4, w // 2, h // 2), 0.0, "center", (w, h), [], notes)


# -- BlazeFace ---------------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _anchors() -> np.ndarray:
    """SSD anchor centres for BlazeFace short range (128², strides 8,16,16,16, two anchors per layer): (896, 2)."""
    out = []
    for stride, per_cell in ((8, 2), (16, 6)):
        n = 128 // stride
        ys, xs = np.mgrid[0:n, 0:n]
        centers = np.stack([(xs + 0.5) / n, (ys + 0.5) / n], axis=-1).reshape(-1, 1, 2)
        out.append(np.repeat(centers, per_cell, axis=1).reshape(-1, 2))
    a = np.concatenate(out).astype(np.float32)
    assert a.shape == (896, 2)
    return a


def detect_faces(rgb: np.ndarray, *, min_score: float = 0.6, iou: float = 0.3) -> list[tuple[Box, float]]:
    """BlazeFace faces as ((x, y, w, h), score), most confident first. Raises if OpenCV cannot run the model."""
    import cv2

    h, w = rgb.shape[:2]
    side = max(h, w)  # letterbox to a square so faces keep their shape, as MediaPipe does
    scale = 128.0 / side
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    small = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA)
    canvas = np.zeros((128, 128, 3), np.float32) - 1.0
    oy, ox = (128 - nh) // 2, (128 - nw) // 2
    canvas[oy:oy + nh, ox:ox + nw] = small.astype(np.float32) / 127.5 - 1.0
    blob = np.ascontiguousarray(canvas.transpose(2, 0, 1)[None])
    with _LOCK:
        net = _face_net()
        net.setInput(blob)
        outs = net.forward(net.getUnconnectedOutLayersNames())
    reg = next(o for o in outs if o.shape[-1] == 16).reshape(-1, 16)
    logit = next(o for o in outs if o.shape[-1] == 1).reshape(-1)
    score = 1.0 / (1.0 + np.exp(-np.clip(logit.astype(np.float64), -60, 60)))
    keep = np.flatnonzero(score >= min_score)
    if keep.size == 0:
        return []
    anchors = _anchors()[keep]
    r = reg[keep] / 128.0
    cx, cy = r[:, 0] + anchors[:, 0], r[:, 1] + anchors[:, 1]
    bw, bh = r[:, 2], r[:, 3]
    boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)  # letterbox units 0..1
    boxes = (boxes * 128.0 - [ox, oy, ox, oy]) / scale  # image pixels
    result = []
    for idx in _weighted_nms(boxes, score[keep], iou):
        group, s = idx
        x0, y0, x1, y1 = np.average(boxes[group], axis=0, weights=score[keep][group])
        x0, y0 = max(0.0, x0), max(0.0, y0)
        x1, y1 = min(float(w), x1), min(float(h), y1)
        if x1 - x0 >= 4 and y1 - y0 >= 4:
            result.append(((int(round(x0)), int(round(y0)), int(round(x1 - x0)), int(round(y1 - y0))), float(s)))
    return result


def _face_net():
    import cv2

    net = getattr(_face_net, "net", None)
    if net is None:
        net = cv2.dnn.readNetFromTFLite(str(FACE_MODEL))
        _face_net.net = net  # type: ignore[attr-defined]
    return net


def _weighted_nms(boxes: np.ndarray, scores: np.ndarray, iou_thr: float) -> list[tuple[np.ndarray, float]]:
    """Group overlapping boxes around the best-scoring one (MediaPipe's 'weighted' NMS)."""
    order = np.argsort(-scores)
    remaining = order.tolist()
    groups = []
    while remaining:
        best = remaining[0]
        ious = _iou(boxes[best], boxes[remaining])
        members = np.array(remaining)[ious >= iou_thr]
        groups.append((members, float(scores[best])))
        remaining = [i for i, v in zip(remaining, ious) if v < iou_thr]
    return groups


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x0, y0 = np.maximum(a[0], b[:, 0]), np.maximum(a[1], b[:, 1])
    x1, y1 = np.minimum(a[2], b[:, 2]), np.minimum(a[3], b[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = lambda c: (c[..., 2] - c[..., 0]) * (c[..., 3] - c[..., 1])  # noqa: E731
    return inter / np.maximum(area(a) + area(b) - inter, 1e-9)


# -- Haar cascades -----------------------------------------------------------------------------------------------
def _haar(rgb: np.ndarray, cascade_file: str) -> list[Box] | None:
    """Faces found by an OpenCV cascade (largest first), [] when none, None when the cascade is not installed."""
    import cv2

    folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
    if not folder or not os.path.isfile(os.path.join(folder, cascade_file)) or not hasattr(cv2, "CascadeClassifier"):
        return None
    clf = cv2.CascadeClassifier(os.path.join(folder, cascade_file))
    if clf.empty():
        return None
    h, w = rgb.shape[:2]
    f = min(1.0, 640.0 / max(h, w))
    gray = cv2.cvtColor(rgb if f == 1.0 else cv2.resize(rgb, (round(w * f), round(h * f)),
                                                          interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY)
    gray = cv2.equalizeHist(gray)
    min_side = max(24, int(0.08 * min(gray.shape)))
    found = clf.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=6, minSize=(min_side, min_side))
    boxes = [tuple(int(round(v / f)) for v in b) for b in (found if len(found) else [])]
    return sorted(boxes, key=lambda b: -b[2] * b[3])  # type: ignore[return-value]


def _head_and_shoulders(face: Box, w: int, h: int) -> Box:
    """Frame a face the way a portrait would: wider than the face and extending below the chin."""
    x, y, fw, fh = face
    cx, cy = x + fw / 2.0, y + fh * 0.9
    bw, bh = fw * 2.4, fh * 2.8
    return _clip_box(cx - bw / 2, cy - bh / 2, bw, bh, w, h)


def _clip_box(x: float, y: float, bw: float, bh: float, w: int, h: int) -> Box:
    x0, y0 = max(0.0, x), max(0.0, y)
    x1, y1 = min(float(w), x + bw), min(float(h), y + bh)
    return int(round(x0)), int(round(y0)), max(1, int(round(x1 - x0))), max(1, int(round(y1 - y0)))


# -- saliency ----------------------------------------------------------------------------------------------------
def _saliency_box(rgb: np.ndarray) -> tuple[Box, float] | None:
    """The box around the saliency mass (weighted mean ± 1.2 σ) and a confidence ≤ 0.4 from how concentrated it is."""
    import cv2

    if not hasattr(cv2, "saliency"):
        return None
    h, w = rgb.shape[:2]
    f = 128.0 / max(h, w)
    small = cv2.resize(rgb, (max(8, round(w * f)), max(8, round(h * f))), interpolation=cv2.INTER_AREA)
    ok, sal = cv2.saliency.StaticSaliencySpectralResidual_create().computeSaliency(small)
    if not ok:
        return None
    sal = cv2.GaussianBlur(sal.astype(np.float32), (0, 0), 3)
    sal = np.clip(sal - np.median(sal), 0, None)
    total = float(sal.sum())
    if total <= 1e-9:
        return None
    sh, sw = sal.shape
    ys, xs = np.mgrid[0:sh, 0:sw]
    mx, my = float((sal * xs).sum() / total), float((sal * ys).sum() / total)
    sx = float(np.sqrt((sal * (xs - mx) ** 2).sum() / total))
    sy = float(np.sqrt((sal * (ys - my) ** 2).sum() / total))
    # uniform saliency has σ ≈ side/√12 ≈ 0.29 side; a compact subject much less
    spread = (sx / sw + sy / sh) / 2.0
    conf = float(np.clip((0.29 - spread) / 0.29, 0.0, 1.0)) * 0.4
    bw, bh = max(2.4 * sx, 0.15 * sw), max(2.4 * sy, 0.15 * sh)
    x, y, bw_i, bh_i = _clip_box(mx - bw / 2, my - bh / 2, bw, bh, sw, sh)
    box = _clip_box(x / f, y / f, bw_i / f, bh_i / f, w, h)
    return box, conf
