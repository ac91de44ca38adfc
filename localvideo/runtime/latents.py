"""Denoised latents on disk: written before VAE decode, so a failed decode can be finished later.

A ``.latents.safetensors`` file holds the latents tensor, the random generator's state (LTX adds decode noise
from it), the plan as JSON, which is everything ``localvideo decode FILE`` needs, and the run's metadata that the
plan does not hold (the prompt as typed and how it was rewritten, conditioning images) for the MP4's metadata.
:func:`load` refuses a file whose plan is missing, unreadable, or does not match the latents tensor (shape).

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
from dataclasses import dataclass, field
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
    extra: dict = field(default_factory=dict)  # run metadata beyond the plan (original_prompt, prompt_source, …)


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


def save(path: Path, latents, generator_state, plan_dict: dict, extra: dict | None = None) -> Path:
    """Claim ``path`` for this run, then write atomically (temp file + rename): ``path`` is the final file name.

    ``extra``: the run's metadata beyond the plan (``PromptInfo.metadata()``, conditioning image info), restored
    into the MP4's metadata by ``localvideo decode``."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    claim_path(path).touch()  # first: killed from here on, the sweep can tell these latents were nobody's
    tensors = {"latents": latents.detach().to("cpu").contiguous()}
    meta = {"format": FORMAT, "plan": json.dumps(plan_dict, ensure_ascii=False, default=str)}
    if extra:
        meta["extra"] = json.dumps(extra, ensure_ascii=False, default=str)
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


# Plan keys decode needs (Plan.from_dict and the decode itself); a file without them was not written by save().
_PLAN_KEYS = {"model": str, "family": str, "pipeline": str, "width": int, "height": int, "num_frames": int,
              "latent_shape": list, "seed": int, "steps": int, "device": str, "dtype": str, "strategy": str,
              "vae_tiling": bool, "fps": (int, float), "call_kwargs": dict}


def expected_shapes(spec, plan: dict) -> list[tuple[int, ...]]:
    """The shapes the pipeline returns for this plan with ``output_type="latent"`` (batch 1): (1, C, F, H, W) for
    Wan, HunyuanVideo and Mochi (and LTXConditionPipeline, which unpacks), (1, F, C, H, W) for CogVideoX (frames
    padded to its temporal patch), LTX packed as (1, F·H·W / patch volume, C · patch volume)."""
    g = spec.geometry
    f, h, w = g.latent_shape(plan["num_frames"], plan["height"], plan["width"])
    c = g.latent_channels
    pt, ph, pw = g.patch
    if spec.family == "cogvideox":
        return [(1, -(-f // pt) * pt, c, h, w)]
    if spec.family == "ltx" and "Condition" not in str(plan.get("pipeline")):
        return [(1, (f // pt) * (h // ph) * (w // pw), c * pt * ph * pw)]
    return [(1, c, f, h, w)]


def check(saved: SavedLatents, spec) -> None:
    """Refuse latents that do not fit their plan: the plan's model family and geometry, and the tensor's shape
    against the plan's size and frames (a cut tensor, an edited size). Raises :class:`InvalidRequest`."""
    p, plan = saved.path, saved.plan
    if plan.get("family") != spec.family:
        raise InvalidRequest(f"{p.name} does not fit its plan: the plan names {spec.id} (family {spec.family}) "
                             f"but says the latents are from the {plan.get('family')} family.",
                             hint="Decode the latents file the failed run named, unedited.")
    pipelines = {spec.pipeline, spec.i2v_pipeline} - {None}
    if plan["pipeline"] not in pipelines:
        raise InvalidRequest(f"{p.name} does not fit its plan: the plan names {spec.id} but the pipeline "
                             f"{plan['pipeline']!r}, which is not one of {spec.id}'s ({', '.join(sorted(pipelines))}).",
                             hint="Decode the latents file the failed run named, unedited.")
    implied = list(spec.geometry.latent_shape(plan["num_frames"], plan["height"], plan["width"]))
    if list(plan["latent_shape"]) != implied:
        raise InvalidRequest(f"{p.name} does not fit its plan: {plan['width']}x{plan['height']}, "
                             f"{plan['num_frames']} frames on {spec.id} means latents of "
                             f"{'x'.join(map(str, implied))}, but the plan says "
                             f"{'x'.join(map(str, plan['latent_shape']))}.",
                             hint="Decode the latents file the failed run named, unedited.")
    shape = tuple(saved.latents.shape)
    shapes = expected_shapes(spec, plan)
    if shape not in shapes:
        raise InvalidRequest(f"{p.name} does not fit its plan: the latents tensor is {list(shape)}, but "
                             f"{plan['width']}x{plan['height']}, {plan['num_frames']} frames on {spec.id} gives "
                             f"{list(shapes[0])}.",
                             hint="Decode the latents file the failed run named, unedited.")
    if not saved.latents.is_floating_point():
        raise InvalidRequest(f"{p.name} is damaged: its latents are {saved.latents.dtype}, not floating point.")


def load(path: str | os.PathLike) -> SavedLatents:
    """Read a latents file written by :func:`save`. Anything missing, unreadable or ill-typed is an
    :class:`InvalidRequest` naming the file (the tensor's fit to the plan is :func:`check`'s)."""
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
    damaged = "Decode the latents file the failed run named, unedited; if it is damaged, generate the video again."
    if "plan" not in meta:
        raise InvalidRequest(f"{p.name} has no plan in its metadata, so there is nothing to decode it with.",
                             hint=damaged)
    plan = _json_object(meta["plan"], f"{p.name} has a plan", damaged)
    for key, kind in _PLAN_KEYS.items():
        if key not in plan:
            raise InvalidRequest(f"{p.name} has a plan without {key!r}.", hint=damaged)
        value = plan[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise InvalidRequest(f"{p.name} has a plan whose {key!r} is {value!r}, which is not a valid value.",
                                 hint=damaged)
    for key in ("width", "height", "num_frames", "steps"):
        if plan[key] < 1:
            raise InvalidRequest(f"{p.name} has a plan whose {key!r} is {plan[key]}.", hint=damaged)
    if len(plan["latent_shape"]) != 3 or not all(isinstance(v, int) for v in plan["latent_shape"]):
        raise InvalidRequest(f"{p.name} has a plan whose latent_shape is {plan['latent_shape']!r}, not three "
                             f"whole numbers.", hint=damaged)
    state = None
    if "generator_state" in meta:
        try:
            raw = np.frombuffer(base64.b64decode(meta["generator_state"], validate=True), dtype=np.uint8).copy()
        except ValueError as e:
            raise InvalidRequest(f"{p.name} has a damaged generator state ({e}).", hint=damaged) from None
        state = torch.from_numpy(raw)
        if state.numel() != torch.Generator("cpu").get_state().numel():
            raise InvalidRequest(f"{p.name} has a damaged generator state ({state.numel()} bytes).", hint=damaged)
    extra = _json_object(meta["extra"], f"{p.name} has run metadata", damaged) if "extra" in meta else {}
    return SavedLatents(p, latents, state, plan, extra)


def _json_object(text: str, what: str, hint: str) -> dict:
    """``text`` parsed as a JSON object, or InvalidRequest "<what> that is not valid JSON / not a JSON object"."""
    try:
        value = json.loads(text)
    except ValueError as e:
        raise InvalidRequest(f"{what} that is not valid JSON ({e}).", hint=hint) from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"{what} that is not a JSON object.", hint=hint)
    return value
