"""Stories: a script of scenes → one segment per scene → one MP4 (same layer as :mod:`localvideo.generation`).

For each scene the duration becomes a frame count at the story's frame rate, snapped to the model's frame rule
(``[4s]`` at 16 fps → 64 → 65 for a 4k+1 model; a scene longer than the model's clip limit is an error naming the
scene). Scene ``k`` (0-based) uses seed ``base + k``.

Continuity: when it is on (the default whenever the model does image-to-video), the last frame of scene ``k`` (as
the runner decoded it, never an encoded copy) is saved as a PNG and conditions scene ``k + 1`` (its ``image``); the
first scene is text-to-video (or image-to-video from ``image``). An image-conditioned segment starts with (the
model's rendering of) that seed frame, a copy of the frame just shown, so that first frame is dropped when joining.
A scene marked ``[cut]``, and every scene when continuity is off, starts fresh from text: a hard cut, or a crossfade
when ``crossfade_s`` > 0.

Frame count of the story (``F_k`` frames generated for scene k, ``C`` continued boundaries, ``H`` hard-cut boundaries,
``N = round(crossfade_s × fps)`` crossfade frames, applied only at hard cuts)::

    total = Σ F_k − C − H × N

Each scene's frames are kept losslessly, as the runner decoded them: uint8 ``scene-NNN.npy`` in a work folder next
to the output (``.<name>.segments.partial-<owner tag>/``), on disk rather than in memory so that memory holds one
scene at a time however long the story (720p: about 2.8 MB a frame, 225 MB for an 81-frame scene). They are joined by
:func:`localvideo.media.concat.join` (drops, crossfades), so every frame of the story is encoded exactly once, at
CRF 18, by the project's one encoder. With ``keep_segments=True`` each scene is also encoded, from the same frames,
to its own ``scene-NNN.mp4`` (with its JSON sidecar), and the folder is kept as ``<name>.segments/`` (segments,
sidecars and conditioning PNGs; the ``.npy`` frames are always removed); the joined video is never made from those
MP4s. Otherwise the folder is removed after the join; a cancel (or Ctrl-C) removes it and leaves no MP4. A failure
(a scene's error, the join's) leaves no joined MP4 but keeps the scenes finished by then: each encoded to its own
``scene-NNN.mp4`` (with its sidecar), with the conditioning PNGs and a ``story.json`` (script, seed, the error), in
``<name>.segments.failed/``, and the error's hint says where (``keep_failed_scenes=False``, as jobs run: nothing is
kept, since a failed job's folder is removed). A killed
process (SIGKILL, out of memory, power loss) cannot remove it: its name carries the owner tag of
:mod:`localvideo.runtime.leftovers` (host, pid, process start time…), and the next story in that folder (or the job
service's start) removes it once that process is provably gone — never one of a live process or another host.

Metadata (MP4 tag ``localvideo`` and the JSON sidecar) has ``kind: "story"``, the script and, per scene, prompt /
expanded prompt / seed / frames / start and end frame / start time / transition / the conditioning frame's hashes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from . import __version__
from .catalog import ModelSpec, get_model
from .errors import Cancelled, DoesNotFit, InvalidRequest, LocalVideoError, OutputError
from .hardware import Hardware
from .prompts.scenes import MAX_SCRIPT_CHARS, Scene, ShotList, parse_script, scenes_to_script
from .runtime import leftovers
from .settings import Settings, get_settings

log = logging.getLogger(__name__)

MAX_CROSSFADE_S = 10.0
SEGMENTS_SUFFIX = ".segments"


@dataclass
class StoryProgress:
    """Progress of a story: scene ``scene`` of ``scenes`` (1-based; ``scenes`` + 0 while joining) and the step."""

    scene: int
    scenes: int
    phase: str  # loading | denoising | decoding | encoding (keeping a scene: frames, MP4 if kept) | joining | done
    step: int = 0
    total: int = 0
    elapsed_s: float = 0.0
    eta_s: float | None = None
    message: str | None = None  # one true sentence when the phase alone would mislead (a wait for the model)

    def to_dict(self) -> dict:
        return {"scene": self.scene, "scenes": self.scenes, "phase": self.phase, "step": self.step,
                "total": self.total, "elapsed_s": round(self.elapsed_s, 3),
                "eta_s": None if self.eta_s is None else round(self.eta_s, 3), "message": self.message}


@dataclass
class SceneResult:
    index: int
    line: int
    text: str
    prompt: str  # as written (with hints), what the prompt engine read
    expanded_prompt: str  # what the model read
    negative_prompt: str
    seed: int
    duration_s: float | None  # as asked (None: the model's default)
    frames_requested: int
    frames: int  # generated (the segment)
    kept: int  # after dropping the seed frame
    start_frame: int = 0
    end_frame: int = 0  # exclusive
    start_time_s: float = 0.0
    end_time_s: float = 0.0
    transition: str = "start"  # start | continued | cut | crossfade
    task: str = "t2v"
    conditioning: dict | None = None
    notes: list[str] = field(default_factory=list)
    degraded: list[str] = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    segment: str | None = None  # the segment file, when kept

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class StoryResult:
    path: Path
    sidecar: Path
    metadata: dict
    scenes: list[SceneResult]
    frames: int
    width: int
    height: int
    fps: float
    seed: int
    model: str
    random_weights: bool
    continuity: bool
    crossfade_frames: int
    timings: dict
    warnings: list[str] = field(default_factory=list)
    segments_dir: Path | None = None

    def to_dict(self) -> dict:
        return {"path": str(self.path), "sidecar": str(self.sidecar), "kind": "story", "model": self.model,
                "random_weights": self.random_weights, "seed": self.seed, "frames": self.frames,
                "width": self.width, "height": self.height, "fps": self.fps, "continuity": self.continuity,
                "crossfade_frames": self.crossfade_frames, "scenes": [s.to_dict() for s in self.scenes],
                "timings": self.timings, "warnings": self.warnings,
                "segments_dir": str(self.segments_dir) if self.segments_dir else None, "metadata": self.metadata}


class StoryRequest(BaseModel):
    """A story as the job service and the REST API take it (field names as :func:`make_story`'s)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    script: str = Field(min_length=1, max_length=MAX_SCRIPT_CHARS,
                        description="One scene per line (or per blank-line block): '[4s] wide shot: a fox wakes'.")
    model: str = Field(default="wan2.1-t2v-1.3b", max_length=200)
    from_paragraph: bool = Field(default=False, description="script is a paragraph: one scene per sentence (a "
                                 "sentence under three words joins its neighbour; at most 8 scenes).")
    crossfade_s: float = Field(default=0.0, ge=0, le=MAX_CROSSFADE_S, description="Crossfade at hard cuts.")
    continuity: bool | None = Field(default=None, description="Each scene starts from the previous one's last "
                                                              "frame (null: when the model does image-to-video).")
    seed: int | None = Field(default=None, ge=0, lt=2**62)
    fps: float | None = Field(default=None, gt=0, le=240)
    width: int | None = Field(default=None, ge=1, le=8192)
    height: int | None = Field(default=None, ge=1, le=8192)
    steps: int | None = Field(default=None, ge=1, le=500)
    guidance: float | None = Field(default=None, ge=0, le=50)
    negative_prompt: str | None = Field(default=None, max_length=4000)
    duration_s: float | None = Field(default=None, gt=0, le=60, description="Length of scenes that give none.")
    expand_prompt: bool = True
    # the first scene starts from this image: a path on the server, set by the job service from an upload (REST:
    # POST /v1/jobs/story-from-image); never taken from a client (not a StoryCreate field)
    image: str | None = Field(default=None, max_length=4096)

    @classmethod
    def parse(cls, **fields) -> "StoryRequest":
        from pydantic import ValidationError

        from .request import _one_sentence

        try:
            return cls(**fields)
        except ValidationError as e:
            raise InvalidRequest(_one_sentence(e), hint="Check the value and try again.") from None

    def source(self):
        """What :func:`make_story` takes: the script, or the paragraph's sentence shot list."""
        if self.from_paragraph:
            from .prompts.scenes import shot_list_from_paragraph

            return shot_list_from_paragraph(self.script, duration_s=self.duration_s)
        return self.script

    def options(self) -> dict:
        """:func:`make_story`'s keyword arguments for a job. A failed job's folder is removed by its worker, so a
        job keeps no finished scenes of a failed story (``keep_failed_scenes=False``): its error names none."""
        return self.model_dump(exclude={"script", "from_paragraph"}) | {"keep_failed_scenes": False}


