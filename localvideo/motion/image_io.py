"""Load a user's photo robustly: any common format, EXIF rotation applied, always 8-bit RGB.

Shared by the photo animator and (later) image-to-video. Every way an image can be unusable — missing, not an image,
truncated, too small, too large (including decompression bombs whose header claims billions of pixels) — becomes an
:class:`~localvideo.errors.InvalidRequest` with one sentence saying which, before any pixel data is decoded where
the header already tells.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from localvideo.errors import InvalidRequest

MAX_PIXELS = 80_000_000  # a 10 000 × 8 000 photo; larger is refused before decoding
MAX_BYTES = 200 * 1024 * 1024
MIN_SIDE = 16
NEUTRAL_BACKGROUND = (128, 128, 128)  # what transparent pixels are composited onto

_HINT_FORMAT = "Use a JPEG, PNG, WebP, TIFF, BMP or GIF photo."


@dataclass
class LoadedImage:
    """An RGB image plus what we learnt loading it (recorded in the video's metadata)."""

    image: Image.Image  # mode "RGB", EXIF orientation already applied
    name: str
    sha256: str  # of the file's bytes as given
    format: str | None
    mode: str  # the original mode (e.g. CMYK, RGBA, I;16)
    original_size: tuple[int, int]  # (width, height) as stored, before EXIF rotation
    exif_orientation: int | None
    notes: list[str] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size

    def to_dict(self) -> dict:
        w, h = self.image.size
        return {"name": self.name, "sha256": self.sha256, "format": self.format, "mode": self.mode, "width": w,
                "height": h, "exif_orientation": self.exif_orientation, "notes": list(self.notes)}


def load_image(src: Any, *, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_BYTES,
               min_side: int = MIN_SIDE) -> Image.Image:
    """A path, bytes, file object, PIL image or (H, W, 3|4) uint8 array → an RGB PIL image (see :func:`read_image`)."""
    return read_image(src, max_pixels=max_pixels, max_bytes=max_bytes, min_side=min_side).image


def read_image(src: Any, *, max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_BYTES,
               min_side: int = MIN_SIDE) -> LoadedImage:
    """Load ``src`` into a :class:`LoadedImage`; raise InvalidRequest with a clear sentence if it cannot be used."""
    if isinstance(src, LoadedImage):
        return src
    if isinstance(src, Image.Image):
        return _finish(src, name="<image>", data=src.tobytes(), max_pixels=max_pixels, min_side=min_side)
    if isinstance(src, np.ndarray):
        return _finish(_from_array(src), name="<array>", data=src.tobytes(), max_pixels=max_pixels, min_side=min_side)
    name, data = _read_bytes(src, max_bytes)
    if not data:
        raise InvalidRequest(f"The image {name} is empty (0 bytes).", hint=_HINT_FORMAT, image=name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise _too_large(name, None, max_pixels) from e
    except UnidentifiedImageError as e:
        raise InvalidRequest(f"{name} is not an image that can be read (its format was not recognised).",
                             hint=_HINT_FORMAT, image=name) from e
    except (OSError, SyntaxError, ValueError) as e:
        raise InvalidRequest(f"{name} is not an image that can be read ({_short(e)}).", hint=_HINT_FORMAT,
                             image=name) from e
    w, h = img.size
    if w * h > max_pixels:
        raise _too_large(name, (w, h), max_pixels)
    return _finish(img, name=name, data=data, max_pixels=max_pixels, min_side=min_side)


def _read_bytes(src: Any, max_bytes: int) -> tuple[str, bytes]:
    if isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
        if len(data) > max_bytes:
            raise InvalidRequest(f"The image is {len(data) / 2**20:.0f} MB; the limit is {max_bytes / 2**20:.0f} MB.",
                                 hint="Use a smaller or more compressed file.")
        return "<bytes>", data
    if hasattr(src, "read"):
        data = src.read(max_bytes + 1)
        name = os.path.basename(getattr(src, "name", "") or "") or "<stream>"
        if len(data) > max_bytes:
            raise InvalidRequest(f"The image {name} is larger than the {max_bytes / 2**20:.0f} MB limit.",
                                 hint="Use a smaller or more compressed file.", image=name)
        return name, data
    if isinstance(src, (str, os.PathLike)):
        p = Path(src).expanduser()
        if not p.is_file():
            what = "a folder, not an image file" if p.is_dir() else "no image file there"
            raise InvalidRequest(f"There is {what}: {p}.", hint="Check the path to the photo.", image=str(p))
        size = p.stat().st_size
        if size > max_bytes:
            raise InvalidRequest(f"The image {p.name} is {size / 2**20:.0f} MB; the limit is "
                                 f"{max_bytes / 2**20:.0f} MB.", hint="Use a smaller or more compressed file.",
                                 image=str(p))
        try:
            return p.name, p.read_bytes()
        except OSError as e:
            raise InvalidRequest(f"Cannot read the image {p} ({e.strerror or e}).", image=str(p)) from e
    raise InvalidRequest(f"Expected an image path, bytes or a PIL image, got {type(src).__name__}.")


def _from_array(arr: np.ndarray) -> Image.Image:
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        raise InvalidRequest(f"An image array must be uint8 (H, W), (H, W, 3) or (H, W, 4), got {arr.dtype} "
                             f"{arr.shape}.")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    return Image.fromarray(np.ascontiguousarray(arr))


def _finish(img: Image.Image, *, name: str, data: bytes, max_pixels: int, min_side: int) -> LoadedImage:
    fmt, mode, size = img.format, img.mode, img.size
    notes: list[str] = []
    w, h = size
    if w * h > max_pixels:
        raise _too_large(name, size, max_pixels)
    if min(w, h) < min_side:
        raise InvalidRequest(f"The image {name} is only {w}x{h} pixels; it needs at least {min_side} on each side.",
                             hint="Use a real photo, ideally 512 pixels or more on the short side.", image=name)
    if getattr(img, "n_frames", 1) > 1:
        notes.append(f"{img.n_frames} frames in the file; the first was used")
    try:
        img.load()
    except Image.DecompressionBombError as e:
        raise _too_large(name, size, max_pixels) from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise InvalidRequest(f"The image {name} is corrupt or truncated ({_short(e)}).",
                             hint="Re-export or re-download the photo.", image=name) from e
    orientation = None
    try:
        orientation = int(img.getexif().get(0x0112) or 0) or None
    except Exception:  # a broken EXIF block must not stop us; the pixels are fine
        notes.append("EXIF data unreadable; orientation not applied")
    if orientation and orientation != 1:
        try:
            img = ImageOps.exif_transpose(img)
            notes.append(f"rotated upright from EXIF orientation {orientation}")
        except Exception as e:
            notes.append(f"EXIF orientation {orientation} could not be applied ({_short(e)})")
    rgb = _to_rgb(img, notes)
    return LoadedImage(image=rgb, name=name, sha256=hashlib.sha256(data).hexdigest(), format=fmt, mode=mode,
                       original_size=size, exif_orientation=orientation, notes=notes)


def _to_rgb(img: Image.Image, notes: list[str]) -> Image.Image:
    """Any PIL mode → 8-bit RGB. Transparency is composited onto a neutral grey; high bit depths are scaled."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
        if mode == "RGB":
            return img
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        alpha = np.asarray(rgba)[:, :, 3]
        if alpha.min() < 255:
            notes.append("transparent pixels composited onto neutral grey")
        bg = Image.new("RGBA", rgba.size, NEUTRAL_BACKGROUND + (255,))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img).astype(np.float64)
        top = 65535.0 if (mode.startswith("I;16") or arr.max(initial=0) > 255) else 255.0
        if mode == "F":
            top = max(float(arr.max(initial=0)), 1e-6) if arr.max(initial=0) > 1.0 else 1.0
        notes.append(f"{mode} pixels scaled to 8 bits")
        grey = np.clip(np.rint(arr / top * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2))
    if mode == "CMYK":
        notes.append("CMYK converted to RGB")
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as e:
        raise InvalidRequest(f"Images in colour mode {mode} are not supported ({_short(e)}).",
                             hint="Save the photo as an RGB JPEG or PNG.") from e


def _too_large(name: str, size: tuple[int, int] | None, max_pixels: int) -> InvalidRequest:
    dims = f" ({size[0]}x{size[1]} = {size[0] * size[1] / 1e6:.0f} MP)" if size else ""
    return InvalidRequest(f"The image {name} is too large{dims}; the limit is {max_pixels / 1e6:.0f} megapixels.",
                          hint="Downscale the photo first (this also guards against decompression bombs).",
                          image=name)


def _short(e: BaseException) -> str:
    s = re.sub(r"\s*<[\w.]+ object at 0x[0-9a-fA-F]+>", "", str(e)).strip() or type(e).__name__  # no reprs
    return s if len(s) <= 160 else s[:157] + "…"
