"""Inspect an MP4 exactly (frame count by decoding, rate, codec, tags, faststart) and read its frames back."""

from __future__ import annotations

import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from localvideo.errors import InvalidRequest

log = logging.getLogger(__name__)


@dataclass
class VideoInfo:
    """Facts about a video file's first video stream and its container."""

    path: Path
    frames: int
    width: int
    height: int
    fps: float
    duration: float
    codec: str
    pix_fmt: str
    profile: str | None
    tags: dict[str, str]
    faststart: bool


def _open(path: str | os.PathLike):
    """Open a container for reading, turning missing/corrupt files into InvalidRequest."""
    p = Path(path)
    if not p.is_file():
        raise InvalidRequest(f"There is no video file at {p}.", path=str(p))
    try:
        container = av.open(str(p))
    except av.FFmpegError as e:
        raise InvalidRequest(f"{p} is not a readable video ({e}).", path=str(p)) from e
    if not container.streams.video:
        container.close()
        raise InvalidRequest(f"{p} has no video stream.", path=str(p))
    return container


def _top_level_atoms(path: Path) -> list[str]:
    """Types of the top-level MP4 boxes in file order (walks box headers, never scans payloads)."""
    atoms, size = [], path.stat().st_size
    with open(path, "rb") as f:
        pos = 0
        while pos + 8 <= size:
            f.seek(pos)
            box_size, box_type = struct.unpack(">I4s", f.read(8))
            if box_size == 1:  # 64-bit size follows the type
                box_size = struct.unpack(">Q", f.read(8))[0]
            elif box_size == 0:  # box runs to the end of the file
                box_size = size - pos
            atoms.append(box_type.decode("latin-1"))
            if box_size < 8:
                break
            pos += box_size
    return atoms


def is_faststart(path: str | os.PathLike) -> bool:
    """True when the 'moov' index comes before 'mdat' media data, so players can start before the download ends."""
    atoms = _top_level_atoms(Path(path))
    return "moov" in atoms and (("mdat" not in atoms) or atoms.index("moov") < atoms.index("mdat"))


def probe(path: str | os.PathLike) -> VideoInfo:
    """Describe a video. Frames are counted by decoding (exact); fps is the stream's average rate."""
    p = Path(path)
    with _open(p) as c:
        vs = c.streams.video[0]
        cc = vs.codec_context
        frames = sum(1 for _ in c.decode(vs))
        rate = vs.average_rate or vs.guessed_rate
        fps = float(rate) if rate else 0.0
        if c.duration is not None:
            duration = c.duration / av.time_base
        else:
            duration = frames / fps if fps else 0.0
        return VideoInfo(path=p, frames=frames, width=cc.width, height=cc.height, fps=fps, duration=float(duration),
                         codec=cc.name, pix_fmt=cc.pix_fmt or "", profile=vs.profile or None,
                         tags=dict(c.metadata), faststart=is_faststart(p))


def read_frames(path: str | os.PathLike) -> np.ndarray:
    """Decode every frame of the first video stream as an (N, H, W, 3) uint8 RGB array."""
    with _open(path) as c:
        vs = c.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(vs)]
        if not frames:
            return np.zeros((0, vs.codec_context.height, vs.codec_context.width, 3), np.uint8)
        return np.stack(frames)
