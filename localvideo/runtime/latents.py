"""Denoised latents on disk: written before VAE decode, so a failed decode can be finished later.

A ``.latents.safetensors`` file holds the latents tensor, the random generator's state (LTX adds decode noise
from it) and the plan as JSON, which is everything ``localvideo decode FILE`` needs.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidRequest

FORMAT = "localvideo-latents/1"


@dataclass
class SavedLatents:
    path: Path
    latents: Any  # torch.Tensor
    generator_state: Any  # torch.ByteTensor or None
    plan: dict  # Plan.to_dict()


def latents_path_for(video_path: Path, folder: Path) -> Path:
    return folder / f"{video_path.stem}.latents.safetensors"


def save(path: Path, latents, generator_state, plan_dict: dict) -> Path:
    """Write atomically (temp file + rename) next to nothing else: ``path`` is the final file name."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"latents": latents.detach().to("cpu").contiguous()}
    meta = {"format": FORMAT, "plan": json.dumps(plan_dict, ensure_ascii=False, default=str)}
    if generator_state is not None:
        meta["generator_state"] = base64.b64encode(generator_state.numpy().tobytes()).decode()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return path


def load(path: str | os.PathLike) -> SavedLatents:
    import numpy as np
    import torch
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise InvalidRequest(f"No latents file at {p}.", hint="Pass the .latents.safetensors path the error named.")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
            latents = f.get_tensor("latents")
    except Exception as e:  # not a safetensors file, truncated, no "latents" tensor
        raise InvalidRequest(f"{p.name} is not a localvideo latents file ({e}).") from None
    if meta.get("format") != FORMAT:
        raise InvalidRequest(f"{p.name} is not a localvideo latents file (format {meta.get('format')!r}).")
    state = None
    if "generator_state" in meta:
        raw = np.frombuffer(base64.b64decode(meta["generator_state"]), dtype=np.uint8).copy()
        state = torch.from_numpy(raw)
    return SavedLatents(p, latents, state, json.loads(meta["plan"]))