def story_frames(frames: list[int], transitions: list[str], crossfade: int) -> int:
    """The story's frame count: Σ F_k − (continued boundaries) − (hard-cut boundaries) × crossfade."""
    continued = sum(1 for t in transitions if t == "continued")
    cuts = sum(1 for t in transitions if t in ("cut", "crossfade"))
    return sum(frames) - continued - cuts * crossfade


def _scenes_from(script_or_scenes) -> tuple[list[Scene], str, dict]:
    if isinstance(script_or_scenes, ShotList):
        sl = script_or_scenes
        return list(sl.scenes), sl.script, {"source": sl.source, "reason_if_fallback": sl.reason_if_fallback,
                                            "enhancer": sl.enhancer, "raw_output": sl.raw_output}
    if isinstance(script_or_scenes, str):
        return parse_script(script_or_scenes), script_or_scenes, {}
    scenes = list(script_or_scenes or [])
    if not scenes or not all(isinstance(s, Scene) for s in scenes):
        raise InvalidRequest("A story needs a script (text) or a list of scenes.",
                             hint="e.g. make_story('[3s] a fox wakes\\n[3s] it runs', model='tiny-wan')")
    return scenes, scenes_to_script(scenes), {}


def _frames_for(scene: Scene, spec: ModelSpec, fps: float, default_s: float | None) -> int:
    where = f"Scene {scene.index + 1}" + (f" (line {scene.line})" if scene.line else "")
    if scene.frames is not None:
        n = scene.frames
    elif scene.duration_s is not None or default_s is not None:
        n = max(1, round((scene.duration_s if scene.duration_s is not None else default_s) * fps))
    else:
        return spec.frame_rule.snap(spec.defaults.frames)
    snapped = spec.frame_rule.snap(n)
    if snapped > spec.max_frames:
        raise InvalidRequest(
            f"{where} needs {n} frames ({n / fps:.2f} s at {fps:g} fps); {spec.id} makes at most {spec.max_frames} "
            f"frames ({spec.max_frames / fps:.2f} s) per clip.", hint="Split it into shorter scenes.",
            scene=scene.index + 1, line=scene.line)
    return snapped


