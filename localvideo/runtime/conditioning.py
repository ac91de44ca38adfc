"""Conditioning images for image-to-video: loaded robustly, then fitted to the plan's size without distortion."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Conditioning:
    image: Any  # PIL.Image, exactly the plan's width x height
    info: dict  # what was loaded and how it was fitted (for the metadata)


def fit_image(img, width: int, height: int):
    """Center-crop ``img`` to the target aspect ratio, then resize (Lanczos) to ``width`` x ``height``.

    Returns the fitted image and one sentence saying what was done (recorded in the video's metadata).
    """
    from PIL import Image

    iw, ih = img.size
    target = width / height
    if abs(iw / ih - target) < 1e-3:
        crop = (0, 0, iw, ih)
    elif iw / ih > target:  # too wide: trim the sides
        cw = max(1, round(ih * target))
        left = (iw - cw) // 2
        crop = (left, 0, left + cw, ih)
    else:  # too tall: trim top and bottom
        ch = max(1, round(iw / target))
        top = (ih - ch) // 2
        crop = (0, top, iw, top + ch)
    cropped = img.crop(crop) if crop != (0, 0, iw, ih) else img
    fitted = cropped.resize((width, height), Image.Resampling.LANCZOS) if cropped.size != (width, height) else cropped
    cw, ch = cropped.size
    if crop == (0, 0, iw, ih):
        note = f"image {iw}x{ih} resized to {width}x{height}" if (iw, ih) != (width, height) else \
            f"image {iw}x{ih} used as is"
    else:
        note = f"image {iw}x{ih} center-cropped to {cw}x{ch} (aspect {width}:{height}) and resized to {width}x{height}"
    return fitted, note


def load_conditioning(path: str, width: int, height: int) -> Conditioning:
    from ..motion.image_io import read_image

    loaded = read_image(path)
    fitted, note = fit_image(loaded.image, width, height)
    return Conditioning(fitted, loaded.to_dict() | {"fit": note})


def image_size(path: str) -> tuple[int, int]:
    """(width, height) after EXIF rotation; raises InvalidRequest for unusable images."""
    from ..motion.image_io import read_image

    return read_image(path).size
