"""The prompt engine: table tests per family, hints, weird input, determinism. Pure Python, no torch."""

from __future__ import annotations

import re

import pytest

from localvideo.catalog import LTX_NEGATIVE, WAN_NEGATIVE, all_models
from localvideo.errors import InvalidRequest
from localvideo.prompts.engine import (FAMILIES, estimate_tokens, expand, parse_hints, trim_to_tokens)

ALL = list(FAMILIES)
FOX = "a red fox trots across fresh snow"

# (family, input, must contain in order, must not contain)
TABLE = [
    ("wan", FOX, ["A red fox trots across fresh snow.", "unfolds smoothly", "The camera holds a steady medium shot",
                  "Natural, soft lighting", "Realistic, cinematic footage"], []),
    ("ltx", FOX, ["A red fox trots across fresh snow.", "The motion is smooth and continuous.",
                  "The camera holds a steady medium shot.", "Soft natural light.",
                  "The scene appears to be real-life footage."], []),
    ("cogvideox", FOX, ["A red fox trots across fresh snow.", "smooth and continuous", "steady medium shot",
                        "Soft natural lighting", "realistic video"], []),
    ("hunyuan", FOX, ["A red fox trots across fresh snow.", "unfolds smoothly", "steady medium shot",
                      "Natural, soft lighting", "cinematic footage"], []),
    ("mochi", FOX, ["A red fox trots across fresh snow.", "unfolds smoothly", "steady medium shot",
                    "Natural, soft lighting", "Photorealistic"], []),
    # hints replace the defaults, in chronological order: subject → motion → camera → light → style
    ("wan", f"{FOX} [dolly in] [golden hour] [anime]",
     ["A red fox trots across fresh snow.", "unfolds smoothly", "The camera slowly dollies in toward the subject.",
      "Lit by warm golden-hour sunlight", "2D hand-drawn anime style"], ["steady medium shot", "Realistic", "["]),
    ("ltx", f"[orbit, neon] {FOX}",
     ["A red fox", "The camera orbits slowly around the subject.", "Lit by vivid neon light",
      "The scene appears to be real-life footage."], ["steady medium shot", "Soft natural light", "["]),
    ("cogvideox", f"{FOX} [close-up, slow motion]",
     ["A red fox", "Filmed as a close-up in slow motion.", "Soft natural lighting"], ["steady medium shot", "["]),
    ("hunyuan", f"{FOX} [camera: slow spiral around the fox] [light: one red lantern]",
     ["A red fox", "Camera movement: slow spiral around the fox.", "Lit by one red lantern."], ["steady medium"]),
    ("mochi", f"{FOX} [Tracking-Shot] [film noir] [mood: uneasy]",
     ["A red fox", "The camera tracks alongside the subject", "The mood is uneasy.", "film noir"], ["Photorealistic"]),
    # the user's own words about camera / light / style suppress the defaults
    ("wan", "drone shot of a red fox in the snow at sunset, anime",
     ["Drone shot of a red fox in the snow at sunset, anime."], ["steady medium shot", "Natural, soft lighting",
                                                                 "Realistic, cinematic"]),
    ("ltx", "a cat sleeps in the dark, watercolor illustration", ["A cat sleeps"],
     ["Soft natural light", "real-life footage"]),
    # unknown brackets pass through untouched
    ("wan", "[Verse 1] a singer on stage [sic] [dolly in]", ["[Verse 1] a singer on stage [sic].", "dollies in"], []),
    ("cogvideox", "a fox [dolly in, banana]", ["A fox [dolly in, banana]."], ["dollies in"]),
    ("ltx", "a fox [] [ ]", ["A fox [] [ ]."], []),
]


def _in_order(text: str, parts: list[str]) -> bool:
    pos = 0
    for p in parts:
        i = text.find(p, pos)
        if i < 0:
            return False
        pos = i + len(p)
    return True


@pytest.mark.parametrize("family,prompt,present,absent", TABLE)
def test_expansion_table(family, prompt, present, absent):
    e = expand(prompt, family)
    assert _in_order(e.prompt, present), e.prompt
    for a in absent:
        assert a not in e.prompt, (a, e.prompt)
    assert e.family == family and e.original == prompt and e.expanded
    assert e.tokens == estimate_tokens(e.prompt) <= FAMILIES[family].token_limit
    assert e.changes and all(isinstance(c, str) and c for c in e.changes)


@pytest.mark.parametrize("family", ALL)
def test_every_family_is_deterministic_and_longer_than_the_input(family):
    a, b = expand(FOX, family), expand(FOX, family)
    assert a == b
    assert len(a.prompt.split()) >= 4 * len(FOX.split())


def test_catalog_families_all_have_an_engine_entry():
    assert {m.family for m in all_models()} <= set(FAMILIES)


@pytest.mark.parametrize("family,negative", [("wan", WAN_NEGATIVE), ("ltx", LTX_NEGATIVE), ("cogvideox", ""),
                                             ("hunyuan", ""), ("mochi", "")])
def test_family_negative_prompts(family, negative):
    e = expand(FOX, family)
    assert e.negative_prompt == negative
    assert any(c.startswith("negative prompt:") for c in e.changes)


