"""What a job is: an id, a request, and one state out of an explicit union, with progress, result or error.

States and the only transitions allowed between them::

    queued ──► running ──► succeeded
      │           ├──────► failed ──────┐
      │           ├──────► cancelled ───┤
      │           └──────► interrupted ─┤  (the process died or stopped while it ran)
      └──► cancelled                    └──► queued   (retry)

The store enforces these with conditional updates, so two threads can never move one job two ways.

A job that ends cancelled, failed or interrupted keeps its last progress (where it stopped), frozen: ``eta_s`` is
null and ``message`` says it is not live (:data:`STOPPED_MESSAGES`). A succeeded job's progress is phase ``done``.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..errors import LocalVideoError

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled", "interrupted"]
JobKind = Literal["text-to-video", "image-to-video", "story", "photo-animation"]
# joining: stories; rendering: photo animations
Phase = Literal["queued", "loading", "denoising", "decoding", "encoding", "joining", "rendering", "done"]

STATES: tuple[str, ...] = ("queued", "running", "succeeded", "failed", "cancelled", "interrupted")
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled", "interrupted"})
RETRYABLE: frozenset[str] = frozenset({"failed", "cancelled", "interrupted"})
TRANSITIONS: dict[str, frozenset[str]] = {
    "queued": frozenset({"running", "cancelled"}),
    "running": frozenset({"succeeded", "failed", "cancelled", "interrupted"}),
    "succeeded": frozenset(),
    "failed": frozenset({"queued"}),
    "cancelled": frozenset({"queued"}),
    "interrupted": frozenset({"queued"}),
}

# Each state as the end of a sentence about a job ("Job X has succeeded; …"): messages read right for every state.
_STATE_PHRASES = {"queued": "is queued", "running": "is running", "succeeded": "has succeeded", "failed": "has failed",
                  "cancelled": "was cancelled", "interrupted": "was interrupted"}
# The message a stopped job's frozen progress carries (see the module docstring).
STOPPED_MESSAGES = {
    "cancelled": "Where the job was when it was cancelled; it is not running.",
    "failed": "Where the job was when it failed; it is not running.",
    "interrupted": "Where the job was when the server stopped; it is not running.",
}


def state_phrase(state: str) -> str:
    """``has succeeded``, ``is running``, ``was cancelled``, …"""
    return _STATE_PHRASES.get(state, f"is {state}")


_ID = re.compile(r"^[0-9a-f]{32}$")
VIDEO_NAME = "video.mp4"
THUMBNAIL_NAME = "thumbnail.jpg"


def valid_job_id(job_id: object) -> bool:
    """Job ids are 32 lowercase hex digits (uuid4); anything else (paths, dots, slashes) is never a job."""
    return isinstance(job_id, str) and bool(_ID.match(job_id))


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class JobProgress(BaseModel):
    model_config = ConfigDict(frozen=True)

    phase: Phase
    step: int = 0
    total: int = 0
    elapsed_s: float = 0.0
    eta_s: float | None = None
    scene: int | None = None  # stories: scene (1-based) of ``scenes`` being made
    scenes: int | None = None
    # What is going on, in one sentence, when the phase alone would not say it truly (a running job in phase
    # ``queued``: waiting for a pipeline another job holds, or for a retry on another Ray worker). None otherwise.
    message: str | None = None


class JobError(BaseModel):
    model_config = ConfigDict(frozen=True)

    error: str  # a code: invalid_request, does_not_fit, generation_failed, interrupted, …
    message: str
    hint: str | None = None


class JobResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    bytes: int
    frames: int
    width: int
    height: int
    fps: float
    duration_s: float
    seed: int
    model: str
    random_weights: bool
    strategy: str
    has_thumbnail: bool
    timings: dict[str, float]
    notes: list[str] = []
    warnings: list[str] = []
    # What the run gave up after running out of memory (the OOM ladder's rungs, localvideo.runtime.recovery), e.g.
    # "frames 81 → 49 after OOM while denoising"; stories: each prefixed "scene N: ". Empty: made as planned.
    degraded: list[str] = []
    scenes: list[dict[str, Any]] = []  # stories: per scene seed, frames, [start_frame, end_frame), transition


class Job(BaseModel):
    """One job as the service, the API and the SDKs see it. ``request`` uses the Python API's field names."""

    model_config = ConfigDict(frozen=True)

    id: str
    kind: JobKind = "text-to-video"
    state: JobState
    request: dict[str, Any]
    progress: JobProgress | None = None
    result: JobResult | None = None
    error: JobError | None = None
    cancel_requested: bool = False
    attempts: int = 0
    notes: list[str] = []  # what the service changed about the job, e.g. a stored request migrated when retried
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    version: int = 0  # bumps on every change; SSE event ids

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


class AnimationRequest(BaseModel):
    """A photo animation job (:func:`localvideo.motion.animator.animate`): no model weights, a camera move on the
    uploaded photo with subject-aware framing and 2.5D parallax when the subject separates cleanly."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image: str | None = None  # set by the service (the stored upload), never by API clients
    move: Literal["auto", "zoom-in", "zoom-out", "pan-left", "pan-right", "orbit", "dolly"] = "auto"
    width: int | None = Field(default=None, ge=16, le=4096)
    height: int | None = Field(default=None, ge=16, le=4096)
    fps: float = Field(default=24.0, ge=1, le=120)
    duration_s: float | None = Field(default=None, gt=0, le=150)
    num_frames: int | None = Field(default=None, ge=2, le=3600)
    parallax: bool | None = None  # None: when the subject mask is confident
    strength: float = Field(default=1.0, ge=0.1, le=3.0)
    easing: Literal["linear", "ease-in-out", "ease-in-out-cubic", "ease-out"] = "ease-in-out"
    seed: int = Field(default=0, ge=0, lt=2**32)

    @model_validator(mode="after")
    def _length(self) -> "AnimationRequest":
        if self.duration_s is not None and self.num_frames is not None:
            raise ValueError("give duration_s or num_frames, not both")
        if self.duration_s is not None and round(self.duration_s * self.fps) > 3600:
            raise ValueError(f"{self.duration_s:g} s at {self.fps:g} fps is over 3600 frames")
        return self


class JobPage(BaseModel):
    jobs: list[Job]
    total: int
    limit: int
    offset: int
    next_offset: int | None


class JobNotFound(LocalVideoError):
    code = "not_found"

    def __init__(self, job_id: object) -> None:
        shown = job_id if isinstance(job_id, str) and len(job_id) <= 64 else "that id"
        super().__init__(f"There is no job {shown!r}." if shown != "that id" else "There is no job with that id.",
                         hint="List jobs with GET /v1/jobs or `Client.list()`.")


class JobConflict(LocalVideoError):
    """The job exists but is in a state where the operation makes no sense (e.g. retrying a running job)."""

    code = "conflict"


class ServiceUnavailable(LocalVideoError):
    code = "unavailable"
