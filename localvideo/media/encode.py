"""Stream RGB frames into an H.264 MP4 with PyAV (libx264, yuv420p, faststart), written atomically.

Frames are encoded as they arrive; nothing is buffered beyond the encoder's own lookahead. Output goes to a
hidden temp file in the destination folder and is renamed onto the final path only after the container closed
cleanly, so a crash, Ctrl-C or caller exception never leaves a half-written video behind. The temp file's name
carries this process's owner tag (:mod:`localvideo.runtime.leftovers`), so one that a killed process could not
remove is swept later (by the next story there, or the job service's start), once that process is provably gone.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from localvideo.errors import InvalidRequest, OutputError
from localvideo.runtime.leftovers import owner_tag

log = logging.getLogger(__name__)

_OUTPUT_HINT = "Choose another --output location you can write to."
PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow", "placebo")


@dataclass
class EncodeResult:
    """What was written: final path, frame count, encoded size (after padding), exact fps, file size."""

    path: Path
    frames: int
    width: int
    height: int
    fps: float
    bytes: int
    seconds: float
    padded: bool


def check_output_path(path: str | os.PathLike, *, overwrite: bool = True) -> Path:
    """Validate an output path before any expensive work; create its folder. Returns the resolved path.

    Raises InvalidRequest for a non-.mp4 suffix, OutputError when the path is a folder or its folder cannot be
    created or written, when the video exists already and ``overwrite`` is False, or when a ``.json`` of the same
    name exists that is not a localvideo settings file (the sidecar would replace someone's file).
    """
    p = Path(path).expanduser()
    if p.suffix.lower() != ".mp4":
        raise InvalidRequest(f"The output file must end in .mp4, got '{p.name}'.", hint="Use a name like video.mp4.", path=str(p))
    p = p.resolve()
    if p.is_dir():
        raise OutputError(f"The output path {p} is an existing folder, not a file.", hint=_OUTPUT_HINT, path=str(p))
    folder = p.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".localvideo-write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(f"Cannot write to the output folder {folder} ({e.strerror or e}).", hint=_OUTPUT_HINT, path=str(folder)) from e
    refuse_existing(p, overwrite=overwrite)
    return p


def refuse_existing(path: Path, *, overwrite: bool) -> None:
    """OutputError when writing the video ``path`` would replace a file it should not: the video itself (unless
    ``overwrite``), or a ``.json`` of the same name that is not a localvideo settings file (never)."""
    if not overwrite and path.exists():
        raise OutputError(f"{path} exists already; it was left as it is.",
                          hint="Pass --overwrite to replace it (Python: overwrite=True), or choose another --output.",
                          path=str(path))
    sidecar = path.with_suffix(".json")
    if sidecar.exists() and not is_sidecar(sidecar):
        raise OutputError(f"{sidecar} exists and is not a localvideo settings file: writing {path.name} would "
                          f"replace it with this video's settings.",
                          hint="Move that file, or choose another --output name.", path=str(sidecar))


def is_sidecar(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a settings file localvideo wrote (JSON with ``localvideo_version``)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.loads(f.read(4_000_000))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "localvideo_version" in data


# -- output names: one run per name ---------------------------------------------------------------------------------
def output_target(output: str | os.PathLike | None, default_name: str, default_folder: Path) -> tuple[Path, bool]:
    """Where a video goes, and whether its name was chosen for the user (then :func:`reserve_output` makes it unique
    rather than refusing it). ``output``: a file, or a folder (existing, ending in a slash, or without a suffix: made
    when written) that gets ``default_name``; None: ``default_folder / default_name``."""
    if not output:
        return Path(default_folder) / default_name, True
    p = Path(output).expanduser()
    if p.is_dir() or str(output).endswith(("/", "\\")) or not p.suffix:
        return p / default_name, True
    return p, False


def reserve_output(path: str | os.PathLike, *, unique: bool, attempts: int = 1000) -> Path:
    """Claim an output name for this run, so that two runs never write one file, and return it.

    The claim is a hidden file ``.<name>.inuse-TAG`` (owner tag: :mod:`localvideo.runtime.leftovers`, so that one a
    killed run left is swept) created with O_EXCL. ``unique``: the name was chosen for the user (a default name, or
    a folder given as the output): when it is taken — a file or a sidecar exists, or another run claims it — the next
    free ``<stem>~N.mp4`` is used. Otherwise (a file name the user gave) another live run's claim is an OutputError.
    Release with :func:`release_output` once the video is written (or the run ended without one).
    """
    from ..runtime import leftovers

    first = Path(path)
    stem = first.stem.rsplit("~", 1)[0] if unique else first.stem
    for n in range(0, attempts):
        cand = first if n == 0 else first.with_name(f"{stem}~{n}{first.suffix}")
        if unique and (cand.exists() or cand.with_suffix(".json").exists()):
            continue
        mine = _claim_of(cand)
        try:
            os.close(os.open(mine, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:  # this process already claims it (another thread's run)
            if unique:
                continue
            raise OutputError(f"Another run in this process is writing {cand} now.",
                              hint="Wait for it, or choose another --output.", path=str(cand)) from None
        except OSError as e:
            raise OutputError(f"Cannot write to the output folder {cand.parent} ({e.strerror or e}).",
                              hint=_OUTPUT_HINT, path=str(cand.parent)) from e
        prefix = f".{cand.name}.inuse-"
        rivals = []
        for other in cand.parent.glob(glob.escape(prefix) + "*"):
            owner = leftovers.parse_tag(other.name[len(prefix):])
            if other != mine and (owner is None or leftovers.why_abandoned(owner) is None):
                rivals.append(other)
        if rivals or (unique and cand.exists()):
            mine.unlink(missing_ok=True)
            if unique:
                continue
            raise OutputError(f"Another run is writing {cand} now.", hint="Wait for it, or choose another --output.",
                              path=str(cand))
        return cand
    raise OutputError(f"No free name like {first.name} in {first.parent} after {attempts} tries.",
                      hint="Choose another --output.", path=str(first))


def release_output(path: str | os.PathLike | None) -> None:
    """End this run's claim on an output name (see :func:`reserve_output`)."""
    if path is not None:
        _claim_of(Path(path)).unlink(missing_ok=True)


def _claim_of(path: Path) -> Path:
    return path.with_name(f".{path.name}.inuse-{owner_tag()}")


def _exact_rate(fps: float) -> Fraction:
    """fps as an exact fraction: 16 -> 16, 23.976 -> 2997/125, 29.97 -> 2997/100, Fraction(24000, 1001) kept as is."""
    try:
        ok = not isinstance(fps, bool) and math.isfinite(float(fps)) and float(fps) > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InvalidRequest(f"The frame rate must be a positive number, got {fps!r}.")
    return (fps if isinstance(fps, Fraction) else Fraction(float(fps))).limit_denominator(1001)


def to_uint8(frame: np.ndarray) -> np.ndarray:
    """uint8 passes through; floats in [0, 1] become round(x*255) clipped to 0..255 (exactly what the encoder is fed,
    so frames kept as uint8 lose nothing before their one encode)."""
    if frame.dtype == np.uint8:
        return frame
    if np.issubdtype(frame.dtype, np.floating):
        return np.clip(np.rint(np.nan_to_num(frame) * 255.0), 0, 255).astype(np.uint8)
    raise InvalidRequest(f"Frames must be uint8 or float in [0, 1], got dtype {frame.dtype}.")


class VideoWriter:
    """Stream frames into an H.264 MP4 via PyAV. Usage:

        with VideoWriter(path, fps=16, crf=18, preset="medium", metadata={...}) as w:
            for f in frames: w.write(f)
        w.result -> EncodeResult

    Frames are HxWx3 RGB (uint8, or float in [0, 1]); a batch (N,H,W,3) is also accepted. Odd sizes are padded to
    even by repeating the last row/column. Metadata values must be strings (JSON-encode structured data); they are
    stored as MP4 container tags, ``comment`` being the standard human-readable one.
    """

    def __init__(self, path: str | os.PathLike, fps: float, *, crf: int = 18, preset: str = "medium",
                 metadata: dict[str, str] | None = None) -> None:
        self.path = check_output_path(path)
        self.rate = _exact_rate(fps)
        if isinstance(crf, bool) or not isinstance(crf, int) or not 0 <= crf <= 51:
            raise InvalidRequest(f"CRF must be an integer from 0 to 51, got {crf!r}.")
        if preset not in PRESETS:
            raise InvalidRequest(f"Unknown x264 preset {preset!r}.", hint=f"Use one of: {', '.join(PRESETS)}.")
        self.crf, self.preset = crf, preset
        self.metadata = dict(metadata or {})
        for k, v in self.metadata.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise InvalidRequest(f"Video metadata keys and values must be strings; '{k}' is {type(v).__name__}.")
        self.tmp_path = self.path.with_name(f".{self.path.name}.{owner_tag()}.partial.mp4")
        self.result: EncodeResult | None = None
        self._container: Any = None
        self._stream: Any = None
        self._shape: tuple[int, int] | None = None  # (H, W) of the first frame, before padding
        self._count = 0
        self._done = False

    # -- context manager -------------------------------------------------------------------------------------
    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:  # best effort: a writer dropped without close() leaves no temp file
        try:
            if not self._done:
                self.abort()
        except Exception:
            pass

    # -- writing ---------------------------------------------------------------------------------------------
    def write(self, frame: Any) -> None:
        """Encode one frame (H,W,3) or a batch (N,H,W,3)."""
        if self._done:
            raise InvalidRequest("This video is already finished; start a new VideoWriter.")
        arr = np.asarray(frame)
        if arr.ndim == 4:
            for f in arr:
                self.write(f)
            return
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise InvalidRequest(f"Each frame must be an RGB array of shape (H, W, 3), got {arr.shape}.")
        h, w = arr.shape[:2]
        if self._shape is None:
            if h < 1 or w < 1:
                raise InvalidRequest(f"Frames must be at least 1x1 pixels, got {w}x{h}.")
            self._shape = (h, w)
        elif (h, w) != self._shape:
            raise InvalidRequest(f"All frames must have the same size: frame {self._count} is {w}x{h}, "
                                 f"but the first frame was {self._shape[1]}x{self._shape[0]}.")
        arr = to_uint8(arr)
        if h % 2 or w % 2:
            arr = np.pad(arr, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        try:
            if self._container is None:
                self._open(arr.shape[1], arr.shape[0])
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
            vf.pts = self._count
            vf.time_base = self._stream.codec_context.time_base
            self._container.mux(self._stream.encode(vf))
            self._count += 1
        except OSError as e:
            self.abort()
            raise OutputError(f"Writing the video {self.path} failed ({e.strerror or e}).", hint=_OUTPUT_HINT, path=str(self.path)) from e
        except BaseException:
            self.abort()
            raise

    def _open(self, width: int, height: int) -> None:
        """Open the temp container and the H.264 stream (called on the first frame, when the size is known)."""
        log.debug("encoding %dx%d @ %s fps to %s", width, height, self.rate, self.tmp_path)
        # use_metadata_tags: without it the mp4 muxer silently drops every tag key it does not know.
        self._container = av.open(str(self.tmp_path), "w", format="mp4",
                                  options={"movflags": "+faststart+use_metadata_tags"})
        self._container.metadata.update(self.metadata)
        s = self._container.add_stream("libx264", rate=self.rate)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.codec_context.time_base = 1 / self.rate
        s.options = {"crf": str(self.crf), "preset": self.preset}
        self._stream = s

    # -- finishing -------------------------------------------------------------------------------------------
    def close(self) -> EncodeResult:
        """Flush the encoder, close the container and move it onto the final path. Idempotent."""
        if self.result is not None:
            return self.result
        if self._done:
            raise InvalidRequest("This video was aborted; nothing was written.")
        if self._count == 0:
            self.abort()
            raise InvalidRequest("no frames to encode", hint="The generator produced no frames.", path=str(self.path))
        try:
            self._container.mux(self._stream.encode(None))
            self._container.close()
            self._container = None
            os.replace(self.tmp_path, self.path)
        except OSError as e:
            self.abort()
            raise OutputError(f"Finishing the video {self.path} failed ({e.strerror or e}).", hint=_OUTPUT_HINT, path=str(self.path)) from e
        except BaseException:
            self.abort()
            raise
        self._done = True
        fps = float(self.rate)
        h, w = self._shape
        self.result = EncodeResult(path=self.path, frames=self._count, width=w + w % 2, height=h + h % 2, fps=fps,
                                   bytes=self.path.stat().st_size, seconds=self._count / fps, padded=bool(h % 2 or w % 2))
        log.info("wrote %s (%d frames, %dx%d, %.1f KB)", self.path, self._count, self.result.width,
                 self.result.height, self.result.bytes / 1024)
        return self.result

    def abort(self) -> None:
        """Drop everything: close the container without finalising and delete the temp file."""
        self._done = True
        container, self._container = self._container, None
        if container is not None:
            try:
                container.close()
            except Exception:  # the file is being discarded anyway
                pass
        try:
            self.tmp_path.unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("could not remove temp file %s: %s", self.tmp_path, e)


def encode_video(frames: Any, path: str | os.PathLike, fps: float, *, crf: int = 18, preset: str = "medium",
                 metadata: dict[str, str] | None = None) -> EncodeResult:
    """Encode frames to an MP4. ``frames``: an iterable of (H,W,3) frames, or an array (N,H,W,3) / (1,N,H,W,3)."""
    if hasattr(frames, "shape"):
        arr = np.asarray(frames)
        if arr.ndim == 5:
            if arr.shape[0] != 1:
                raise InvalidRequest(f"Expected one video of shape (1, N, H, W, 3), got a batch of {arr.shape[0]}.")
            arr = arr[0]
        frames = arr if arr.ndim == 4 else [arr]
    with VideoWriter(path, fps, crf=crf, preset=preset, metadata=metadata) as w:
        for f in frames:
            w.write(f)
    return w.result


def write_sidecar(video_path: str | os.PathLike, data: dict) -> Path:
    """Write ``data`` as pretty UTF-8 JSON next to the video (same name, .json), atomically. Returns its path."""
    path = Path(video_path).with_suffix(".json")
    tmp = path.with_name(f".{path.name}.{owner_tag()}.partial")
    try:
        text = json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _remove_quietly(tmp)
        raise OutputError(f"Cannot write the settings file {path} ({e.strerror or e}).", hint=_OUTPUT_HINT, path=str(path)) from e
    except BaseException:
        _remove_quietly(tmp)
        raise
    return path


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
