"""The REST API (FastAPI, ``/v1``) over the job service. ``create_app()`` builds it; ``localvideo serve`` runs it."""

from __future__ import annotations

__all__ = ["create_app"]


def __getattr__(name: str):
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module 'localvideo.api' has no attribute {name!r}")
