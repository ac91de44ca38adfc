"""Denoised latents on disk: written before VAE decode, so a failed decode can be finished later.

A ``.latents.safetensors`` file holds the latents tensor, the random generator's state (LTX adds decode noise
from it) and the plan as JSON, which is everything ``localvideo decode FILE`` needs.

While its run is deciding what becomes of them, the latents are *claimed*: an empty file
``.<name>.inuse-<owner tag>`` next to them (:mod:`localvideo.runtime.leftovers`), made before they are written. The
run ends the claim one of two ways: :func:`discard` (a written MP4 or a cancel: the latents go) or :func:`release`
(the user asked to keep them, or a failed decode told the user to finish with ``localvideo decode FILE``: from then on
they are the user's and nothing removes them). A process killed in between (SIGKILL, out of memory, power loss) leaves
the claim; the leftovers sweep then removes latents and claim once that process is provably gone — latents nobody was
told about. Unclaimed latents are never swept.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import GenerationFailed, InvalidRequest
from .leftovers import owner_tag

FORMAT = "localvideo-latents/1"


@dataclass
class SavedLatents:
    path: Path
    latents: Any  # torch.Tensor
    generator_state: Any  # torch.ByteTensor or None
    plan: dict  # Plan.to_dict()


def latents_path_for(video_path: Path, folder: Path) -> Path:
    """The first-choice name of a video's latents (see :func:`reserve` for the one a run actually gets)."""
    return folder / f"{video_path.stem}.latents.safetensors"


def reserve(video_path: Path, folder: Path, attempts: int = 1000) -> Path:
    """A latents path for this run that no other run and no kept file uses, claimed at once.

    The first choice is ``<video stem>.latents.safetensors``; when that file exists (kept for the user, or promised
    by a failed decode) or another run claims it — concurrent jobs all write ``video.mp4`` in their own folders,
    story scenes are all ``scene-NNN`` — the run takes ``<stem>-2``, ``-3``… The claim is created with O_EXCL, so two
    threads of one process never get the same name; two processes (other tags) that claim one free name in the same
    instant each see the other's claim and both move on.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(1, attempts + 1):
        path = folder / (f"{video_path.stem}.latents.safetensors" if n == 1 else
                         f"{video_path.stem}-{n}.latents.safetensors")
        if path.exists():
            continue
        mine = claim_path(path)
        try:
            os.close(os.open(mine, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            continue
        prefix = f".{path.name}.inuse-"
        if path.exists() or any(p.name.startswith(prefix) and p != mine for p in folder.iterdir()):
            mine.unlink(missing_ok=True)
            continue
        return path
    raise GenerationFailed(f"No free name for the latents of {video_path.name} in {folder} after {attempts} tries.",
                           hint=f"Remove old .latents.safetensors files from {folder}.")


def claim_path(path: Path) -> Path:
    """This process's claim on the latents at ``path``."""
    return path.with_name(f".{path.name}.inuse-{owner_tag()}")


def save(path: Path, latents, generator_state, plan_dict: dict) -> Path:
    """Claim ``path`` for this run, then write atomically (temp file + rename): ``path`` is the final file name."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    claim_path(path).touch()  # first: killed from here on, the sweep can tell these latents were nobody's
    tensors = {"latents": latents.detach().to("cpu").contiguous()}
    meta = {"format": FORMAT, "plan": json.dumps(plan_dict, ensure_ascii=False, default=str)}
    if generator_state is not None:
        meta["generator_state"] = base64.b64encode(generator_state.numpy().tobytes()).decode()
    tmp = path.with_name(f".{path.name}.{owner_tag()}.partial")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def release(path: Path | None) -> None:
    """End this run's claim and keep the latents: they are the user's now (asked for, or promised by an error)."""
    if path is not None:
        claim_path(path).unlink(missing_ok=True)


def discard(path: Path | None) -> None:
    """Remove the latents (the MP4 is written, or the run was cancelled) and then this run's claim on them."""
    if path is not None:
        path.unlink(missing_ok=True)
        release(path)


def adopt(path: Path) -> None:
    """The user is finishing these latents (``localvideo decode``): end the claims of runs that are provably gone,
    so that the sweep never takes a file the user is using."""
    from . import leftovers

    prefix = f".{path.name}.inuse-"
    try:
        claims = [p for p in path.parent.iterdir() if p.name.startswith(prefix)]
    except OSError:
        return
    for claim in claims:
        owner = leftovers.parse_tag(claim.name[len(prefix):])
        if owner is not None and leftovers.why_abandoned(owner) is not None:
            claim.unlink(missing_ok=True)


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