def test_stylized_hint_drops_the_anti_style_terms_from_wans_negative():
    e = expand(f"{FOX} [anime]", "wan")
    terms = [t.strip() for t in e.negative_prompt.split(",")]
    assert "style" not in terms and "painting" not in terms and "artwork" not in terms
    assert "worst quality" in terms and any("fight the requested anime" in c for c in e.changes)
    assert expand(f"{FOX} [cinematic]", "wan").negative_prompt == WAN_NEGATIVE


@pytest.mark.parametrize("family", ALL)
@pytest.mark.parametrize("prompt", ["", "   ", "\n\t"])
def test_empty_prompt_is_an_invalid_request(family, prompt):
    with pytest.raises(InvalidRequest, match="empty"):
        expand(prompt, family)


def test_unknown_family_is_an_invalid_request():
    with pytest.raises(InvalidRequest, match="family"):
        expand(FOX, "sora")


@pytest.mark.parametrize("family", ALL)
def test_only_hints_builds_a_scene_from_the_hints_with_a_note(family):
    e = expand("[dolly in] [golden hour]", family)
    assert "[" not in e.prompt and "dollies in" in e.prompt and "golden-hour" in e.prompt
    assert e.hints == {"camera": ["dolly in"], "light": ["golden hour"]}
    assert any("only hints" in c for c in e.changes)


@pytest.mark.parametrize("family", ALL)
def test_very_long_prompt_is_not_expanded_but_trimmed_at_a_word_boundary(family):
    words = [f"Word{i}" for i in range(2000)]
    prompt = " ".join(words)
    e = expand(prompt, family)
    limit = FAMILIES[family].token_limit
    assert e.trimmed and estimate_tokens(e.prompt) <= limit
    assert any("not expanded" in c for c in e.changes) and any("trimmed" in c for c in e.changes)
    kept = e.prompt.rstrip(".").split()
    assert kept == words[:len(kept)]  # whole words, from the start, nothing added
    assert len(kept) > limit // 4  # and not trimmed away to nothing
    assert "camera" not in e.prompt and "unfolds" not in e.prompt


def test_long_prompt_keeps_explicit_hints_within_the_limit():
    prompt = "a fox runs. " * 200 + "[orbit]"
    e = expand(prompt, "cogvideox")
    assert e.prompt.endswith("The camera orbits slowly around the subject.")
    assert estimate_tokens(e.prompt) <= 226
    assert e.prompt.startswith("A fox runs. a fox runs.")


def test_trim_prefers_a_sentence_end_near_the_limit():
    text = ("One two three four five six seven. " * 40).strip()
    out, cut = trim_to_tokens(text, 60)
    assert cut and out.endswith("seven.") and estimate_tokens(out) <= 60


@pytest.mark.parametrize("family", ALL)
def test_non_ascii_is_preserved_exactly(family):
    for prompt in ("一只红狐狸在雪地里奔跑", "Лиса бежит по снегу", "Ein Café in Zürich, Crème brûlée",
                   "🦊 in ❄️"):
        e = expand(prompt + " [orbit]", family)
        assert e.prompt.startswith(prompt), e.prompt
        assert "orbits" in e.prompt


def test_cjk_long_prompt_is_cut_between_characters():
    prompt = "狐狸在雪地里奔跑" * 100  # no spaces at all
    e = expand(prompt, "ltx")
    assert e.trimmed and estimate_tokens(e.prompt) <= 128
    body = e.prompt.rstrip("。")
    assert prompt.startswith(body) and len(body) > 60


@pytest.mark.parametrize("family", ALL)
def test_expansion_off_uses_the_prompt_as_typed(family):
    typed = "  a fox [dolly in] [golden hour]  "
    e = expand(typed, family, expand=False)
    assert e.prompt == typed.strip() and not e.expanded and e.hints == {}
    assert e.negative_prompt == FAMILIES[family].negative_prompt
    assert "as typed" in e.changes[0]


def test_parse_hints_syntax():
    text, hints = parse_hints("A fox [Dolly-In,  GOLDEN hour] runs [camera: spiral up] [speed: timelapse] [x: y]")
    assert text == "A fox runs [x: y]"
    assert hints == {"camera": ["dolly in", "spiral up"], "light": ["golden hour"], "speed": ["timelapse"]}
    text, hints = parse_hints("[close up][close-up] cat")
    assert text == "cat" and hints == {"shot": ["close up"]}


def test_estimate_is_generous_for_ordinary_english():
    # sentencepiece T5 averages about 1.3 tokens per English word; the estimate must not undercount
    sentence = "The camera slowly dollies in toward a red fox trotting across fresh snow at dawn."
    assert estimate_tokens(sentence) >= 1.3 * len(sentence.split())
    assert re.fullmatch(r"\d+", str(estimate_tokens("")))


def test_the_paragraph_fallback_says_how_sentences_became_scenes():
    from localvideo.prompts.scenes import shot_list_from_paragraph

    one_each = shot_list_from_paragraph("A fox wakes in its den. It trots across the snowy field. The sun rises.")
    assert len(one_each.scenes) == 3 and one_each.notes == ["one scene per sentence (no LLM asked)"]
    joined = shot_list_from_paragraph("A fox wakes in its den at dawn. It stretches. Then it trots across the field. "
                                      "Snow falls.", max_scenes=8)
    assert len(joined.scenes) == 2
    assert joined.notes == ["4 sentences made 2 scenes (a sentence under 3 words joins its neighbour; at most 8 "
                            "scenes, grouped in order) (no LLM asked)"]
