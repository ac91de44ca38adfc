"""Photo animation without model weights: camera paths, subject-aware framing, 2.5D parallax.

    from localvideo.motion.animator import animate
    animate("photo.jpg", "dolly", width=768, height=432, duration_s=4, output="out.mp4")

Modules: ``image_io`` (robust loading, shared with image-to-video), ``camera`` (eased windows, pure numpy),
``focus`` (faces / saliency), ``layers`` (subject mask, confidence, inpainted plate), ``animator`` (the pipeline).
"""


def animate(*args, **kwargs):
    """See :func:`localvideo.motion.animator.animate` (imported lazily: OpenCV loads only when used)."""
    from .animator import animate as _animate

    return _animate(*args, **kwargs)
