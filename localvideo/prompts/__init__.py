"""Prompts: the deterministic per-family prompt engine and the optional local-LLM enhancer.

``expand`` (engine) needs no model and no torch. ``enhance`` (enhancer) loads a small instruct model from local
files only when asked, validates what it writes and falls back to the engine when the text is not usable.
``prepare_prompt`` applies either to a :class:`~localvideo.request.GenerationRequest` (what generation calls).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Literal

from .engine import ExpandedPrompt, expand, parse_hints

__all__ = ["ExpandedPrompt", "PromptInfo", "expand", "parse_hints", "prepare_prompt"]


@dataclass(frozen=True)
class PromptInfo:
    """How the prompt the model reads came about (recorded in the video's metadata)."""

    prompt: str
    negative_prompt: str | None  # None: the request's / model's default applies
    original: str
    source: Literal["engine", "llm", "as-typed"]
    family: str
    hints: dict = field(default_factory=dict)
    changes: list[str] = field(default_factory=list)
    enhancer: str | None = None
    fallback_reason: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def metadata(self) -> dict:
        return {"original_prompt": self.original, "prompt_source": self.source, "prompt_hints": self.hints,
                "prompt_changes": list(self.changes), "prompt_enhancer": self.enhancer,
                "prompt_fallback_reason": self.fallback_reason}


def prepare_prompt(request, family: str, *, stream: Callable[[str], None] | None = None, stop=None,
                   hardware=None, settings=None):
    """(request with the final prompt, :class:`PromptInfo`).

    ``request.enhance`` (an enhancer id or folder) runs the local LLM (with ``stream``/``stop``), else
    ``request.expand_prompt`` runs the engine, else the prompt is used as typed. The family's negative prompt is
    used only when the request has none. The returned request has ``expand_prompt=False, enhance=None``, so
    preparing it again changes nothing.
    """
    original = request.prompt
    if request.enhance:
        from .enhancer import enhance

        r = enhance(original, family, model=request.enhance, stream=stream, stop=stop, hardware=hardware,
                    settings=settings)
        info = PromptInfo(prompt=r.prompt, negative_prompt=r.negative_prompt, original=original, source=r.source,
                          family=family, hints=r.hints, changes=list(r.changes), enhancer=r.model,
                          fallback_reason=r.reason_if_fallback)
    elif request.expand_prompt:
        e = expand(original, family)
        info = PromptInfo(prompt=e.prompt, negative_prompt=e.negative_prompt, original=original, source="engine",
                          family=family, hints=e.hints, changes=list(e.changes))
    else:
        info = PromptInfo(prompt=original, negative_prompt=None, original=original, source="as-typed",
                          family=family, changes=["expansion off: the prompt is used as typed"])
    update = {"prompt": info.prompt, "expand_prompt": False, "enhance": None}
    if request.negative_prompt is None and info.negative_prompt is not None:
        update["negative_prompt"] = info.negative_prompt
    return request.model_copy(update=update), info
