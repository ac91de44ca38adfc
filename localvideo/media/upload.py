"""Checking an uploaded image before anything uses it (image-to-video, photo animation).

Refuses, each with one clear sentence: too many bytes (413), a type that is not PNG, JPEG or WebP *by content*
(magic bytes, then Pillow's own identification; the file name plays no part) or that contradicts the declared
content type (415), too many pixels — read from the header before any pixel is decoded, so a 20000×20000
"decompression bomb" costs nothing (413) — and files that do not decode (422).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from ..errors import InvalidRequest

FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
_ALIASES = {"image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg", "image/x-png": "image/png"}


class UploadTooLarge(InvalidRequest):
    code = "too_large"


class UnsupportedMediaType(InvalidRequest):
    code = "unsupported_media_type"


class InvalidImage(InvalidRequest):
    code = "invalid_image"


@dataclass(frozen=True)
class CheckedImage:
    data: bytes
    format: str  # PNG | JPEG | WEBP
    mime: str
    width: int
    height: int

    @property
    def extension(self) -> str:
        return {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp"}[self.format]


def sniff(data: bytes) -> str | None:
    """The image format from the first bytes, or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def check_image(data: bytes, *, max_bytes: int, max_pixels: int, declared_type: str | None = None) -> CheckedImage:
    """Validate an uploaded image and return it with its real format and size. Never trusts names or headers."""
    from PIL import Image

    if len(data) > max_bytes:
        raise UploadTooLarge(f"The image is {len(data) / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.1f} MB.",
                             hint="Upload a smaller PNG, JPEG or WebP.")
    if not data:
        raise InvalidImage("The uploaded image is empty.", hint="Upload a PNG, JPEG or WebP.")
    fmt = sniff(data)
    if fmt is None:
        raise UnsupportedMediaType("The upload is not a PNG, JPEG or WebP image (judged by its content).",
                                   hint="Upload a PNG, JPEG or WebP.")
    declared = (declared_type or "").split(";")[0].strip().lower()
    declared = _ALIASES.get(declared, declared)
    if declared and declared != "application/octet-stream" and declared != FORMATS[fmt]:
        raise UnsupportedMediaType(f"The upload is declared as {declared or 'nothing'} but its content is "
                                   f"{FORMATS[fmt]}.", hint="Send the image with its real content type.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=[fmt]) as im:  # reads the header only
                width, height = im.size
                if width * height > max_pixels:
                    raise UploadTooLarge(f"The image is {width}×{height} ({width * height / 1e6:.0f} megapixels); "
                                         f"the limit is {max_pixels / 1e6:.0f} megapixels.",
                                         hint="Downscale it before uploading.")
                im.verify()  # structure and checksums, without decoding pixels
            with Image.open(io.BytesIO(data), formats=[fmt]) as im:
                im.load()  # decodes: truncated or corrupt pixel data fails here
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise UploadTooLarge(f"The image is too large to decode safely ({e}).",
                             hint="Downscale it before uploading.") from None
    except InvalidRequest:
        raise
    except Exception as e:  # noqa: BLE001 - Pillow raises many types for broken files
        raise InvalidImage(f"The {fmt} image could not be decoded ({type(e).__name__}: {e}).",
                           hint="Upload an intact PNG, JPEG or WebP.") from None
    if width < 1 or height < 1:
        raise InvalidImage(f"The image has no pixels ({width}×{height}).")
    return CheckedImage(data=data, format=fmt, mime=FORMATS[fmt], width=width, height=height)
