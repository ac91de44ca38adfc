"""Typed errors. Each carries one user sentence (``message``) and what to do next (``hint``).

Entry points (CLI, API, UI) show ``str(error)``; nothing below them prints.
"""

from __future__ import annotations


class LocalVideoError(Exception):
    """Base class: a failure the user can understand and act on."""

    code = "error"
    exit_code = 1

    def __init__(self, message: str, hint: str | None = None, **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details = details

    def __str__(self) -> str:
        return f"{self.message} {self.hint}" if self.hint else self.message

    def to_dict(self) -> dict:
        return {"error": self.code, "message": self.message, "hint": self.hint, **{k: v for k, v in self.details.items() if _jsonable(v)}}


def _jsonable(v: object) -> bool:
    return isinstance(v, (str, int, float, bool, type(None), list, dict))


class InvalidRequest(LocalVideoError):
    code = "invalid_request"
    exit_code = 2


class UnknownModel(InvalidRequest):
    code = "unknown_model"


class ModelNotInstalled(LocalVideoError):
    code = "model_not_installed"
    exit_code = 3


class DoesNotFit(LocalVideoError):
    code = "does_not_fit"
    exit_code = 4


class Cancelled(LocalVideoError):
    code = "cancelled"
    exit_code = 130


class OutputError(LocalVideoError):
    code = "output_error"
    exit_code = 5


class DownloadError(LocalVideoError):
    code = "download_error"
    exit_code = 6


class GenerationFailed(LocalVideoError):
    code = "generation_failed"
    exit_code = 7
