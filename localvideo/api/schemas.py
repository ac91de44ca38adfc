"""Request and response bodies of the REST API. Job fields are the Python API's (:class:`GenerationRequest`)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from ..jobs.models import Job
from ..request import MAX_PROMPT_CHARS, GenerationRequest

# An allow-list of GenerationRequest fields. Left out on purpose: every field that names a file or folder on the
# server (output, image, last_image, gguf_path, loras, enhance) — the service chooses where files go and clients
# upload images instead — and compile (minutes of torch.compile on a shared server).
API_FIELDS = ("prompt", "negative_prompt", "model", "width", "height", "num_frames", "fps", "steps", "guidance",
              "seed", "strategy", "vae_tiling", "expand_prompt", "quantization", "step_cache", "attention")
_fields: dict[str, Any] = {name: (f.annotation, f) for name, f in GenerationRequest.model_fields.items()
                           if name in API_FIELDS}
_fields["prompt"] = (str, Field(min_length=1, max_length=MAX_PROMPT_CHARS,
                                description="What the video shows.", examples=["a red fox trotting through snow"]))
_fields["model"] = (str, Field(default="wan2.1-t2v-1.3b", max_length=200, description="Model id (GET /v1/models)."))

JobCreate = create_model(
    "JobCreate",
    __config__=ConfigDict(extra="forbid", json_schema_extra={
        "description": "A text-to-video job. Omitted fields take the model's defaults; the seed is pinned at submit."}),
    **_fields,
)


def _story_fields() -> dict[str, Any]:
    from ..story import StoryRequest

    # image: a path on the server, set from an upload (POST /v1/jobs/story-from-image), never by a client
    return {name: (f.annotation, f) for name, f in StoryRequest.model_fields.items() if name != "image"}


StoryCreate = create_model(
    "StoryCreate",
    __config__=ConfigDict(extra="forbid", json_schema_extra={
        "description": "A story job: one scene per line of `script` ('[4s] wide shot: a fox wakes'), each generated "
                       "and joined into one MP4. Checked at submit (errors name the line); the seed is pinned. To "
                       "start the first scene from an image (image-to-video models), send these fields as `params` "
                       "with an `image` upload to POST /v1/jobs/story-from-image."}),
    **_story_fields(),
)


def _animation_fields() -> dict[str, Any]:
    from ..jobs.models import AnimationRequest

    return {name: (f.annotation, f) for name, f in AnimationRequest.model_fields.items() if name != "image"}


AnimateCreate = create_model(
    "AnimateCreate",
    __config__=ConfigDict(extra="forbid", json_schema_extra={
        "description": "Photo animation (no model weights): a camera move on the uploaded photo, framed on its "
                       "subject, with 2.5D parallax when the subject separates cleanly."}),
    **_animation_fields(),
)


class JobLinks(BaseModel):
    self: str
    events: str
    video: str | None = None
    thumbnail: str | None = None


class JobOut(Job):
    links: JobLinks

    @classmethod
    def of(cls, job: Job) -> "JobOut":
        base = f"/v1/jobs/{job.id}"
        done = job.state == "succeeded"
        thumb = done and job.result is not None and job.result.has_thumbnail
        data = job.model_dump()
        for key in ("image", "last_image"):  # server paths stay on the server
            if data["request"].get(key):
                data["request"][key] = "uploaded:" + str(data["request"][key]).replace("\\", "/").rsplit("/", 1)[-1]
        return cls(**data, links=JobLinks(self=base, events=f"{base}/events",
                                                      video=f"{base}/video" if done else None,
                                                      thumbnail=f"{base}/thumbnail" if thumb else None))


class JobPageOut(BaseModel):
    jobs: list[JobOut]
    total: int
    limit: int
    offset: int
    next_offset: int | None


class ErrorBody(BaseModel):
    """Every error answers with this body."""

    model_config = ConfigDict(extra="allow")

    error: str = Field(description="A stable code: invalid_request, not_found, conflict, unauthorized, …")
    message: str = Field(description="One sentence for a person.")
    hint: str | None = Field(default=None, description="What to do next.")


class ModelOut(BaseModel):
    id: str
    name: str
    family: str
    tasks: list[str]
    random_weights: bool
    licence: str
    weights_gb: float
    installed: bool
    built_on_first_use: bool
    incomplete: str | None  # a partial copy is here: "incomplete: missing transformer weights, …" (not installed)
    pull_command: str | None
    supports_last_image: bool  # image-to-video can also condition on a last frame (``last_image``)
    requires_last_image: bool  # ... and needs one: an image-to-video job without it is refused
    fits: bool
    strategy: str | None
    vae_tiling: bool | None
    peak_gb: float | None
    reason: str | None


class Health(BaseModel):
    status: str
    version: str


class SystemOut(BaseModel):
    version: str
    hardware: dict[str, Any]
    software: dict[str, str | None]  # torch, torch_build (cuda 12.4 | rocm 6.2 | cpu), diffusers, transformers
    workers: list[dict[str, Any]]
    queue: dict[str, int]
    executor: dict[str, Any] = {}  # local | ray (address, actors and their state, start error); docs/cluster.md
    auth_required: bool
    cors_origins: list[str]
