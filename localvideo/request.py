"""What a person asks for. Field names are shared by the Python API, CLI, REST API and SDKs."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import InvalidRequest

MAX_PROMPT_CHARS = 4000
Strategy = Literal["auto", "resident", "model_offload", "group_offload", "group_offload_leaf", "sequential_offload"]


class GenerationRequest(BaseModel):
    """A text-to-video request. ``None`` means "the model's default"."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str
    negative_prompt: str | None = None
    model: str = "wan2.1-t2v-1.3b"
    width: int | None = Field(default=None, ge=1, le=8192)
    height: int | None = Field(default=None, ge=1, le=8192)
    num_frames: int | None = Field(default=None, ge=1, le=2048)
    fps: float | None = Field(default=None, gt=0, le=240)
    steps: int | None = Field(default=None, ge=1, le=500)
    guidance: float | None = Field(default=None, ge=0, le=50)
    seed: int | None = Field(default=None, ge=0, lt=2**63)
    strategy: Strategy = "auto"
    vae_tiling: bool | None = None  # None = the planner decides
    output: str | None = None
    expand_prompt: bool = True  # rewrite the prompt in the model family's style (localvideo.prompts.engine)
    enhance: str | None = None  # a local LLM prompt enhancer (id or folder) instead of the engine

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("the prompt is empty: describe the video you want")
        if len(v) > MAX_PROMPT_CHARS:
            raise ValueError(f"the prompt has {len(v)} characters; the limit is {MAX_PROMPT_CHARS}")
        return v

    @field_validator("negative_prompt")
    @classmethod
    def _negative(cls, v: str | None) -> str | None:
        if v is not None and len(v) > MAX_PROMPT_CHARS:
            raise ValueError(f"the negative prompt has {len(v)} characters; the limit is {MAX_PROMPT_CHARS}")
        return v

    @classmethod
    def parse(cls, **fields) -> "GenerationRequest":
        """Build a request, turning pydantic's errors into one clear :class:`InvalidRequest`."""
        try:
            return cls(**fields)
        except ValidationError as e:
            raise InvalidRequest(_one_sentence(e), hint="Check the value and try again.") from None


_FIELD_NAMES = {"num_frames": "frames", "negative_prompt": "negative prompt"}


def _one_sentence(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err.get("loc", ())) or "request"
        name = _FIELD_NAMES.get(loc, loc)
        msg = err.get("msg", "is invalid")
        msg = msg.removeprefix("Value error, ")
        if err.get("type") == "extra_forbidden":
            msg = "is not a known field"
        inp = err.get("input")
        shown = f" (got {inp!r})" if isinstance(inp, (int, float)) and not isinstance(inp, bool) else ""
        parts.append(f"{name}: {msg}{shown}")
    return "Invalid request: " + "; ".join(parts) + "."
