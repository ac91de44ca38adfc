"""Requests stored by an older (or development) localvideo, brought to this version's field names.

Job rows keep their request as JSON, so a row written by another build can hold field names this version does not
accept (its request models forbid unknown fields, which is right for new submissions: a typo must not be ignored).
Retrying or running such a row goes through :func:`migrate`:

* a field that was **renamed** is moved to its new name (``cache`` → ``step_cache``); when both names are there
  with different values the row is refused (which one was meant cannot be known);
* a field this version **does not know** is dropped when its value asks for nothing (``null``, ``false``, empty),
  so the retry makes the same video; with any other value it is refused, since running without it could make a
  different video than the one the person asked for. The refusal says which field and what to do (submit the
  request again as a new job, without it);
* the result must then be a valid request of this version, or the row is refused with the validation sentence.

Every change is described in a note (kept on the job: :attr:`localvideo.jobs.models.Job.notes`).
"""

from __future__ import annotations

from typing import Any

from ..errors import InvalidRequest
from .models import JobConflict

GENERATION_KINDS = ("text-to-video", "image-to-video")

# Field renames, per kind: old name → new name. Add a line here when a stored field is renamed.
RENAMED: dict[str, dict[str, str]] = {
    "text-to-video": {"cache": "step_cache"},
    "image-to-video": {"cache": "step_cache"},
}


class StoredRequestError(JobConflict):
    """A stored request this version cannot run as it was asked for (HTTP 409: the job exists, it cannot be run)."""

    code = "stored_request_unsupported"


def _known_fields(kind: str, context: str) -> frozenset[str]:
    if kind in GENERATION_KINDS:
        from ..request import GenerationRequest

        return frozenset(GenerationRequest.model_fields)
    if kind == "story":
        from ..story import StoryRequest

        return frozenset(StoryRequest.model_fields)
    if kind == "photo-animation":
        from .models import AnimationRequest

        return frozenset(AnimationRequest.model_fields)
    raise StoredRequestError(f"{context}: its kind {kind!r} is not known to this version of localvideo.",
                             hint="Delete the job, or run it with the version that made it.")


def _asks_for_nothing(value: Any) -> bool:
    return value is None or value is False or (isinstance(value, (str, list, tuple, dict)) and not value)


def migrate(kind: str, request: dict, context: str = "This job cannot run") -> tuple[dict, list[str]]:
    """``(request in this version's field names, notes on what changed)``; unchanged rows give ``(request, [])``.

    Raises :class:`StoredRequestError` (one sentence, ``"{context}: its stored request …"``, and a hint saying what
    to do) when the row cannot be run as it was asked for."""
    known = _known_fields(kind, context)
    out = dict(request)
    notes: list[str] = []
    for old, new in RENAMED.get(kind, {}).items():
        if old not in out or old in known:
            continue
        value = out.pop(old)
        if new in out and out[new] is not None and value is not None and out[new] != value:
            raise StoredRequestError(
                f"{context}: its stored request has both '{old}' ({value!r}) and its new name '{new}' "
                f"({out[new]!r}), so which one was meant is unknown.",
                hint=f"Submit the request again as a new job with the '{new}' you want.")
        if out.get(new) is None:
            out[new] = value
        notes.append(f"stored request from an older localvideo: field '{old}' is now '{new}' (value {value!r} kept)")
    for name in [k for k in out if k not in known]:
        value = out[name]
        if not _asks_for_nothing(value):
            raise StoredRequestError(
                f"{context}: its stored request has field '{name}' = {value!r}, which this version of localvideo "
                "does not know, and running without it could make a different video than the one asked for.",
                hint=f"Submit the request again as a new job without '{name}' (its other fields are in the job's "
                     "request).")
        del out[name]
        notes.append(f"stored request from an older localvideo: field '{name}' ({value!r}) is not known to this "
                     "version and asked for nothing; it was dropped")
    _validate(kind, out, context)
    return out, notes


def _validate(kind: str, request: dict, context: str) -> None:
    """The migrated request must be a valid request of this version (the same checks a run makes)."""
    try:
        if kind in GENERATION_KINDS:
            from ..request import GenerationRequest

            GenerationRequest.parse(**request)
        elif kind == "story":
            from ..story import StoryRequest

            StoryRequest.parse(**request)
        elif kind == "photo-animation":
            from pydantic import ValidationError

            from ..request import _one_sentence
            from .models import AnimationRequest

            try:
                AnimationRequest(**request)
            except ValidationError as e:
                raise InvalidRequest(_one_sentence(e)) from None
    except InvalidRequest as e:
        why = e.message.removeprefix("Invalid request: ").rstrip(".")
        raise StoredRequestError(f"{context}: its stored request is not valid for this version of localvideo "
                                 f"({why}).",
                                 hint="Submit the request again as a new job with values this version accepts."
                                 ) from None
