"""localvideo: a local-first AI video studio. Prompt in, real MP4 out, on your own GPU.

The public Python API is lazy: importing ``localvideo`` does not import torch or diffusers.

    >>> import localvideo
    >>> result = localvideo.generate("a red fox running through snow", model="tiny-wan", seed=1)
    >>> result.path

Also: ``localvideo.make_story(script, model=…)`` (one MP4 from a script of scenes), ``localvideo.animate(photo)``
(a camera move over a photo, no model weights), ``localvideo.decode_saved(latents_file)`` (finish a run whose VAE
decode failed), and ``localvideo.errors`` (every error is a ``localvideo.errors.LocalVideoError``).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> (module, attribute); the attribute None means the module itself
_LAZY = {
    "generate": (".generation", "generate"),
    "GenerationResult": (".generation", "GenerationResult"),
    "decode_saved": (".generation", "decode_saved"),
    "GenerationRequest": (".request", "GenerationRequest"),
    "make_story": (".story", "make_story"),
    "animate": (".motion.animator", "animate"),
    "errors": (".errors", None),
}

__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'localvideo' has no attribute {name!r}")
    module, attr = _LAZY[name]
    # import_module, not `from . import x`: that form looks the name up on this package first, which calls this
    # very function again (for a submodule such as ``errors``: endless recursion)
    mod = importlib.import_module(module, __name__)
    return mod if attr is None else getattr(mod, attr)


def __dir__() -> list[str]:
    return sorted(__all__)
