"""What a person asks for. Field names are shared by the Python API, CLI, REST API and SDKs."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import InvalidRequest

MAX_PROMPT_CHARS = 4000
Quantization = Literal["auto", "none", "fp8", "int8", "gguf"]
Attention = Literal["sdpa", "flash", "sage"]
CACHE_KINDS = ("fbc", "mag", "taylor")
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
    image: str | None = None  # image-to-video: path of the first frame (resized/cropped to the plan's size)
    last_image: str | None = None  # image-to-video: path of the last frame, where the model supports it
    expand_prompt: bool = True  # rewrite the prompt in the model family's style (localvideo.prompts.engine)
    enhance: str | None = None  # a local LLM prompt enhancer (id or folder) instead of the engine
    # run options (localvideo.runtime.options): low-precision storage, step cache, LoRAs, attention, compile
    quantization: Quantization = "auto"  # auto: the planner may pick fp8 storage before sequential offload
    gguf_path: str | None = None  # a GGUF single-file transformer (implies quantization "gguf")
    step_cache: str | None = None  # fbc | mag | taylor, optionally ":value" (threshold, or interval for taylor)
    loras: tuple[tuple[str, float], ...] = ()  # ("path.safetensors", weight); "path:weight" strings are accepted
    attention: Attention = "sdpa"
    compile: bool = False

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

    @field_validator("step_cache", mode="before")
    @classmethod
    def _cache(cls, v):
        if v is None or (isinstance(v, str) and v.strip().lower() in ("", "none", "off")):
            return None
        return parse_cache_spec(str(v))

    @field_validator("loras", mode="before")
    @classmethod
    def _loras(cls, v):
        return parse_loras(v)

    @field_validator("gguf_path")
    @classmethod
    def _gguf(cls, v: str | None) -> str | None:
        if v is None:
            return None
        from pathlib import Path

        p = Path(v).expanduser()
        if not p.is_file():
            raise ValueError(f"the GGUF file '{v}' does not exist")
        if p.suffix.lower() != ".gguf":
            raise ValueError(f"'{v}' is not a .gguf file")
        return str(p.resolve())

    @model_validator(mode="after")
    def _quantization_matches_gguf(self) -> "GenerationRequest":
        if self.quantization == "gguf" and self.gguf_path is None:
            raise ValueError("quantization gguf needs a GGUF transformer file (--gguf PATH)")
        if self.gguf_path is not None and self.quantization not in ("auto", "gguf"):
            raise ValueError(f"a GGUF file is already quantized; it cannot be combined with quantization "
                             f"{self.quantization}")
        return self

    @classmethod
    def parse(cls, **fields) -> "GenerationRequest":
        """Build a request, turning pydantic's errors into one clear :class:`InvalidRequest`."""
        try:
            return cls(**fields)
        except ValidationError as e:
            raise InvalidRequest(_one_sentence(e), hint="Check the value and try again.") from None


# in words both a CLI user and an API user recognise (the field names are the API's; the flags are --lora, …)
_FIELD_NAMES = {"num_frames": "frames", "negative_prompt": "negative prompt", "loras": "LoRA",
                "step_cache": "step cache", "gguf_path": "GGUF file", "last_image": "last frame"}


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
        parts.append(f"{name}: {msg}{shown}" if loc != "request" else f"{msg}{shown}")  # model-level checks
    return "Invalid request: " + "; ".join(parts) + "."


def parse_cache_spec(text: str) -> str:
    """Normalise a step-cache spec: ``fbc``, ``fbc:0.08``, ``mag``, ``mag:0.1``, ``mag:calibrate``, ``taylor``,
    ``taylor:3`` (cache interval). Raises ValueError with one clear sentence."""
    kind, _, value = text.strip().lower().partition(":")
    if kind not in CACHE_KINDS:
        raise ValueError(f"unknown step cache '{text}': use fbc, mag or taylor, optionally with ':value'")
    if not value:
        return kind
    if kind == "mag" and value == "calibrate":
        return "mag:calibrate"
    if kind == "taylor":
        if not value.isdigit() or not 1 <= int(value) <= 50:
            raise ValueError(f"taylor's value is its cache interval in steps, a whole number from 1 to 50 "
                             f"(got '{value}')")
        return f"taylor:{int(value)}"
    try:
        threshold = float(value)
    except ValueError:
        raise ValueError(f"the {kind} threshold must be a number (got '{value}')") from None
    if not 0 < threshold <= 10:
        raise ValueError(f"the {kind} threshold must be above 0 and at most 10 (got {threshold:g})")
    return f"{kind}:{threshold:g}"


def parse_loras(value) -> tuple[tuple[str, float], ...]:
    """``["a.safetensors:0.8", ("b.safetensors", 1.0), "c.safetensors"]`` → resolved, checked ``(path, weight)``
    pairs (weight 1.0 when none is given). Raises ValueError naming the file that is missing or repeated."""
    from pathlib import Path

    if value is None or (isinstance(value, (list, tuple)) and not value):
        return ()
    if isinstance(value, (str, tuple)) and not (isinstance(value, tuple) and value and
                                                isinstance(value[0], (list, tuple, str))):
        value = [value]
    out: list[tuple[str, float]] = []
    for item in value:
        if isinstance(item, str):
            path, weight = item, 1.0
            head, sep, tail = item.rpartition(":")
            if sep and head:
                try:
                    weight, path = float(tail), head
                except ValueError:  # a colon in the path itself (e.g. C:\\...), no weight given — unless the part
                    # before it is a LoRA file: then the weight is what is wrong
                    if head.lower().endswith((".safetensors", ".bin", ".pt", ".pth")) or Path(head).is_file():
                        raise ValueError(f"the weight of LoRA '{head}' must be a number (got {tail!r})") from None
        elif isinstance(item, (list, tuple)) and len(item) == 2:
            path, weight = str(item[0]), item[1]
        else:
            raise ValueError(f"a LoRA is 'path.safetensors' or 'path.safetensors:weight' (got {item!r})")
        try:
            weight = float(weight)
        except (TypeError, ValueError):
            raise ValueError(f"the weight of LoRA '{path}' must be a number (got {weight!r})") from None
        if not -10 <= weight <= 10:
            raise ValueError(f"the weight of LoRA '{path}' must be between -10 and 10 (got {weight:g})")
        p = Path(path).expanduser()
        if not p.is_file():
            raise ValueError(f"the LoRA file '{path}' does not exist")
        resolved = str(p.resolve())
        if any(r == resolved for r, _ in out):
            raise ValueError(f"the LoRA file '{path}' is listed twice")
        out.append((resolved, weight))
    return tuple(out)
