"""Story scripts → scenes, and one paragraph → a shot list (local LLM, validated, or a deterministic split).

The script format
-----------------
One scene per line::

    # a comment line (ignored)
    [4s] wide shot: a red fox trots across a snowy field at dawn [golden hour]
    [2.5s] close-up: the fox lifts its head and sniffs the air
    the fox runs into the dark pine forest [tracking]

or one scene per block of lines separated by blank lines (the lines of a block are joined with spaces)::

    [4s] wide shot: a red fox trots across a snowy field,
    its breath steaming in the cold air.

    [3s] close-up: the fox lifts its head.

The rule: when the script has a blank line between two pieces of text it is read as blocks, otherwise every line is
a scene. In both forms a line that starts with a duration (``[3s] …``) always starts a new scene, so a block may list
several timed scenes (``[cut]`` at the start of a line does the same).

Per scene:

* **duration**, optional, in square brackets anywhere in the scene: ``[4s]``, ``[2.5s]``, ``[3 sec]``,
  ``[1500ms]``, or an exact frame count ``[33f]`` / ``[33 frames]``. Without one the model's default clip length is
  used. A duration must be more than 0 and at most :data:`MAX_SCENE_S` seconds (the model's own clip limit is checked
  when the story is planned). A bare number (``[4]``) or an unknown unit (``[4x]``) is an error, not a guess.
* **shot / camera prefix**, optional: ``wide shot: …``, ``close-up: …``, ``aerial, dolly in: …`` — words the prompt
  engine knows (see :mod:`localvideo.prompts.engine`) before a colon become hints (``[wide shot]``). A prefix the
  engine does not know (``Note: …``) stays part of the text. ``Scene 3:`` / ``Shot 3:`` labels are dropped.
* **hints** anywhere in brackets, as for ``generate``: ``[dolly in]``, ``[golden hour]``, ``[camera: slow spiral]``.
* ``[cut]``: a hard cut before this scene even when the story runs with continuity (a new place or time).

Errors are :class:`~localvideo.errors.InvalidRequest` naming the line: an empty script, a scene with no description,
two durations for one scene, an unclosed ``[``, absurd durations, more than :data:`MAX_SCENES` scenes.

No torch here; the LLM shot list loads the enhancer's model only when asked.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, field

from ..errors import InvalidRequest
from . import engine

log = logging.getLogger(__name__)

MAX_SCENES = 100
MAX_SCENE_S = 60.0
MAX_SCENE_FRAMES = 2048
MAX_SCRIPT_CHARS = 100_000
MAX_SCENE_CHARS = 4000  # GenerationRequest.MAX_PROMPT_CHARS

_HINT = "Write one scene per line, e.g. '[4s] wide shot: a red fox trots across a snowy field'."
_BRACKET = re.compile(r"\[([^\[\]]*)\]")
# a bracket whose content starts with a number: a duration, a frame count, or a mistake
_NUMERIC = re.compile(r"^\s*([+-]?\d+(?:[.,]\d+)?|[+-]?\.\d+)\s*([A-Za-z]*)\s*$")
_SECONDS = {"s": 1.0, "sec": 1.0, "secs": 1.0, "second": 1.0, "seconds": 1.0, "ms": 0.001}
_FRAMES = {"f", "fr", "frame", "frames"}
_CUT = {"cut", "hard cut", "cut to"}
_LABEL = re.compile(r"^\s*(?:scene|shot)\s*#?\s*\d+\s*[:.)\-–—]\s*", re.I)
_PREFIX = re.compile(r"^\s*([^:\[\]]{1,60}?)\s*:(?:\s+|$)")
_SCENE_START = re.compile(r"^\s*\[\s*(?:(?:[+-]?\d+(?:[.,]\d+)?|[+-]?\.\d+)\s*[A-Za-z]*|cut|hard cut|cut to)\s*\]",
                          re.I)  # a line opening with a duration or [cut] starts a scene


@dataclass(frozen=True)
class Scene:
    """One scene of a story. ``prompt`` is what the prompt engine reads (shot prefix turned into bracket hints)."""

    index: int  # 0-based position in the story
    prompt: str
    text: str  # the scene as written (joined lines, duration removed)
    duration_s: float | None = None  # None: the model's default clip length (or frames, when given)
    frames: int | None = None  # an exact frame count ([33f]); snapped to the model's rule like any request
    shot: tuple[str, ...] = ()  # hints from a "wide shot:" prefix
    line: int = 0  # 1-based line where the scene starts (0: not from a script)
    cut: bool = False  # [cut]: a hard cut before this scene even when the story runs with continuity

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shot"] = list(self.shot)
        return d


def parse_script(text: str) -> list[Scene]:
    """Parse a story script (see the module docstring). Raises :class:`InvalidRequest` with the line number."""
    if not isinstance(text, str):
        raise InvalidRequest("The story script must be text.", hint=_HINT)
    if len(text) > MAX_SCRIPT_CHARS:
        raise InvalidRequest(f"The story script has {len(text):,} characters; the limit is {MAX_SCRIPT_CHARS:,}.",
                             hint="Split it into several stories.")
    text = text.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff")
    # (line number, text) of meaningful lines; None marks a blank line (a block separator)
    lines: list[tuple[int, str] | None] = []
    for n, raw in enumerate(text.split("\n"), start=1):
        s = raw.strip()
        if s.startswith("#"):
            continue  # a comment line does not separate blocks
        lines.append((n, s) if s else None)
    pieces = [x for x in lines if x is not None]
    if not pieces:
        raise InvalidRequest("The story script is empty: it has no scenes (only blank or # comment lines).",
                             hint=_HINT)
    first = next(i for i, x in enumerate(lines) if x is not None)
    last = len(lines) - 1 - next(i for i, x in enumerate(reversed(lines)) if x is not None)
    blocks_mode = any(x is None for x in lines[first:last + 1])

    groups: list[list[tuple[int, str]]] = []
    current: list[tuple[int, str]] = []
    for item in lines:
        if item is None:
            if current:
                groups.append(current)
                current = []
            continue
        if current and (not blocks_mode or _SCENE_START.match(item[1])):
            groups.append(current)
            current = []
        current.append(item)
    if current:
        groups.append(current)
    if len(groups) > MAX_SCENES:
        raise InvalidRequest(f"The story has {len(groups)} scenes; the limit is {MAX_SCENES}.",
                             hint="Split it into several stories.")
    return [_scene(i, g) for i, g in enumerate(groups)]


def _scene(index: int, group: list[tuple[int, str]]) -> Scene:
    line = group[0][0]
    where = f"line {line}" if len(group) == 1 else f"lines {line}–{group[-1][0]}"
    for n, s in group:
        _check_brackets(n, s)
    joined = " ".join(s for _, s in group)
    duration: float | None = None
    frames: int | None = None
    seen: list[str] = []
    cut = False

    def take(m: re.Match) -> str:
        nonlocal duration, frames, cut
        if m.group(1).strip().lower() in _CUT:
            cut = True
            return " "
        num = _NUMERIC.match(m.group(1))
        if not num:
            return m.group(0)  # a hint or plain bracketed text: the prompt engine's business
        value_text, unit = num.group(1).replace(",", "."), num.group(2).lower()
        value = float(value_text)
        if unit in _SECONDS:
            if value * _SECONDS[unit] <= 0:
                raise InvalidRequest(f"Scene {index + 1} ({where}): the duration {m.group(0)} must be more than 0 "
                                     "seconds.", hint="Use e.g. [4s] or [2.5s].", line=line)
            seconds = value * _SECONDS[unit]
            if seconds > MAX_SCENE_S:
                raise InvalidRequest(f"Scene {index + 1} ({where}): {m.group(0)} is {seconds:g} seconds; one scene "
                                     f"may last at most {MAX_SCENE_S:g} s.",
                                     hint="Split it into several scenes (models make clips of a few seconds).",
                                     line=line)
            seen.append(m.group(0))
            duration = seconds
        elif unit in _FRAMES:
            if value != int(value) or not 1 <= value <= MAX_SCENE_FRAMES:
                raise InvalidRequest(f"Scene {index + 1} ({where}): {m.group(0)} must be a whole number of frames "
                                     f"from 1 to {MAX_SCENE_FRAMES}.", hint="Use e.g. [33f], or seconds: [2s].",
                                     line=line)
            seen.append(m.group(0))
            frames = int(value)
        elif not unit:
            raise InvalidRequest(f"Scene {index + 1} ({where}): {m.group(0)} has no unit.",
                                 hint=f"Write seconds ([{value_text}s]) or frames ([{value_text}f]).", line=line)
        else:
            raise InvalidRequest(f"Scene {index + 1} ({where}): {m.group(0)} has an unknown unit '{unit}'.",
                                 hint="Durations are seconds ([4s], [2.5s], [1500ms]) or frames ([33f]).",
                                 line=line)
        return " "

    body = _BRACKET.sub(take, joined)
    if len(seen) > 1:
        raise InvalidRequest(f"Scene {index + 1} ({where}) has {len(seen)} durations ({', '.join(seen)}).",
                             hint="Give each scene one duration, or split it into two scenes.", line=line)
    body = re.sub(r"\s+", " ", body).strip()
    body = _LABEL.sub("", body)
    shot: list[str] = []
    m = _PREFIX.match(body)
    if m:
        parts = [p for p in re.split(r"\s*,\s*|\s+and\s+|\s*\+\s*", m.group(1)) if p.strip()]
        found = [engine._lookup(p) for p in parts]
        if parts and all(f is not None for f in found):
            shot = [name for _, name in found]
            body = body[m.end():].strip()
    if not engine.parse_hints(body)[0].strip(" .,;:!?-–—\"'"):
        had = [w for w, present in (("a duration", seen), ("a shot type", shot), ("hints", body.strip())) if present]
        raise InvalidRequest(f"Scene {index + 1} ({where}) has no description"
                             f"{', only ' + ' and '.join(had) if had else ''}.",
                             hint="Say what the scene shows, e.g. '[3s] close-up: the fox blinks'.", line=line)
    if len(body) > MAX_SCENE_CHARS:
        raise InvalidRequest(f"Scene {index + 1} ({where}) has {len(body)} characters; the limit is "
                             f"{MAX_SCENE_CHARS}.", hint="Shorten it or split it into two scenes.", line=line)
    prompt = body + ("" if not shot else " [" + ", ".join(shot) + "]")
    return Scene(index=index, prompt=prompt, text=body if not shot else f"{m.group(1)}: {body}",
                 duration_s=duration, frames=frames, shot=tuple(shot), line=line, cut=cut)


def _check_brackets(n: int, s: str) -> None:
    depth = 0
    for ch in s:
        if ch == "[":
            if depth:
                raise InvalidRequest(f"Line {n}: a '[' opens inside another bracket.",
                                     hint="Close each bracket before opening the next: [4s] [dolly in].", line=n)
            depth = 1
        elif ch == "]":
            if not depth:
                raise InvalidRequest(f"Line {n}: a ']' closes a bracket that was never opened.",
                                     hint="Brackets hold a duration or hints: [4s], [dolly in].", line=n)
            depth = 0
    if depth:
        raise InvalidRequest(f"Line {n}: a '[' is never closed.", hint="Close it: [4s], [dolly in].", line=n)


def scenes_to_script(scenes: list[Scene]) -> str:
    """The scenes written back in the script format (one line each); parsing it gives the same scenes."""
    out = []
    for s in scenes:
        head = f"[{s.duration_s:g}s] " if s.duration_s is not None else (f"[{s.frames}f] " if s.frames else "")
        head += "[cut] " if s.cut else ""
        shot = ", ".join(s.shot) + ": " if s.shot else ""
        body = s.prompt[:s.prompt.rfind(" [")] if s.shot else s.prompt
        out.append(f"{head}{shot}{body}")
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------ paragraph → shot list

_ABBREV = re.compile(r"\b(?:Mr|Mrs|Ms|Dr|St|Prof|Sr|Jr|vs|etc|e\.g|i\.e|No|Mt)\.$", re.I)
MIN_SCENE_WORDS = 3


@dataclass
class ShotList:
    scenes: list[Scene]
    source: str  # "llm" | "sentences"
    reason_if_fallback: str | None = None
    raw_output: str = ""  # the LLM's text as generated ("" when it never ran)
    enhancer: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def script(self) -> str:
        return scenes_to_script(self.scenes)

    def to_dict(self) -> dict:
        return {"scenes": [s.to_dict() for s in self.scenes], "source": self.source,
                "reason_if_fallback": self.reason_if_fallback, "raw_output": self.raw_output,
                "enhancer": self.enhancer, "notes": list(self.notes), "script": self.script}


def split_sentences(text: str) -> list[str]:
    """Sentences of a paragraph (., !, ? followed by space; 。！？ anywhere), keeping common abbreviations whole."""
    text = re.sub(r"\s+", " ", text).strip()
    if not text:
        return []
    out: list[str] = []
    start = 0
    for m in re.finditer(r"[.!?…]+[\"'”’)]*(?=\s|$)|[。！？]+", text):
        end = m.end()
        candidate = text[start:end].strip()
        if m.group(0).startswith(".") and _ABBREV.search(text[start:m.start() + 1]):
            continue
        if candidate:
            out.append(candidate)
        start = end
    rest = text[start:].strip()
    if rest:
        out.append(rest)
    return out


def _words(s: str) -> int:
    return len(re.findall(r"\w+", s)) + sum(1 for c in s if engine.is_cjk(c)) // 2


def sentence_scenes(paragraph: str, *, max_scenes: int = 8, duration_s: float | None = None) -> list[Scene]:
    """The deterministic shot list: one scene per sentence; sentences under three words join their neighbour; more
    sentences than ``max_scenes`` are grouped evenly, in order. Raises InvalidRequest for an empty paragraph."""
    if not isinstance(paragraph, str) or not paragraph.strip():
        raise InvalidRequest("The story paragraph is empty.", hint="Describe what happens, in a few sentences.")
    if not 1 <= max_scenes <= MAX_SCENES:
        raise InvalidRequest(f"max_scenes must be from 1 to {MAX_SCENES} (got {max_scenes}).")
    sentences = split_sentences(paragraph)
    merged: list[str] = []
    for s in sentences:
        if merged and (_words(s) < MIN_SCENE_WORDS or _words(merged[-1]) < MIN_SCENE_WORDS):
            merged[-1] = f"{merged[-1]} {s}"
        else:
            merged.append(s)
    if len(merged) > max_scenes:  # group evenly, in order
        n = len(merged)
        bounds = [round(i * n / max_scenes) for i in range(max_scenes + 1)]
        merged = [" ".join(merged[a:b]) for a, b in zip(bounds, bounds[1:])]
    if duration_s is not None and not 0 < duration_s <= MAX_SCENE_S:
        raise InvalidRequest(f"A scene lasts more than 0 and at most {MAX_SCENE_S:g} s (got {duration_s:g}).")
    scenes = []
    for i, s in enumerate(merged):
        s = s.strip()
        if len(s) > MAX_SCENE_CHARS:
            raise InvalidRequest(f"Sentence {i + 1} of the paragraph has {len(s)} characters; a scene may have "
                                 f"{MAX_SCENE_CHARS}.", hint="Break it up with full stops.")
        scenes.append(Scene(index=i, prompt=s, text=s, duration_s=duration_s))
    return scenes


def build_shot_list_messages(paragraph: str, max_scenes: int) -> list[dict]:
    """The one user turn sent to the LLM: it asks for lines in the script format, which :func:`validate_shot_list`
    then parses and checks."""
    instructions = (
        f"You are a film director. Break the story below into a shot list of 2 to {max_scenes} shots, in the order "
        "they happen. Write one shot per line, exactly in this form:\n"
        "[3s] wide shot: what the camera sees, in one concrete sentence\n"
        "Start each line with its duration (2 to 5 seconds) in square brackets, then a shot type (wide shot, medium "
        "shot, close-up, aerial, low angle, tracking shot) and a colon. Keep the characters, places and events of the "
        "story and add nothing that contradicts it. Write in the same language as the story. Answer with the shot "
        "list only: no title, no numbering, no explanation."
    )
    return [{"role": "user", "content": f"{instructions}\nStory: {paragraph.strip()}"}]


_SHOT_BREAK = re.compile(r"[ \t]+(?:\d{1,3}[.)][ \t]+)?(?=\[\s*\d+(?:[.,]\d+)?\s*(?:s|secs?|seconds?|ms|f|frames?)\s*\])",
                         re.I)
_NUMBERING = re.compile(r"^\s*(?:\d{1,3}[.)]|[-*•])\s+")


def validate_shot_list(raw: str, paragraph: str, *, max_scenes: int = 8, reasoning: bool = False,
                       finished: bool = True) -> tuple[list[Scene] | None, str | None]:
    """Strictly check an LLM's shot list for ``paragraph``: (scenes, None) when usable, else (None, why)."""
    from .enhancer import _MARKDOWN, _PREAMBLE, _REFUSAL, _TAG, _content_words, strip_reasoning

    text, why = strip_reasoning(raw or "", reasoning)
    if why:
        return None, why
    text = text.strip()
    if not text:
        return None, "the model returned nothing"
    if not finished:
        return None, "it was cut off at the token limit before the model finished"
    if _TAG.search(text):
        return None, f"it contains markup or reasoning tags ({_TAG.search(text).group(0)!r})"
    if _PREAMBLE.match(text):
        return None, f"it starts with chat preamble ({_PREAMBLE.match(text).group(0).strip()!r})"
    if _REFUSAL.search(text):
        return None, f"it talks about itself ({_REFUSAL.search(text).group(0)!r}) instead of shots"
    # we asked for one shot per line starting with its duration: a duration tag always starts a shot (some
    # tokenizers and models put the shots on one line)
    text = "\n".join(_NUMBERING.sub("", ln).strip() for ln in text.split("\n"))
    lines = [ln.strip() for ln in _SHOT_BREAK.sub("\n", text).split("\n") if ln.strip()]
    if any(_MARKDOWN.search(ln) for ln in lines):
        return None, "it is formatted as markdown (headers or bold), not shot lines"
    try:
        scenes = parse_script("\n".join(lines))
    except InvalidRequest as e:
        return None, f"its shot list does not parse: {e.message}"
    if len(scenes) > max_scenes:
        return None, f"it has {len(scenes)} shots; at most {max_scenes} were asked for"
    if len(scenes) < 2 and len(split_sentences(paragraph)) >= 2:
        return None, "it has a single shot for a story of several sentences"
    bodies = [engine.parse_hints(s.prompt)[0].lower() for s in scenes]
    if len(set(bodies)) < len(bodies):
        return None, "it repeats the same shot"
    for s, body in zip(scenes, bodies):
        if _words(body) < MIN_SCENE_WORDS:
            return None, f"shot {s.index + 1} is too short to describe anything ({body!r})"
        if re.search(r"(.{1,24}?)\1{5,}", body, re.S):
            return None, f"shot {s.index + 1} looks like garbage"
        if sum(1 for c in body if c.isalpha() or engine.is_cjk(c)) < 0.6 * len(body.replace(" ", "")):
            return None, f"shot {s.index + 1} is mostly symbols or numbers"
        if s.duration_s is None and s.frames is None:
            return None, f"shot {s.index + 1} has no duration"
        if s.duration_s is not None and not 0.5 <= s.duration_s <= 15:
            return None, f"shot {s.index + 1} lasts {s.duration_s:g} s (a shot should last 0.5 to 15 s)"
    want = list(dict.fromkeys(_content_words(paragraph)))
    if want:
        have = _content_words(" ".join(bodies))
        missing = [w for w in want if not any(h.startswith(w[:5]) for h in have)]
        if len(missing) > len(want) / 2:
            return None, f"it drops most of the story (missing: {', '.join(missing[:5])})"
    return scenes, None