def _output_path(output: str | None, model: str, seed: int, settings: Settings,
                 overwrite: bool = False) -> tuple[Path, bool]:
    """The story's output path (checked: see :func:`localvideo.media.encode.check_output_path`) and whether its name
    was chosen for the user (then made unique when reserved)."""
    from .media.encode import check_output_path, output_target

    name = f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-story-{model}-seed{seed}.mp4"
    p, chosen = output_target(output, name, settings.outputs)
    return check_output_path(p, overwrite=overwrite or chosen), chosen  # a chosen name is made unique instead


def work_folder(out_path: Path) -> Path:
    """The story's work folder next to ``out_path``, named for this process (:func:`leftovers.owner_tag`: host,
    pid, process start time…) so that :func:`leftovers.sweep` can tell one a killed story left from a live one."""
    return out_path.parent / f".{out_path.stem}{SEGMENTS_SUFFIX}.partial-{leftovers.owner_tag()}"


def _free_folder(p: Path) -> Path:
    n = 1
    out = p
    while out.exists():
        out = p.with_name(f"{p.name}~{n}")
        n += 1
    return out


def _is_cancelled(cancel) -> bool:
    if cancel is None:
        return False
    return cancel.is_set() if hasattr(cancel, "is_set") else bool(cancel())


@dataclass
class StoryPlan:
    """A checked story, before anything heavy: scenes, frames per scene, transitions, pinned seed (and, when planned
    on a machine, each scene's plan)."""

    scenes: list[Scene]
    script: str
    shot_list: dict
    spec: ModelSpec
    fps: float
    crossfade_s: float
    crossfade: int  # frames
    continuity: bool
    transitions: list[str]  # start | continued | cut | crossfade, one per scene
    planned: list[int]  # frames per scene, snapped to the model's rule
    seed: int
    plans: list | None = None  # with hardware: each scene's planner.Plan, as the run will make it (t2v or i2v)

    @property
    def frames(self) -> int:
        return story_frames(self.planned, self.transitions, self.crossfade)

    @property
    def duration_s(self) -> float:
        return self.frames / self.fps

    def spans(self) -> list[tuple[int, int]]:
        """Where each scene lands in the joined video, as planned: frames [start, end)."""
        return _spans(self.planned, self.transitions, self.crossfade)


def _spans(frames: list[int], transitions: list[str], crossfade: int) -> list[tuple[int, int]]:
    """[start, end) of each segment in the joined video: a continued scene drops its first frame (the seed frame),
    a crossfaded one starts ``crossfade`` frames before the previous one ends."""
    out, pos = [], 0
    for f, t in zip(frames, transitions):
        start = pos - (crossfade if t == "crossfade" else 0)
        pos = start + f - (1 if t == "continued" else 0)
        out.append((start, pos))
    return out


API_IMAGE = "an `image` upload to POST /v1/jobs/story-from-image"


