"""The web UI (Gradio) on the job service. Importing this package is cheap; gradio loads only in :mod:`.app`,
when ``localvideo serve`` mounts the UI."""

from __future__ import annotations

__all__ = ["build_ui", "mount"]


def mount(app, service, settings=None, *, token: str | None = None) -> list[str]:
    """Mount the studio at ``/`` of a FastAPI app whose ``/v1`` routes are already in place. See :func:`.app.mount`."""
    from .app import mount as _mount

    return _mount(app, service, settings, token=token)


def build_ui(service, settings=None, **kwargs):
    """The studio's ``gr.Blocks`` for one job service. See :func:`.app.build_ui`."""
    from .app import build_ui as _build

    return _build(service, settings, **kwargs)
