"""VAE decode from denoised latents, per model family — the last lines of each diffusers pipeline's ``__call__``.

The runner asks pipelines for ``output_type="latent"`` and decodes here, so that latents exist (and are saved)
before the VAE runs: a decode failure then costs a decode, not the whole denoising run. Each function mirrors the
pipeline's own code (diffusers 0.42); ``tests/test_recovery.py`` checks that the frames are identical to letting
the pipeline decode.

Cancelling while the VAE decodes: diffusers' ``vae.decode`` is one call, but its decoder runs block by block (and,
for Wan, once per latent frame; for CogVideoX once per latent frame batch; once per tile when tiling). While
:func:`cancellable` is active, a forward pre-hook on the decoder and on each of its blocks checks the cancel event and
raises :class:`~localvideo.errors.Cancelled`, so a cancel is honoured within one decoder block, not after the whole
decode.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable

from ..errors import Cancelled, GenerationFailed

DECODABLE = ("wan", "ltx", "cogvideox", "hunyuan", "mochi")


def is_cancelled(cancel: "Callable[[], bool] | threading.Event | None") -> bool:
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event):
        return cancel.is_set()
    return bool(cancel())


CANCELLED_WHILE_DECODING = "Generation cancelled while decoding; no video was written."


@contextlib.contextmanager
def cancellable(vae, cancel):
    """While active, the VAE's decoder checks ``cancel`` (an Event or a callable) before each of its blocks runs and
    raises :class:`~localvideo.errors.Cancelled` once it is set. The pipeline is leased to this run alone (see
    ``runner.use_pipeline``), so hooking its VAE for the call's duration is safe; the hooks are removed however the
    decode ends, and a decode stopped half-way drops the VAE's per-frame caches (Wan) so they hold no memory."""
    import torch

    decoder = getattr(vae, "decoder", None)
    if cancel is None or not isinstance(decoder, torch.nn.Module):
        yield
        return

    def check(_module, _args):
        if is_cancelled(cancel):
            raise Cancelled(CANCELLED_WHILE_DECODING)

    containers = (torch.nn.ModuleList, torch.nn.Sequential, torch.nn.ModuleDict)
    handles = [m.register_forward_pre_hook(check) for m in decoder.modules()
               if m is decoder or (any(True for _ in m.children()) and not isinstance(m, containers))]
    try:
        yield
    except Cancelled:
        clear = getattr(vae, "clear_cache", None)
        if callable(clear):
            clear()
        raise
    finally:
        for h in handles:
            h.remove()


def _vae_device(pipe):
    from diffusers.utils.torch_utils import get_module_execution_device

    return get_module_execution_device(pipe.vae)  # understands offload hooks, as the pipelines do


def decode(pipe, latents, family: str, *, num_frames: int, height: int, width: int, generator=None,
           decode_timestep: float | None = None, decode_noise_scale: float | None = None) -> Any:
    """Decode latents as returned by ``pipe(..., output_type="latent")``; returns float32 (F, H, W, 3) in [0, 1]."""
    import numpy as np
    import torch

    vae = pipe.vae
    device = _vae_device(pipe)
    with torch.inference_mode():
        if family == "wan":
            latents = latents.to(device, dtype=vae.dtype)
            z = vae.config.z_dim
            mean = torch.tensor(vae.config.latents_mean).view(1, z, 1, 1, 1).to(latents.device, latents.dtype)
            inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, z, 1, 1, 1).to(latents.device, latents.dtype)
            video = vae.decode(latents / inv_std + mean, return_dict=False)[0]
        elif family == "ltx":
            lf = (num_frames - 1) // pipe.vae_temporal_compression_ratio + 1
            lh, lw = height // pipe.vae_spatial_compression_ratio, width // pipe.vae_spatial_compression_ratio
            dtype = pipe.text_encoder.dtype if getattr(pipe, "text_encoder", None) is not None else latents.dtype
            if latents.ndim == 3:  # LTXPipeline / LTXImageToVideoPipeline return packed tokens (B, N, C);
                # LTXConditionPipeline (LTX 0.9.5+, ltx-video-13b) returns them unpacked already (B, C, F, H, W)
                latents = pipe._unpack_latents(latents, lf, lh, lw, pipe.transformer_spatial_patch_size,
                                               pipe.transformer_temporal_patch_size)
            latents = pipe._denormalize_latents(latents, vae.latents_mean, vae.latents_std, vae.config.scaling_factor)
            latents = latents.to(device, dtype=dtype)
            timestep = None
            if vae.config.timestep_conditioning:
                from diffusers.utils.torch_utils import randn_tensor

                dt = 0.0 if decode_timestep is None else decode_timestep
                ns = dt if decode_noise_scale is None else decode_noise_scale
                noise = randn_tensor(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
                timestep = torch.tensor([dt], device=latents.device, dtype=latents.dtype)
                scale = torch.tensor([ns], device=latents.device, dtype=latents.dtype)[:, None, None, None, None]
                latents = (1 - scale) * latents + scale * noise
            video = vae.decode(latents.to(vae.dtype), timestep, return_dict=False)[0]
        elif family == "cogvideox":
            latents = latents.to(device).permute(0, 2, 1, 3, 4)  # (B, C, F, H, W)
            video = vae.decode((1 / pipe.vae_scaling_factor_image) * latents).sample
        elif family == "hunyuan":
            video = vae.decode(latents.to(device, dtype=vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
        elif family == "mochi":
            latents = latents.to(device)
            cfg = vae.config
            if getattr(cfg, "latents_mean", None) is not None and getattr(cfg, "latents_std", None) is not None:
                c = latents.shape[1]
                mean = torch.tensor(cfg.latents_mean).view(1, c, 1, 1, 1).to(latents.device, latents.dtype)
                std = torch.tensor(cfg.latents_std).view(1, c, 1, 1, 1).to(latents.device, latents.dtype)
                latents = latents * std / cfg.scaling_factor + mean
            else:
                latents = latents / cfg.scaling_factor
            video = vae.decode(latents.to(vae.dtype), return_dict=False)[0]
        else:
            raise GenerationFailed(f"localvideo cannot decode latents of the '{family}' family.")
        frames = pipe.video_processor.postprocess_video(video, output_type="np")
    frames = np.asarray(frames[0], dtype=np.float32)
    return frames