def plan_story(script_or_scenes, *, model: str, crossfade_s: float = 0.0, continuity: bool | None = None,
               seed: int | None = None, fps: float | None = None, width: int | None = None, height: int | None = None,
               steps: int | None = None, guidance: float | None = None, image: str | None = None,
               duration_s: float | None = None, negative_prompt: str | None = None,
               hardware: Hardware | None = None) -> StoryPlan:
    """Check a story without generating anything (the job service calls this at submit, the CLI for ``--dry-run``
    and before a run). Raises InvalidRequest for the script, frames, crossfades, continuity and the image; with
    ``hardware``, every scene is also planned on it as the run will make it (text- or image-to-video, at the first
    scene's size), so a size, length or setting that does not fit or is not valid is refused now (DoesNotFit /
    InvalidRequest) rather than at scene 5."""
    scenes, script, shot_list = _scenes_from(script_or_scenes)
    spec = get_model(model)
    if fps is not None and (isinstance(fps, bool) or not 0 < float(fps) <= 240):
        raise InvalidRequest(f"fps must be above 0 and at most 240 (got {fps!r}).")
    fps = float(fps) if fps is not None else float(spec.defaults.fps)
    if duration_s is not None and not 0 < duration_s <= 60:
        raise InvalidRequest(f"The default scene length must be above 0 and at most 60 s (got {duration_s:g}).")
    if not isinstance(crossfade_s, (int, float)) or isinstance(crossfade_s, bool) or \
            not 0 <= crossfade_s <= MAX_CROSSFADE_S:
        raise InvalidRequest(f"The crossfade must be from 0 to {MAX_CROSSFADE_S:g} seconds (got {crossfade_s!r}).")
    crossfade = int(round(crossfade_s * fps))
    if crossfade_s > 0 and crossfade == 0:
        raise InvalidRequest(f"A crossfade of {crossfade_s:g} s is less than one frame at {fps:g} fps.",
                             hint=f"Use at least {1 / fps:.3f} s, or 0 for hard cuts.")

    # continuity
    if spec.requires_last_image:  # e.g. Wan 2.1 FLF2V: every clip needs a last frame, which a story cannot give
        raise InvalidRequest(f"{spec.id} makes a clip between a first and a last frame, so it cannot make story "
                             "scenes.", hint="Use a text- or image-to-video model such as wan2.2-ti2v-5b.")
    i2v = spec.supports("i2v")
    if continuity and not i2v:
        raise InvalidRequest(f"{spec.id} cannot start a clip from an image, so scenes cannot continue from the "
                             "previous one.", hint="Drop --continuity (API: leave `continuity` out); scenes are then "
                                                   "joined with cuts. Or use an image-to-video model such as "
                                                   "wan2.2-ti2v-5b.")
    use_continuity = i2v if continuity is None else bool(continuity)
    if not spec.supports("t2v"):
        if image is None:
            raise InvalidRequest(f"{spec.id} only makes video from an image: the first scene needs one.",
                                 hint=f"Pass --image photo.jpg (API: {API_IMAGE}).")
        if not use_continuity or any(s.cut for s in scenes[1:]):
            raise InvalidRequest(f"{spec.id} only makes video from an image, so every scene must continue from the "
                                 "previous one.", hint="Drop --no-continuity (API: leave `continuity` out) and "
                                                       "every [cut] from the script.")
    if image is not None and not i2v:
        raise InvalidRequest(f"{spec.id} cannot start from an image.",
                             hint="Drop --image (API: send the story without an image, to POST /v1/jobs/story), or "
                                  "use an image-to-video model such as wan2.2-ti2v-5b.")
    transitions = []
    for k, s in enumerate(scenes):
        if k == 0:
            transitions.append("start")
        elif use_continuity and not s.cut:
            transitions.append("continued")
        else:
            transitions.append("crossfade" if crossfade else "cut")

    # frames, checked before anything heavy
    planned = [_frames_for(s, spec, fps, duration_s) for s in scenes]
    _check_crossfades(planned, transitions, crossfade, fps)
    base_seed = seed if seed is not None else random.randrange(2**31)
    if not 0 <= base_seed < 2**63 - len(scenes):
        raise InvalidRequest(f"The seed must be from 0 to 2^63 − {len(scenes) + 1} (got {base_seed}).")
    plans = None
    if hardware is not None:
        plans = _plan_scenes(scenes, spec, planned, transitions, hardware, fps=fps, width=width, height=height,
                             steps=steps, guidance=guidance, negative_prompt=negative_prompt, image=image,
                             seed=base_seed)
    return StoryPlan(scenes=scenes, script=script, shot_list=shot_list, spec=spec, fps=fps, crossfade_s=crossfade_s,
                     crossfade=crossfade, continuity=use_continuity, transitions=transitions, planned=planned,
                     seed=base_seed, plans=plans)


def _plan_scenes(scenes, spec, planned, transitions, hardware, *, fps, width, height, steps, guidance,
                 negative_prompt, image, seed) -> list:
    """Each scene planned on ``hardware`` as :func:`make_story` will run it: the first from ``image`` (i2v) or text,
    a continued scene from the previous scene's last frame (i2v), a cut from text; every scene after the first at
    the first one's size. Scenes with the same frames and task share one plan (planning is pure, but a story may
    have a hundred scenes)."""
    from .planner import plan as make_plan
    from .request import GenerationRequest

    first_size = None
    if image is not None:
        from .runtime.conditioning import image_size

        first_size = image_size(image)  # an unreadable image is refused now, as the first scene would
    size = (width, height)
    plans: list = []
    seen: dict = {}
    for k, scene in enumerate(scenes):
        task = "i2v" if transitions[k] == "continued" or (k == 0 and image is not None) else "t2v"
        if k and (planned[k], task) in seen:
            plans.append(seen[(planned[k], task)])
            continue
        cond = (image if k == 0 else "previous-scene-last-frame.png") if task == "i2v" else None
        req = GenerationRequest.parse(prompt=scene.prompt, model=spec.id, width=size[0], height=size[1],
                                      num_frames=planned[k], fps=fps, steps=steps, guidance=guidance, seed=seed + k,
                                      negative_prompt=negative_prompt, image=cond)
        try:
            p = make_plan(req, spec, hardware, task=task, image_size=first_size if k == 0 else None)
        except DoesNotFit as e:  # which scene, and a hint in the script's terms
            raise _scene_does_not_fit(e, scene, len(scenes), fps) from None
        if k == 0 and None in size:
            size = (p.width, p.height)  # every later scene at the first one's size, as make_story runs them
        plans.append(p)
        seen[(planned[k], task)] = p
    return plans


