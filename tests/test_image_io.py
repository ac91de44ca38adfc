"""Robust photo loading: formats, EXIF rotation, colour modes, and every way an image can be unusable."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from localvideo.errors import InvalidRequest
from localvideo.motion.image_io import NEUTRAL_BACKGROUND, load_image, read_image

skdata = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return skdata.astronaut()[64:320, 32:480]  # 448x256, not square so rotations show


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_jpeg_path_loads_rgb_with_hash(tmp_path, photo):
    p = tmp_path / "astronaut.jpg"
    p.write_bytes(_save(Image.fromarray(photo), "JPEG", quality=95))
    li = read_image(p)
    assert li.image.mode == "RGB" and li.size == (448, 256) and li.name == "astronaut.jpg"
    import hashlib

    assert li.sha256 == hashlib.sha256(p.read_bytes()).hexdigest()
    assert np.abs(np.asarray(li.image).astype(int) - photo).mean() < 3


@pytest.mark.parametrize("orientation,rot", [(6, -1), (8, 1), (3, 2)])
def test_exif_orientation_is_applied(photo, orientation, rot):
    img = Image.fromarray(photo)
    exif = img.getexif()
    exif[0x0112] = orientation
    data = _save(img, "JPEG", quality=95, exif=exif)
    li = read_image(data)
    expected = np.rot90(photo, rot)  # what a viewer shows: the stored pixels turned upright
    got = np.asarray(li.image).astype(int)
    assert got.shape == expected.shape
    assert np.abs(got - expected).mean() < 3
    assert li.exif_orientation == orientation and any("EXIF" in n for n in li.notes)


def test_cmyk_becomes_rgb(photo):
    data = _save(Image.fromarray(photo).convert("CMYK"), "JPEG", quality=95)
    li = read_image(data)
    assert li.mode == "CMYK" and li.image.mode == "RGB"
    assert np.abs(np.asarray(li.image).astype(int) - photo).mean() < 8


def test_alpha_is_composited_on_neutral_grey(photo):
    rgba = np.dstack([photo, np.full(photo.shape[:2], 255, np.uint8)])
    rgba[:, :100, 3] = 0  # left part fully transparent
    li = read_image(_save(Image.fromarray(rgba, "RGBA"), "PNG"))
    arr = np.asarray(li.image)
    assert li.image.mode == "RGB" and (arr[:, :100] == NEUTRAL_BACKGROUND).all()
    assert (arr[:, 100:] == photo[:, 100:]).all()
    assert any("transparent" in n for n in li.notes)


def test_skimage_logo_with_alpha_loads():
    logo = skdata.logo()  # RGBA
    assert logo.shape[2] == 4
    img = load_image(logo)
    assert img.mode == "RGB" and img.size == (logo.shape[1], logo.shape[0])


def test_palette_with_transparency(photo):
    pal = Image.fromarray(photo).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    data = _save(pal, "PNG", transparency=0)
    img = load_image(data)
    assert img.mode == "RGB"


def test_sixteen_bit_grey_is_scaled():
    ramp = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    data = _save(Image.fromarray(ramp), "PNG")
    li = read_image(data)
    arr = np.asarray(li.image)
    assert li.image.mode == "RGB" and arr.max() == 255 and arr.min() == 0
    assert abs(int(arr[32, 32, 0]) - round(ramp[32, 32] / 257)) <= 1


def test_animated_gif_uses_first_frame(photo):
    frames = [Image.fromarray(photo), Image.fromarray(255 - photo)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    li = read_image(buf.getvalue())
    assert li.image.mode == "RGB" and any("first was used" in n for n in li.notes)


def test_file_object_input(tmp_path, photo):
    p = tmp_path / "x.png"
    Image.fromarray(photo).save(p)
    with open(p, "rb") as f:
        li = read_image(f)
    assert li.name == "x.png" and li.size == (448, 256)


# -- unusable images -----------------------------------------------------------------------------------------------
def test_one_pixel_is_refused():
    with pytest.raises(InvalidRequest, match=r"only 1x1 pixels"):
        read_image(_save(Image.new("RGB", (1, 1)), "PNG"))


def test_too_small_is_refused():
    with pytest.raises(InvalidRequest, match=r"at least 16"):
        read_image(_save(Image.new("RGB", (300, 8)), "PNG"))


def test_garbage_bytes_are_not_an_image():
    with pytest.raises(InvalidRequest, match=r"not an image") as e:
        read_image(b"this is not a photo at all" * 10)
    assert "format was not recognised" in e.value.message and " at 0x" not in e.value.message  # no Python reprs


def test_truncated_jpeg_is_corrupt(photo):
    data = _save(Image.fromarray(photo), "JPEG", quality=95)
    with pytest.raises(InvalidRequest, match=r"corrupt or truncated"):
        read_image(data[: len(data) // 2])


def test_empty_file(tmp_path):
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    with pytest.raises(InvalidRequest, match=r"empty"):
        read_image(p)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(InvalidRequest, match=r"no image file"):
        read_image(tmp_path / "nope.jpg")
    with pytest.raises(InvalidRequest, match=r"folder"):
        read_image(tmp_path)


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny, valid-looking 1-bit PNG whose header claims width×height (a decompression bomb's header)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def test_decompression_bomb_refused_before_decoding():
    bomb = _png_claiming(100_000, 100_000)  # 10 gigapixels claimed in ~100 bytes
    assert len(bomb) < 200
    with pytest.raises(InvalidRequest, match=r"too large"):
        read_image(bomb)


def test_pixel_and_byte_limits(photo):
    data = _save(Image.fromarray(photo), "PNG")
    with pytest.raises(InvalidRequest, match=r"too large \(448x256"):
        read_image(data, max_pixels=100_000)
    with pytest.raises(InvalidRequest, match=r"limit"):
        read_image(data, max_bytes=1000)


def test_error_messages_are_one_sentence_with_hint():
    with pytest.raises(InvalidRequest) as ei:
        read_image(b"\x00" * 100)
    assert ei.value.message.endswith(".") and ei.value.hint
