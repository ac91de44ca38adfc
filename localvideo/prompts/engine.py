"""The prompt engine: a short prompt in, the kind of prompt each model family was trained on out. No model, no
randomness: the same input always gives the same output.

What it does, per family (see :data:`FAMILIES`):

* **Wan, HunyuanVideo, Mochi** were trained on long, concrete captions. The engine keeps your description as the
  first sentence and adds, in the order a caption describes a shot, how the motion unfolds, the camera (shot size
  and movement), the light and the look — each only where you said nothing about it yourself.
* **LTX-Video** wants the same chronological detail but reads only 128 text tokens (the 2B pipeline's
  ``max_sequence_length``), so its additions are shorter and end the way its training captions do
  ("The scene appears to be real-life footage.").
* **CogVideoX** reads at most 226 tokens: detailed, but trimmed at the limit by whole words (at a sentence end
  where one is close), never mid-word.

It also picks the family's negative prompt (Wan's official list in English, LTX's recommended one; CogVideoX,
HunyuanVideo and Mochi are run without one by their authors, so the engine adds none).

Inline hints
------------
Hints go in square brackets anywhere in the prompt and are removed from the text the model sees:

* a known phrase: ``[dolly in]``, ``[golden hour]``, ``[anime]``, ``[close-up]``, ``[slow motion]`` — several may
  share one bracket, separated by commas: ``[orbit, neon, cyberpunk]``;
* a keyed free phrase: ``[camera: slow spiral around the statue]``, ``[light: one red lamp]``,
  ``[style: paper cut-out]``, ``[shot: low angle]``, ``[mood: uneasy]``, ``[speed: slow motion]``.
  Keys: camera, shot, light / lighting, style, mood, speed.

Matching ignores case, hyphens and extra spaces (``[Close-Up]`` = ``[close up]``). A bracket that is not entirely
made of known hints (``[sic]``, ``[Verse 1]``, ``[1]``) is left in the text untouched. Run
``localvideo generate "..." --show-prompt --dry-run`` to see the result, or ``--no-expand`` to send the prompt as
typed. The vocabulary is in :data:`CAMERA`, :data:`SHOT`, :data:`LIGHT`, :data:`STYLE`, :data:`SPEED`, :data:`MOOD`.

Edge cases: an empty prompt is an :class:`~localvideo.errors.InvalidRequest`; a prompt of hints only becomes a
scene built from the hints (with a note asking for a subject); a prompt already near the family's token limit is
not expanded, only trimmed to the limit (with a note); non-ASCII text is kept exactly as typed.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import asdict, dataclass, field

from ..catalog import LTX_NEGATIVE, WAN_NEGATIVE
from ..errors import InvalidRequest

# ---------------------------------------------------------------------------------------------------- vocabulary

# The camera's movement, as a verb phrase after "The camera ...".
CAMERA: dict[str, str] = {
    "static": "stays locked off on a tripod, perfectly still",
    "locked off": "stays locked off on a tripod, perfectly still",
    "tripod": "stays locked off on a tripod, perfectly still",
    "dolly in": "slowly dollies in toward the subject",
    "push in": "slowly pushes in toward the subject",
    "dolly out": "slowly dollies back, revealing more of the surroundings",
    "pull back": "slowly pulls back, revealing more of the surroundings",
    "pull out": "slowly pulls back, revealing more of the surroundings",
    "pan left": "pans slowly to the left",
    "pan right": "pans slowly to the right",
    "tilt up": "tilts slowly upward",
    "tilt down": "tilts slowly downward",
    "orbit": "orbits slowly around the subject",
    "arc shot": "arcs slowly around the subject",
    "tracking": "tracks alongside the subject, following its movement",
    "tracking shot": "tracks alongside the subject, following its movement",
    "follow": "follows the subject from behind",
    "crane up": "cranes smoothly upward, rising above the scene",
    "crane down": "cranes smoothly downward from above",
    "zoom in": "zooms in slowly on the subject",
    "zoom out": "zooms out slowly from the subject",
    "dolly zoom": "performs a dolly zoom, the background stretching while the subject keeps its size",
    "handheld": "is handheld, with a slight natural shake",
    "aerial": "glides high above in a smooth aerial shot",
    "drone": "glides high above in a smooth aerial drone shot",
    "drone shot": "glides high above in a smooth aerial drone shot",
    "fpv": "races through the scene in a fast first-person drone flight",
}

# Shot size and angle, as a noun phrase.
SHOT: dict[str, str] = {
    "extreme close up": "an extreme close-up",
    "close up": "a close-up",
    "closeup": "a close-up",
    "medium shot": "a medium shot",
    "medium close up": "a medium close-up",
    "wide shot": "a wide shot",
    "wide": "a wide shot",
    "establishing shot": "a wide establishing shot",
    "full shot": "a full shot",
    "macro": "a macro shot",
    "low angle": "a low-angle shot",
    "high angle": "a high-angle shot",
    "top down": "a top-down shot",
    "bird's eye": "a bird's-eye view",
    "birds eye": "a bird's-eye view",
    "over the shoulder": "an over-the-shoulder shot",
    "pov": "a point-of-view shot",
    "first person": "a first-person point-of-view shot",
    "dutch angle": "a tilted Dutch-angle shot",
}

# Light, as a noun phrase.
LIGHT: dict[str, str] = {
    "golden hour": "warm golden-hour sunlight, low in the sky, casting long soft shadows",
    "blue hour": "the cool, even blue light of dusk just after sunset",
    "sunset": "warm orange sunset light with long shadows",
    "sunrise": "soft pink and gold sunrise light",
    "dawn": "soft, cool dawn light",
    "midday": "bright midday sun with crisp, short shadows",
    "harsh sun": "harsh overhead sunlight with hard shadows",
    "overcast": "soft, diffuse overcast daylight",
    "night": "dim night-time light from scattered sources",
    "moonlight": "pale blue moonlight",
    "neon": "vivid neon light in magenta and cyan, reflected on wet surfaces",
    "candlelight": "flickering warm candlelight",
    "firelight": "flickering warm firelight",
    "studio lighting": "clean, even studio lighting",
    "softbox": "clean, even studio lighting",
    "backlit": "strong backlight that rims the subject with light",
    "rim light": "a bright rim light outlining the subject",
    "volumetric": "volumetric light, visible rays cutting through haze",
    "god rays": "volumetric light, visible rays cutting through haze",
    "low key": "low-key lighting, deep shadows and a single strong source",
    "high key": "bright high-key lighting with few shadows",
    "soft light": "soft, flattering diffused light",
    "fluorescent": "cold, flat fluorescent light",
}

# Look / medium, as a sentence fragment. ``True`` in STYLIZED marks looks that are not photographic.
STYLE: dict[str, str] = {
    "cinematic": "cinematic film look, shallow depth of field, rich color grading",
    "photorealistic": "photorealistic, true-to-life detail and textures",
    "realistic": "photorealistic, true-to-life detail and textures",
    "documentary": "natural documentary footage, unstaged and observational",
    "anime": "2D hand-drawn anime style, clean line art and cel shading",
    "cartoon": "colorful 2D cartoon style with bold outlines",
    "3d render": "stylized 3D animation render, soft global illumination",
    "3d": "stylized 3D animation render, soft global illumination",
    "claymation": "claymation stop-motion, handmade clay textures",
    "stop motion": "stop-motion animation, handmade textures and slightly stepped motion",
    "watercolor": "watercolor painting, soft bleeding pigments on textured paper",
    "oil painting": "oil painting, visible thick brush strokes",
    "pixel art": "retro pixel-art animation",
    "sketch": "pencil sketch animation on white paper",
    "film noir": "black-and-white film noir, hard shadows and high contrast",
    "noir": "black-and-white film noir, hard shadows and high contrast",
    "black and white": "black-and-white footage",
    "vintage": "vintage film footage with grain and faded colors",
    "16mm": "16mm film footage with visible grain",
    "super 8": "grainy Super 8 home-movie footage",
    "vhs": "1990s VHS camcorder footage, scan lines and color bleed",
    "cyberpunk": "cyberpunk aesthetic, dense futuristic city details",
    "low poly": "low-poly 3D style with flat-shaded facets",
}
STYLIZED = {"anime", "cartoon", "3d render", "3d", "claymation", "stop motion", "watercolor", "oil painting",
            "pixel art", "sketch", "low poly"}

SPEED: dict[str, str] = {
    "slow motion": "in slow motion",
    "slowmo": "in slow motion",
    "slow mo": "in slow motion",
    "timelapse": "as a time-lapse",
    "time lapse": "as a time-lapse",
    "hyperlapse": "as a moving hyperlapse",
    "real time": "in real time",
}

MOOD: dict[str, str] = {
    "dreamy": "dreamy", "moody": "moody", "serene": "serene", "tense": "tense", "cheerful": "cheerful",
    "melancholic": "melancholic", "eerie": "eerie", "epic": "epic", "romantic": "romantic", "playful": "playful",
}

VOCAB: dict[str, dict[str, str]] = {"camera": CAMERA, "shot": SHOT, "light": LIGHT, "style": STYLE, "speed": SPEED,
                                    "mood": MOOD}
KEYS = {"camera": "camera", "shot": "shot", "light": "light", "lighting": "light", "style": "style",
        "mood": "mood", "speed": "speed"}

# Words that show the user already described an aspect in their own text (then the engine adds no default).
_MENTIONS: dict[str, set[str]] = {
    "camera": {"camera", "pan", "pans", "panning", "dolly", "dollies", "zoom", "zooms", "tracking", "tracks",
               "drone", "aerial", "orbit", "orbits", "handheld", "tilt", "tilts", "crane", "fpv", "pov"},
    "shot": {"close-up", "closeup", "close", "shot", "macro", "angle", "wide-angle", "pov", "view"},
    "light": {"light", "lights", "lit", "lighting", "sunlight", "sunlit", "sunset", "sunrise", "dawn", "dusk",
              "night", "moon", "moonlight", "neon", "shadow", "shadows", "glow", "glows", "glowing", "candle",
              "candles", "lamp", "lamps", "overcast", "sunny", "golden", "dark", "darkness", "backlit", "twilight"},
    "style": {"anime", "cartoon", "style", "painting", "painted", "watercolor", "cinematic", "realistic",
              "photorealistic", "render", "rendered", "3d", "pixel", "noir", "vintage", "film", "footage",
              "documentary", "claymation", "illustration", "animated", "animation", "sketch", "vhs"},
}

# ------------------------------------------------------------------------------------------------------ families


@dataclass(frozen=True)
class Family:
    name: str
    token_limit: int  # text-encoder tokens the pipeline reads
    negative_prompt: str
    negative_note: str
    long_form: bool  # long, chronological prose (else compact)
    default_camera: str
    default_light: str
    default_style: str
    motion: str  # how the motion unfolds (Wan/LTX reward an explicit, continuous description)
    closing: str = ""  # a final sentence in the style of the family's training captions
    expand_until: float = 0.6  # a prompt already using this share of the limit is not expanded further


FAMILIES: dict[str, Family] = {
    "wan": Family(
        "wan", 512, WAN_NEGATIVE, "Wan's recommended negative prompt (the official list, in English)", True,
        default_camera="The camera holds a steady medium shot with subtle, natural movement.",
        default_light="Natural, soft lighting with realistic shadows and balanced colors.",
        default_style="Realistic, cinematic footage, highly detailed, sharp focus.",
        motion="The action unfolds smoothly and continuously from the first frame to the last, with natural, "
               "physically plausible motion.",
    ),
    "ltx": Family(
        "ltx", 128, LTX_NEGATIVE, "LTX-Video's recommended negative prompt", False,
        default_camera="The camera holds a steady medium shot.",
        default_light="Soft natural light.",
        default_style="",
        motion="The motion is smooth and continuous.",
        closing="The scene appears to be real-life footage.",
        expand_until=0.5,
    ),
    "cogvideox": Family(
        "cogvideox", 226, "", "none: CogVideoX's authors run it without a negative prompt", True,
        default_camera="The camera holds a steady medium shot, keeping the subject in clear view.",
        default_light="Soft natural lighting with balanced colors.",
        default_style="High-quality, realistic video with fine detail.",
        motion="The movement is smooth and continuous throughout the clip.",
    ),
    "hunyuan": Family(
        "hunyuan", 256, "", "none: HunyuanVideo is guidance-distilled and runs without a negative prompt", True,
        default_camera="The camera holds a steady medium shot with subtle, natural movement.",
        default_light="Natural, soft lighting with realistic shadows.",
        default_style="Realistic, cinematic footage, highly detailed.",
        motion="The action unfolds smoothly and continuously, with natural motion.",
    ),
    "mochi": Family(
        "mochi", 256, "", "none: Mochi's reference settings use an empty negative prompt", True,
        default_camera="The camera holds a steady medium shot with subtle, natural movement.",
        default_light="Natural, soft lighting with realistic shadows.",
        default_style="Photorealistic, highly detailed footage.",
        motion="The action unfolds smoothly and continuously, with natural motion.",
    ),
}

# Terms of Wan's negative list that fight a deliberately stylized look (it was written for photoreal video).
_ANTI_STYLE_TERMS = ("style", "artwork", "painting")


def family_info(family: str) -> Family:
    try:
        return FAMILIES[family]
    except KeyError:
        raise InvalidRequest(f"Unknown model family '{family}'.",
                             hint=f"Use one of: {', '.join(FAMILIES)}.") from None


# ------------------------------------------------------------------------------------------------------- tokens

_CJK_RANGES = ((0x3040, 0x30FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0xAC00, 0xD7AF),
               (0x20000, 0x2FA1F))
_END_PUNCT = ".!?。！？…\"'”’)"


def is_cjk(ch: str) -> bool:
    o = ord(ch)
    return any(a <= o <= b for a, b in _CJK_RANGES)


def _units(text: str) -> list[str]:
    """Cut points that are never inside a word: whitespace-separated words, and single CJK characters (which
    stand alone in text without spaces)."""
    out: list[str] = []
    for word in text.split():
        buf = ""
        for ch in word:
            if is_cjk(ch):
                if buf:
                    out.append(buf)
                    buf = ""
                out.append(ch)
            else:
                buf += ch
        if buf:
            out.append(buf)
    return out


def estimate_tokens(text: str) -> int:
    """A deliberately generous estimate of T5/UMT5/LLaMA sentencepiece tokens (no tokenizer needed): one per CJK
    character, and for other words one per started 5 characters plus one for trailing punctuation."""
    n = 0
    for unit in _units(text):
        if len(unit) == 1 and is_cjk(unit):
            n += 1
            continue
        core = unit.rstrip(".,;:!?\"')]}")
        n += max(1, -(-len(core) // 5)) + (1 if len(core) != len(unit) else 0)
    return n + 1  # end-of-sequence token


def _join_units(text: str, count: int) -> str:
    """The first ``count`` cut units of ``text``, with the original spacing."""
    if count <= 0:
        return ""
    seen = 0
    i = 0
    n = len(text)
    while i < n:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            break
        if is_cjk(text[i]):
            i += 1
        else:
            while i < n and not text[i].isspace() and not is_cjk(text[i]):
                i += 1
        seen += 1
        if seen == count:
            return text[:i]
    return text


def trim_to_tokens(text: str, limit: int) -> tuple[str, bool]:
    """Cut ``text`` so that :func:`estimate_tokens` ≤ ``limit``: at a sentence end if one lies in the last quarter
    of what fits, else at a word boundary. Returns (text, trimmed?)."""
    if estimate_tokens(text) <= limit:
        return text, False
    units = _units(text)
    lo, hi = 0, len(units)
    while lo < hi:  # the most units that fit
        mid = (lo + hi + 1) // 2
        if estimate_tokens(_join_units(text, mid)) <= limit:
            lo = mid
        else:
            hi = mid - 1
    cut = _join_units(text, lo).rstrip()
    for k in range(lo, max(0, int(lo * 0.75)) - 1, -1):
        candidate = _join_units(text, k).rstrip()
        if candidate and candidate[-1] in ".!?。！？":
            return candidate, True
    return cut.rstrip(",;:-–— "), True


# -------------------------------------------------------------------------------------------------------- hints

_BRACKET = re.compile(r"\[([^\[\]]*)\]")


def _norm(s: str) -> str:
    s = unicodedata.normalize("NFKC", s).lower().replace("-", " ").replace("_", " ")
    return re.sub(r"\s+", " ", s).strip()


def _lookup(phrase: str) -> tuple[str, str] | None:
    """(kind, canonical name) of a known hint phrase."""
    key = _norm(phrase)
    for kind, table in VOCAB.items():
        if key in table:
            return kind, key
    return None


def parse_hints(prompt: str) -> tuple[str, dict[str, list[str]]]:
    """Split ``prompt`` into (text without recognised hints, hints by kind). Unknown brackets stay in the text.

    Hint values are canonical vocabulary names (``"dolly in"``) or, for keyed hints, the free text as typed.
    """
    hints: dict[str, list[str]] = {}

    def take(m: re.Match) -> str:
        inner = m.group(1).strip()
        found: list[tuple[str, str]] = []
        keyed = re.match(r"^\s*([A-Za-z]+)\s*:\s*(.+)$", inner, flags=re.S)
        if keyed and keyed.group(1).lower() in KEYS:
            kind = KEYS[keyed.group(1).lower()]
            value = keyed.group(2).strip()
            known = VOCAB[kind].get(_norm(value))
            found.append((kind, _norm(value) if known else value))
        else:
            parts = [p for p in inner.split(",") if p.strip()]
            for part in parts:
                hit = _lookup(part)
                if hit is None:
                    return m.group(0)  # not entirely hints: leave the bracket as typed
                found.append(hit)
            if not found:
                return m.group(0)
        for kind, value in found:
            bucket = hints.setdefault(kind, [])
            if value not in bucket:
                bucket.append(value)
        return " "

    text = _BRACKET.sub(take, prompt)
    text = re.sub(r"[ \t]+", " ", text)
    text = re.sub(r"\s+([,.;:!?])", r"\1", text)
    return text.strip(" \t\n,;"), hints


def _mentioned(text: str) -> set[str]:
    words = set(re.findall(r"[a-z0-9'-]+", text.lower()))
    out = {aspect for aspect, vocab in _MENTIONS.items() if words & vocab}
    low = text.lower()
    for aspect, table in (("camera", CAMERA), ("shot", SHOT), ("light", LIGHT), ("style", STYLE)):
        if any(re.search(rf"(?<![a-z]){re.escape(k)}(?![a-z])", low) for k in table if " " in k):
            out.add(aspect)
    return out


# ------------------------------------------------------------------------------------------------------- result


@dataclass(frozen=True)
class ExpandedPrompt:
    prompt: str  # what the model will read
    negative_prompt: str  # the family's negative prompt ("" when the family uses none)
    original: str  # as typed
    hints: dict[str, list[str]] = field(default_factory=dict)
    changes: list[str] = field(default_factory=list)  # what the engine did, one sentence each
    family: str = ""
    expanded: bool = True  # False: sent as typed (expansion off)
    trimmed: bool = False
    tokens: int = 0  # estimated text-encoder tokens of ``prompt``
    token_limit: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def _sentence(text: str) -> str:
    text = text.strip()
    if not text:
        return text
    if text[0].isalpha() and text[0].islower() and text[0].isascii():
        text = text[0].upper() + text[1:]
    if text[-1] not in _END_PUNCT:
        text += "。" if is_cjk(text[-1]) else "."
    return text


def _and(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _phrase(kind: str, value: str) -> str:
    return VOCAB[kind].get(value, value)


def expand(prompt: str, family: str, *, expand: bool = True) -> ExpandedPrompt:
    """Turn ``prompt`` into the style ``family`` was trained on (see the module docstring)."""
    fam = family_info(family)
    original = prompt if isinstance(prompt, str) else ""
    if not original.strip():
        raise InvalidRequest("The prompt is empty: describe the video you want.",
                             hint='For example: localvideo generate "a red fox runs across fresh snow [golden hour]"')
    if not expand:
        return ExpandedPrompt(prompt=original.strip(), negative_prompt=fam.negative_prompt, original=original,
                              hints={}, changes=["expansion off: the prompt is used as typed"], family=family,
                              expanded=False, tokens=estimate_tokens(original), token_limit=fam.token_limit)

    text, hints = parse_hints(original)
    changes: list[str] = []
    for kind, values in hints.items():
        changes.append(f"{kind} from your hint{'s' if len(values) > 1 else ''}: {', '.join(values)}")
    limit = fam.token_limit - 1  # headroom for the estimate's rounding
    mentioned = _mentioned(text)

    # the sentences the hints ask for (kept even when a long prompt is not expanded)
    said: dict[str, str] = {}
    known = {kind: [v for v in values if v in VOCAB[kind]] for kind, values in hints.items()}
    free = {kind: [v for v in values if v not in VOCAB[kind]] for kind, values in hints.items()}
    if "shot" in hints or "speed" in hints:
        shot = _and([_phrase("shot", v) for v in known.get("shot", [])])
        speed = " ".join(_phrase("speed", v) for v in known.get("speed", []))
        lead = f"Filmed as {shot}" if shot else ("Filmed" if speed else "")
        pieces = [_sentence(" ".join(x for x in (lead, speed) if x))] if lead else []
        pieces += [_sentence(f"Shot: {v}") for v in free.get("shot", [])]
        pieces += [_sentence(f"Pacing: {v}") for v in free.get("speed", [])]
        said["shot"] = " ".join(pieces)
    if "camera" in hints:
        moves = [_phrase("camera", v) for v in known.get("camera", [])]
        pieces = [_sentence("The camera " + _and(moves))] if moves else []
        pieces += [_sentence(f"Camera movement: {v}") for v in free.get("camera", [])]
        said["camera"] = " ".join(pieces)
    if "light" in hints:
        said["light"] = _sentence("Lit by " + _and([_phrase("light", v) for v in known.get("light", [])] +
                                                   free.get("light", [])))
    if "mood" in hints:
        said["mood"] = _sentence("The mood is " + _and(hints["mood"]))
    if "style" in hints:
        said["style"] = " ".join(_sentence(_phrase("style", v)) for v in hints["style"])
    order = ("shot", "camera", "light", "mood", "style")

    core = _sentence(text) if text else ""
    if not core:
        core = "A cinematic scene." if "style" not in hints else "A scene."
        changes.append("the prompt had only hints and no subject, so the scene is built from the hints alone; "
                       "describe what the video shows for better results")
    core_tokens = estimate_tokens(core)
    long_input = core_tokens >= fam.expand_until * fam.token_limit
    trimmed = False

    if long_input:
        changes.append(f"not expanded: the prompt is already long (≈{core_tokens} of {fam.token_limit} tokens)")
        kept = [said[k] for k in order if k in said]
        budget = max(8, limit - (estimate_tokens(" ".join(kept)) if kept else 0))
        core, trimmed = trim_to_tokens(core, budget)
        parts = [_sentence(core), *kept]
    else:
        parts = [core]
        if "speed" not in hints:
            parts.append(fam.motion)
            changes.append("added how the motion unfolds")
        if "shot" in said:
            parts.append(said["shot"])
        if "camera" in said:
            parts.append(said["camera"])
        elif "shot" not in said and not mentioned & {"camera", "shot"}:
            parts.append(fam.default_camera)
            changes.append("added a default camera (say [dolly in], [orbit], [close-up], ... to choose)")
        if "light" in said:
            parts.append(said["light"])
        elif "light" not in mentioned and fam.default_light:
            parts.append(fam.default_light)
            changes.append("added default lighting (say [golden hour], [neon], [overcast], ... to choose)")
        if "mood" in said:
            parts.append(said["mood"])
        if "style" in said:
            parts.append(said["style"])
        elif "style" not in mentioned and fam.default_style:
            parts.append(fam.default_style)
            changes.append("added a default look (say [anime], [cinematic], [documentary], ... to choose)")
        if fam.closing and "style" not in said and "style" not in mentioned:
            parts.append(fam.closing)
    prompt_out = " ".join(p for p in parts if p)
    prompt_out, cut = trim_to_tokens(prompt_out, limit)
    if cut:
        prompt_out = _sentence(prompt_out)
    if trimmed or cut:
        changes.append(f"trimmed to fit {fam.name}'s {fam.token_limit}-token text limit (whole words kept)")

    negative = fam.negative_prompt
    stylized = [v for v in hints.get("style", []) if v in STYLIZED]
    if negative and stylized and family == "wan":
        terms = [t.strip() for t in negative.split(",")]
        negative = ", ".join(t for t in terms if t not in _ANTI_STYLE_TERMS)
        changes.append(f"dropped {', '.join(_ANTI_STYLE_TERMS)} from the negative prompt: they fight the "
                       f"requested {', '.join(stylized)} look")
    changes.append(f"negative prompt: {fam.negative_note}")
    return ExpandedPrompt(prompt=prompt_out, negative_prompt=negative, original=original, hints=hints,
                          changes=changes, family=family, expanded=True, trimmed=trimmed or cut,
                          tokens=estimate_tokens(prompt_out), token_limit=fam.token_limit)