def _scene_does_not_fit(e: DoesNotFit, scene: Scene, n_scenes: int, fps: float) -> DoesNotFit:
    import re

    where = f"Scene {scene.index + 1} of {n_scenes}" + (f" (line {scene.line})" if scene.line else "")
    hint = e.hint
    shorter = re.match(r"Try --frames (\d+)", hint or "")  # a size hint already names the flags and the fields
    if shorter:
        n = int(shorter.group(1))
        hint = (f"Make scene {scene.index + 1} at most {n} frames ([{n}f], {n / fps:.2f} s at {fps:g} fps) or "
                "split it, or use a GPU with more memory.")
    return DoesNotFit(f"{where} does not fit: {e.message}", hint=hint,
                      **{**e.details, "scene": scene.index + 1, "line": scene.line})


def make_story(script_or_scenes, *, model: str, output: str | None = None, crossfade_s: float = 0.0,
               continuity: bool | None = None, seed: int | None = None, fps: float | None = None,
               width: int | None = None, height: int | None = None, steps: int | None = None,
               guidance: float | None = None, negative_prompt: str | None = None, image: str | None = None,
               duration_s: float | None = None, expand_prompt: bool = True, keep_segments: bool = False,
               hardware: Hardware | None = None, cache=None, settings: Settings | None = None, on_progress=None,
               cancel=None, keep_failed_scenes: bool = True, overwrite: bool = False) -> StoryResult:
    """Generate a story: one segment per scene, joined into one MP4 (see the module docstring).

    ``script_or_scenes``: script text (:mod:`localvideo.prompts.scenes` format), a list of
    :class:`~localvideo.prompts.scenes.Scene` or a :class:`~localvideo.prompts.scenes.ShotList`. ``continuity``:
    True / False / None (= on when the model does image-to-video). ``duration_s``: length of scenes that give none
    (default: the model's default clip). ``image``: the first scene starts from this photo (image-to-video).
    ``on_progress`` receives :class:`StoryProgress`; ``cancel`` (Event or callable) raises
    :class:`~localvideo.errors.Cancelled` between or within scenes, leaving no MP4 and no segments.
    ``hardware``: the machine every scene is planned on up front (:func:`plan_story`; None: each scene probes it).
    ``keep_failed_scenes``: when a scene (or the join) fails, the scenes finished by then are encoded to
    ``<name>.segments.failed/`` next to the output and the error says so (its hint, and ``kept_scenes_dir`` in its
    details; a non-localvideo exception gets a note). A cancel, or Ctrl-C, keeps nothing.
    """
    from .generation import build_metadata, record, render
    from .media import concat
    from .media.encode import release_output, reserve_output, write_sidecar
    from .runtime import latents as latents_io

    t_start = time.perf_counter()
    settings = settings or get_settings()
    sp = plan_story(script_or_scenes, model=model, crossfade_s=crossfade_s, continuity=continuity, seed=seed,
                    fps=fps, width=width, height=height, steps=steps, guidance=guidance, image=image,
                    duration_s=duration_s, negative_prompt=negative_prompt, hardware=hardware)
    scenes, script, shot_list, spec, fps = sp.scenes, sp.script, sp.shot_list, sp.spec, sp.fps
    crossfade, transitions, planned, base_seed, use_continuity = (sp.crossfade, sp.transitions, sp.planned, sp.seed,
                                                                  sp.continuity)
    out_path, chosen = _output_path(output, spec.id, base_seed, settings, overwrite)
    out_path = reserve_output(out_path, unique=chosen)  # no other run writes this name until released
    try:
        # what killed stories (and runs) left in this folder and in the latents folder, before adding gigabytes
        leftovers.sweep([out_path.parent, settings.home / "latents"], context="before a story")
        work = work_folder(out_path)
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
    except BaseException:
        release_output(out_path)
        raise

    def emit(p: StoryProgress) -> None:
        if on_progress is not None:
            on_progress(p)

    results: list[SceneResult] = []
    segment_meta: list[dict] = []
    warnings: list[str] = []
    size: tuple[int, int] | None = (width, height) if width is not None or height is not None else None
    seed_image: Path | None = Path(image) if image is not None else None
    seed_info: dict | None = None
    try:
        for k, scene in enumerate(scenes):
            if _is_cancelled(cancel):
                raise Cancelled(f"The story was cancelled before scene {k + 1} of {len(scenes)}; no video was "
                                "written.", scene=k + 1)

            def forward(p, k=k) -> None:
                if p.phase != "done":
                    emit(StoryProgress(k + 1, len(scenes), p.phase, p.step, p.total,
                                       time.perf_counter() - t_start, None, getattr(p, "message", None)))

            continued = transitions[k] == "continued"
            use_image = str(seed_image) if (continued or (k == 0 and seed_image is not None)) else None
            fields = dict(model=spec.id, num_frames=planned[k], fps=fps, steps=steps, guidance=guidance,
                          seed=base_seed + k, negative_prompt=negative_prompt, expand_prompt=expand_prompt,
                          output=str(work / f"scene-{k + 1:03d}.mp4"), image=use_image)
            if size is not None:
                fields.update(width=size[0], height=size[1])
            t_scene = time.perf_counter()
            rendered = render(scene.prompt, hardware=hardware, on_progress=forward, cancel=cancel, cache=cache,
                              settings=settings, **fields)
            plan = rendered.plan
            try:
                emit(StoryProgress(k + 1, len(scenes), "encoding", plan.steps, plan.steps,
                                   time.perf_counter() - t_start, None))
                # the runner's frames, kept losslessly on disk (uint8, exactly what the encoder would be fed): the
                # joined video is encoded once from these, and memory holds one scene at a time however long
                kept_frames = _keep_frames(rendered.frames, work / f"scene-{k + 1:03d}.npy", k)
                rendered.frames = None
                n_frames = int(kept_frames.shape[0])
                if keep_segments:  # the scene's own MP4 and sidecar, encoded once from the same frames
                    seg = record(kept_frames, plan, rendered.spec, rendered.out_path, rendered.timings,
                                 rendered.t_start, extra=rendered.extra)
                    meta, scene_timings = seg.metadata, dict(seg.timings)
                else:
                    scene_timings = dict(rendered.timings, total_s=round(time.perf_counter() - rendered.t_start, 3))
                    meta = build_metadata(plan, rendered.spec, scene_timings) | rendered.extra
            finally:
                latents_io.discard(rendered.latents_file)
                release_output(rendered.out_path)
            if size is None or None in size:
                size = (plan.width, plan.height)  # every later scene at the first one's size
            segment_meta.append(meta)
            warnings += [w for w in plan.warnings if w not in warnings]
            res = SceneResult(
                index=k, line=scene.line, text=scene.text, prompt=scene.prompt, expanded_prompt=meta["prompt"],
                negative_prompt=meta.get("negative_prompt") or "", seed=plan.seed, duration_s=scene.duration_s,
                frames_requested=planned[k], frames=n_frames, kept=n_frames - (1 if continued else 0),
                transition=transitions[k], task=plan.task, notes=list(plan.notes),
                degraded=list(plan.degraded), timings=scene_timings)
            if use_image is not None:
                res.conditioning = dict(seed_info or {}) | {"input_image": meta.get("input_image")}
                if k == 0:
                    res.conditioning["from"] = "image"
            results.append(res)
            if k + 1 < len(scenes) and transitions[k + 1] == "continued":
                seed_image, seed_info = _save_last_frame(kept_frames, work / f"scene-{k + 1:03d}-last.png", k)
            del kept_frames
            if n_frames != planned[k]:
                warnings.append(f"scene {k + 1} came back with {n_frames} frames instead of {planned[k]}")
            log.info("story scene %d/%d: %d frames in %.1f s", k + 1, len(scenes), n_frames,
                     time.perf_counter() - t_scene)

        if _is_cancelled(cancel):
            raise Cancelled("The story was cancelled before joining; no video was written.")
        frames = [r.frames for r in results]
        _check_crossfades(frames, transitions, crossfade, fps)  # again, with what was generated
        pieces, pos = [], 0
        for r in results:
            n_in = crossfade if r.transition == "crossfade" else 0
            pieces.append(concat.Piece(work / f"scene-{r.index + 1:03d}.npy",
                                       drop_first=1 if r.transition == "continued" else 0, crossfade_in=n_in))
            r.start_frame = pos - n_in
            r.end_frame = r.start_frame + r.kept
            r.start_time_s = round(r.start_frame / fps, 4)
            r.end_time_s = round(r.end_frame / fps, 4)
            pos = r.end_frame
        total = story_frames(frames, transitions, crossfade)
        assert pos == total, (pos, total)
        emit(StoryProgress(len(scenes), len(scenes), "joining", 0, total, time.perf_counter() - t_start))
        metadata = _metadata(spec, script, scenes, results, segment_meta, base_seed, fps, crossfade, crossfade_s,
                             continuity, use_continuity, total, shot_list, warnings)
        tags = {"title": (scenes[0].text[:150] + (f" (+{len(scenes) - 1} scenes)" if len(scenes) > 1 else "")),
                "comment": _summary(metadata),
                "localvideo": json.dumps(metadata, ensure_ascii=False, sort_keys=True, default=str)}
        t_join = time.perf_counter()
        enc, spans, notes = concat.join(pieces, out_path, fps, metadata=tags,
                                        cancel=lambda: _is_cancelled(cancel))
        for r, span in zip(results, spans):
            assert (span.start, span.end) == (r.start_frame, r.end_frame), (span, r)
    except Cancelled:
        shutil.rmtree(work, ignore_errors=True)
        release_output(out_path)
        raise
    except Exception as e:  # a scene or the join failed: the finished scenes are kept (not on Ctrl-C: BaseException)
        release_output(out_path)
        kept = None
        if keep_failed_scenes and results:
            kept = _keep_finished_scenes(work, out_path, results, segment_meta, fps, len(scenes), e,
                                         dict(model=spec.id, seed=base_seed, script=script))
        shutil.rmtree(work, ignore_errors=True)
        if kept is not None:
            _say_kept(e, kept, len(results), len(scenes))
        raise
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        release_output(out_path)
        raise
    timings = {"scenes_s": round(sum(r.timings.get("total_s", 0.0) for r in results), 3),
               "join_s": round(time.perf_counter() - t_join, 3),
               "total_s": round(time.perf_counter() - t_start, 3)}
    metadata["timings"] = timings
    metadata["join_notes"] = notes
    metadata["file"] = {"path": str(enc.path), "bytes": enc.bytes, "frames": enc.frames, "width": enc.width,
                        "height": enc.height, "padded": enc.padded}
    for f in work.glob("scene-*.npy"):  # the lossless frames were only for the join
        f.unlink(missing_ok=True)
    segments_dir = None
    if keep_segments:
        segments_dir = _free_folder(out_path.parent / f"{out_path.stem}{SEGMENTS_SUFFIX}")
        os.replace(work, segments_dir)
        for r in results:
            r.segment = str(segments_dir / f"scene-{r.index + 1:03d}.mp4")
        metadata["segments_dir"] = str(segments_dir)
        metadata["scenes"] = [r.to_dict() for r in results]
    else:
        shutil.rmtree(work, ignore_errors=True)
    try:
        sidecar = write_sidecar(enc.path, metadata)
    except LocalVideoError:
        enc.path.unlink(missing_ok=True)
        raise
    finally:
        release_output(out_path)
    emit(StoryProgress(len(scenes), len(scenes), "done", total, total, time.perf_counter() - t_start, 0.0))
    return StoryResult(path=enc.path, sidecar=sidecar, metadata=metadata, scenes=results, frames=enc.frames,
                       width=enc.width, height=enc.height, fps=enc.fps, seed=base_seed, model=spec.id,
                       random_weights=spec.tiny, continuity=use_continuity, crossfade_frames=crossfade,
                       timings=timings, warnings=warnings, segments_dir=segments_dir)


