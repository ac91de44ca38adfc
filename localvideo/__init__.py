"""localvideo: a local-first AI video studio. Prompt in, real MP4 out, on your own GPU.

The public Python API is lazy: importing ``localvideo`` does not import torch or diffusers.

    >>> import localvideo
    >>> result = localvideo.generate("a red fox running through snow", model="tiny-wan", seed=1)
    >>> result.path
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["generate", "GenerationRequest", "GenerationResult", "errors", "__version__"]


def __getattr__(name: str):
    if name in ("generate", "GenerationResult"):
        from . import generation

        return getattr(generation, name)
    if name == "GenerationRequest":
        from .request import GenerationRequest

        return GenerationRequest
    if name == "errors":
        from . import errors

        return errors
    raise AttributeError(f"module 'localvideo' has no attribute {name!r}")
