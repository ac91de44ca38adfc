"""Join video segments into one MP4, streaming: drop leading frames, linear crossfades, one encoder pass.

A segment is an MP4 (decoded: its frames have then been through H.264 once already, and the join encodes them a
second time) or, losslessly, a ``.npy`` of uint8 frames (N, H, W, 3) written by :func:`save_frames`, read through a
memory map: frames joined from those are encoded exactly once. Stories keep their scenes that way.

Frames are read one at a time and written as they come; only a crossfade's tail (N frames) is held back until
the next segment's first N frames arrive to blend with it. The output is written atomically by
:class:`~localvideo.media.encode.VideoWriter`, so a failure or cancel leaves no file behind.

Frame arithmetic: segment ``k`` decodes to ``F_k`` frames, drops ``d_k`` at its start and overlaps the previous
segment by ``n_k`` frames (``n_0 = 0``), so the result has ``Σ (F_k − d_k) − Σ n_k`` frames. Overlapping frame
``j`` (0-based) of a crossfade of ``n`` frames is ``(1 − a)·tail_j + a·head_j`` with ``a = (j + 1) / (n + 1)``.
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import av
import numpy as np

from ..errors import Cancelled, InvalidRequest
from .encode import EncodeResult, VideoWriter, to_uint8


@dataclass(frozen=True)
class Piece:
    path: Path  # a video file, or a .npy of uint8 frames (lossless; see save_frames)
    drop_first: int = 0  # frames dropped from the start (e.g. an image-to-video segment's copy of its seed frame)
    crossfade_in: int = 0  # frames blended with the end of the previous piece


@dataclass(frozen=True)
class Span:
    """Where a piece landed in the joined video: frames [start, end) (crossfades overlap neighbours)."""

    start: int
    end: int
    decoded: int  # frames the segment file had
    kept: int  # after dropping leading frames


def iter_frames(path: str | os.PathLike) -> Iterator[np.ndarray]:
    """Decode a video's frames one at a time as (H, W, 3) uint8 RGB."""
    p = Path(path)
    if not p.is_file():
        raise InvalidRequest(f"There is no video file at {p}.", path=str(p))
    with av.open(str(p)) as c:
        for frame in c.decode(video=0):
            yield frame.to_ndarray(format="rgb24")


def save_frames(frames, path: str | os.PathLike) -> np.ndarray:
    """Keep frames losslessly as a ``.npy`` of uint8 (N, H, W, 3), each converted exactly as the encoder would convert
    it (:func:`~localvideo.media.encode.to_uint8`), one frame at a time (no second copy of a clip in memory).
    Returns the saved frames, memory-mapped read-only. An ``OSError`` (e.g. a full disk) is the caller's to report;
    the partial file is removed."""
    arr = frames if hasattr(frames, "shape") else np.asarray(frames)
    if arr.ndim == 5 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 4 or arr.shape[3] != 3 or arr.shape[0] == 0:
        raise InvalidRequest(f"Frames to keep must be an array (N, H, W, 3) with N >= 1, got {tuple(arr.shape)}.")
    path = Path(path)
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
              "shape": tuple(int(n) for n in arr.shape)}
    try:  # plain writes, not a writable memory map: a full disk is then an OSError, not a SIGBUS
        with open(path, "wb") as f:
            np.lib.format.write_array_header_1_0(f, header)
            for i in range(arr.shape[0]):
                f.write(np.ascontiguousarray(to_uint8(np.asarray(arr[i]))).tobytes())
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return np.load(path, mmap_mode="r", allow_pickle=False)