def shot_list_from_paragraph(paragraph: str, enhancer: str | None = None, *, max_scenes: int = 8,
                             duration_s: float | None = None, stream=None, stop=None, hardware=None, settings=None,
                             max_new_tokens: int | None = None) -> ShotList:
    """One paragraph → scenes.

    With ``enhancer`` (an id such as ``qwen2.5-1.5b-instruct`` or a local folder) a local LLM writes a shot list in
    the script format; it is used only when :func:`validate_shot_list` accepts it. Otherwise, and without an
    enhancer, the paragraph is split into sentences (:func:`sentence_scenes`) and the result says why. A missing or
    too-large enhancer is an error (as for ``generate --enhance``), never a silent fallback; ``stop`` raises
    :class:`~localvideo.errors.Cancelled`.
    """
    fallback = sentence_scenes(paragraph, max_scenes=max_scenes, duration_s=duration_s)  # validates the input
    if enhancer is None:
        n = len(split_sentences(paragraph))
        how = ("one scene per sentence" if n == len(fallback) else
               f"{n} sentences made {len(fallback)} scenes (a sentence under {MIN_SCENE_WORDS} words joins its "
               f"neighbour; at most {max_scenes} scenes, grouped in order)")
        return ShotList(fallback, "sentences", notes=[f"{how} (no LLM asked)"])
    from . import enhancer as llm

    raw, finished, spec = llm.chat(build_shot_list_messages(paragraph, max_scenes), model=enhancer, stream=stream,
                                   stop=stop, hardware=hardware, settings=settings, max_new_tokens=max_new_tokens)
    scenes, why = validate_shot_list(raw, paragraph, max_scenes=max_scenes, reasoning=spec.reasoning,
                                     finished=finished)
    if scenes is not None:
        return ShotList(scenes, "llm", raw_output=raw, enhancer=spec.label, notes=[f"shot list by {spec.label}"])
    reason = (f"{spec.label}'s shot list was not used: {why}; the paragraph was split into sentences instead")
    log.info(reason)
    return ShotList(fallback, "sentences", reason_if_fallback=reason, raw_output=raw, enhancer=spec.label,
                    notes=[reason])