def _keep_finished_scenes(work: Path, out_path: Path, results: list[SceneResult], segment_meta: list[dict],
                          fps: float, n_scenes: int, error: BaseException, story: dict) -> Path | None:
    """After a failure: each finished scene as its own MP4 + JSON sidecar (encoded once from its kept frames, or as
    already kept with ``keep_segments``), the conditioning PNGs, and ``story.json`` (the script, seed and why it
    stopped), in ``<name>.segments.failed/`` (a free name) next to the output. Not hidden and carrying no owner tag,
    so no leftovers sweep ever removes it: it is the user's. Returns the folder, or None when it could not be made
    (the disk that failed the story may be full): then nothing is kept and the error is left as it was."""
    import numpy as np

    from .media.encode import VideoWriter, write_sidecar

    try:
        for r, meta in zip(results, segment_meta):
            mp4 = work / f"scene-{r.index + 1:03d}.mp4"
            if not mp4.is_file():
                frames = np.load(work / f"scene-{r.index + 1:03d}.npy", mmap_mode="r", allow_pickle=False)
                tags = {"title": str(meta.get("prompt") or r.text)[:200],
                        "comment": f"localvideo {__version__} story scene {r.index + 1} of {n_scenes}, kept after "
                                   "the story failed",
                        "localvideo": json.dumps(meta, ensure_ascii=False, sort_keys=True, default=str)}
                with VideoWriter(mp4, fps=fps, metadata=tags) as writer:
                    for i in range(frames.shape[0]):
                        writer.write(np.asarray(frames[i]))
                del frames
                enc = writer.result
                write_sidecar(mp4, meta | {"file": {"path": str(enc.path), "bytes": enc.bytes, "frames": enc.frames,
                                                    "width": enc.width, "height": enc.height, "padded": enc.padded}})
        for f in work.glob("scene-*.npy"):
            f.unlink()
        dest = _free_folder(out_path.parent / f"{out_path.stem}{SEGMENTS_SUFFIX}.failed")
        for r in results:
            r.segment = str(dest / f"scene-{r.index + 1:03d}.mp4")
        code = getattr(error, "code", type(error).__name__)
        message = getattr(error, "message", None) or str(error)
        (work / "story.json").write_text(json.dumps(
            {"kind": "story-failed", **story, "scene_count": n_scenes, "scenes_kept": [r.index + 1 for r in results],
             "error": {"error": code, "message": message}, "scenes": [r.to_dict() for r in results]},
            indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
        os.replace(work, dest)
        return dest
    except Exception as e:
        log.warning("the story failed, and its finished scenes could not be kept either: %s", e)
        return None


def _say_kept(error: BaseException, folder: Path, done: int, n_scenes: int) -> None:
    """Tell where the finished scenes are: first in the hint of a localvideo error, else as a note."""
    which = f"Scene 1 of {n_scenes} is" if done == 1 else f"Scenes 1–{done} of {n_scenes} are"
    said = f"{which} kept in {folder} (an MP4 per scene, with its settings)."
    log.info("story failed: %s", said)
    if isinstance(error, LocalVideoError):
        error.hint = f"{said} {error.hint}" if error.hint else said
        error.details["kept_scenes_dir"] = str(folder)
    else:
        error.add_note(said)


def _check_crossfades(frames: list[int], transitions: list[str], crossfade: int, fps: float) -> None:
    """Each segment must have enough frames for its crossfades in and out (frames are never blended twice)."""
    for k, f in enumerate(frames):
        kept = f - (1 if transitions[k] == "continued" else 0)
        need_in = crossfade if transitions[k] == "crossfade" else 0
        need_out = crossfade if k + 1 < len(frames) and transitions[k + 1] == "crossfade" else 0
        if kept < max(1, need_in + need_out):
            raise InvalidRequest(
                f"Scene {k + 1} has {f} frames ({f / fps:.2f} s), too few for crossfades of {crossfade} frames "
                f"({crossfade / fps:.2f} s) {'on both sides' if need_in and need_out else ''}".rstrip() + ".",
                hint="Use a shorter --crossfade (API: crossfade_s) or longer scenes.", scene=k + 1)


def _keep_frames(frames, dest: Path, k: int):
    """A scene's frames as uint8 in ``dest`` (.npy), returned memory-mapped; a full disk is an OutputError."""
    from .media.concat import save_frames

    try:
        return save_frames(frames, dest)
    except OSError as e:
        raise OutputError(f"Could not keep scene {k + 1}'s frames in {dest.parent} ({e.strerror or e}); a story keeps "
                          "each scene's frames uncompressed there until the final video is encoded.",
                          hint="Free some disk space (or, on the command line, choose another --output folder).",
                          path=str(dest.parent)) from e


def _save_last_frame(frames, dest: Path, k: int) -> tuple[Path, dict]:
    """The scene's last frame (lossless, as the runner decoded it) as a PNG (the next scene's conditioning image)
    and its hashes."""
    import numpy as np
    from PIL import Image

    if len(frames) == 0:
        raise InvalidRequest(f"Scene {k + 1} has no frames to continue from.")
    last = np.ascontiguousarray(frames[-1])
    Image.fromarray(last).save(dest, format="PNG")
    info = {"from_scene": k + 1, "from_frame": len(frames) - 1, "image": dest.name,
            "file_sha256": hashlib.sha256(dest.read_bytes()).hexdigest(),
            "pixels_sha256": hashlib.sha256(last.tobytes()).hexdigest(), "width": last.shape[1],
            "height": last.shape[0]}
    return dest, info


_COPY = ("repo", "pipeline", "random_weights", "steps", "guidance", "width", "height", "strategy", "device", "dtype",
         "licence", "diffusers_version", "torch_version", "quantization", "attention")


def _metadata(spec, script, scenes, results, segment_meta, base_seed, fps, crossfade, crossfade_s, requested,
              used, total, shot_list, warnings) -> dict:
    first = segment_meta[0]
    continued = [r.index + 1 for r in results if r.transition == "continued"]
    cuts = [r.index + 1 for r in results if r.transition in ("cut", "crossfade")]
    md = {
        "kind": "story",
        "localvideo_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": spec.id,
        **{k: first.get(k) for k in _COPY},
        "seed": base_seed,
        "seed_rule": "scene k (1-based) uses seed + k − 1",
        "fps": fps,
        "num_frames": total,
        "script": script,
        "scene_count": len(scenes),
        "continuity": {"requested": "auto" if requested is None else bool(requested), "used": used,
                       "model_supports_i2v": spec.supports("i2v"), "continued_scenes": continued,
                       "hard_cut_scenes": cuts},
        "crossfade": {"seconds": crossfade_s, "frames": crossfade if cuts else 0,
                      "applies_to": "hard cuts only (continued scenes join on the seed frame)"},
        "frame_formula": "total = sum(segment frames) - continued boundaries - hard-cut boundaries x crossfade frames",
        "boundaries": [{"before_scene": r.index + 1, "frame": r.start_frame, "time_s": r.start_time_s,
                        "transition": r.transition} for r in results[1:]],
        "scenes": [r.to_dict() for r in results],
        "warnings": list(warnings),
    }
    if shot_list:
        md["shot_list"] = shot_list
    return md


def _summary(md: dict) -> str:
    rw = " [RANDOM WEIGHTS]" if md.get("random_weights") else ""
    return (f"localvideo {__version__} story: {md['model']}{rw}, {md['scene_count']} scenes, seed {md['seed']}+k, "
            f"{md['width']}x{md['height']}, {md['num_frames']} frames @ {md['fps']:g} fps, continuity "
            f"{'on' if md['continuity']['used'] else 'off'}, crossfade {md['crossfade']['frames']} frames")