def piece_frames(path: str | os.PathLike) -> Iterator[np.ndarray]:
    """A segment's frames one at a time as (H, W, 3) uint8 RGB: a ``.npy`` from :func:`save_frames` (memory-mapped,
    nothing decoded) or a video file (decoded)."""
    p = Path(path)
    if p.suffix.lower() != ".npy":
        yield from iter_frames(p)
        return
    if not p.is_file():
        raise InvalidRequest(f"There are no saved frames at {p}.", path=str(p))
    arr = np.load(p, mmap_mode="r", allow_pickle=False)
    try:
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[3] != 3:
            raise InvalidRequest(f"{p.name} does not hold uint8 frames (N, H, W, 3): {arr.dtype} {arr.shape}.")
        for i in range(arr.shape[0]):
            yield np.array(arr[i])  # a copy: nothing keeps the map open once the piece is done
    finally:
        del arr


def blend(a: np.ndarray, b: np.ndarray, weight: float) -> np.ndarray:
    """``(1 − weight)·a + weight·b`` for uint8 frames, rounded."""
    out = a.astype(np.float32) * (1.0 - weight) + b.astype(np.float32) * weight
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def join(pieces: list[Piece], out_path: str | os.PathLike, fps: float, *, metadata: dict[str, str] | None = None,
         cancel: Callable[[], bool] | None = None, crf: int = 18,
         preset: str = "medium") -> tuple[EncodeResult, list[Span], list[str]]:
    """Join ``pieces`` into ``out_path``. Returns (what was written, one span per piece, notes).

    Each piece is a video file or a ``.npy`` of uint8 frames (:func:`save_frames`); the frames are encoded here by
    the project's one encoder, so pieces kept as ``.npy`` reach the output through exactly one H.264 encode. A piece
    whose frames differ in size from the first piece's is resized (Lanczos) to match, with a note. A piece with
    fewer frames than its crossfades need is an :class:`InvalidRequest`; ``cancel()`` returning True raises
    :class:`Cancelled` (checked every frame); in both cases nothing is written.
    """
    if not pieces:
        raise InvalidRequest("There are no segments to join.")
    if pieces[0].crossfade_in:
        raise InvalidRequest("The first segment cannot crossfade in: nothing comes before it.")
    notes: list[str] = []
    spans: list[Span] = []
    size: tuple[int, int] | None = None  # (H, W)
    pending: list[np.ndarray] = []
    pos = 0
    with VideoWriter(out_path, fps, crf=crf, preset=preset, metadata=metadata) as writer:
        for i, piece in enumerate(pieces):
            n_in = piece.crossfade_in
            n_out = pieces[i + 1].crossfade_in if i + 1 < len(pieces) else 0
            tail: deque[np.ndarray] = deque()
            decoded = kept = 0
            resized = False
            for frame in piece_frames(piece.path):
                if cancel is not None and cancel():
                    raise Cancelled("Joining the story was cancelled; no video was written.")
                decoded += 1
                if decoded <= piece.drop_first:
                    continue
                if size is None:
                    size = frame.shape[:2]
                elif frame.shape[:2] != size:
                    frame = _resize(frame, size)
                    resized = True
                if kept < n_in:
                    if kept >= len(pending):
                        raise InvalidRequest(f"Segment {i} cannot crossfade over {n_in} frames: the segment before "
                                             f"it kept only {len(pending)} for the overlap.")
                    frame = blend(pending[kept], frame, (kept + 1) / (n_in + 1))
                kept += 1
                if n_out:
                    tail.append(frame)
                    if len(tail) > n_out:
                        writer.write(tail.popleft())
                else:
                    writer.write(frame)
            if kept < n_in + n_out or kept == 0:
                raise InvalidRequest(
                    f"Segment {i + 1} has {kept} usable frames, too few for its crossfades ({n_in} in, {n_out} out).",
                    hint="Use a shorter crossfade or longer scenes.")
            if resized:
                notes.append(f"segment {i + 1} was resized to {size[1]}x{size[0]} to match the first segment")
            pending = list(tail)
            start = pos - n_in
            spans.append(Span(start=start, end=start + kept, decoded=decoded, kept=kept))
            pos = start + kept
    assert writer.result is not None and writer.result.frames == pos, (writer.result, pos)
    return writer.result, spans, notes


def _resize(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    h, w = size
    return np.asarray(Image.fromarray(frame).resize((w, h), Image.Resampling.LANCZOS))
