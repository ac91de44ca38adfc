"""The prompt engine and enhancer inside generation: what the model reads, and what the metadata records."""

from __future__ import annotations

import json

import pytest

import localvideo
from _helpers import torch_threads
from localvideo.generation import prepare
from localvideo.hardware import Hardware
from localvideo.prompts import expand, prepare_prompt
from localvideo.request import GenerationRequest
from localvideo.runtime.cache import PipelineCache

CPU = Hardware.assumed(None, ram_gb=16)
GPU = Hardware.assumed(80)  # for planning real models only
PROMPT = "a paper boat drifts down a rain-filled gutter [close-up] [overcast]"


@pytest.fixture(scope="module")
def cache():
    return PipelineCache(budget_bytes=8 * 10**9)


def test_plan_reads_the_expanded_prompt_and_the_family_negative():
    spec, plan = prepare(GenerationRequest(prompt=PROMPT, model="ltx-video-2b", seed=1), GPU)
    e = expand(PROMPT, "ltx")
    assert plan.prompt == e.prompt and "[" not in plan.prompt and plan.negative_prompt == e.negative_prompt


def test_plan_uses_the_prompt_as_typed_when_expansion_is_off_and_a_given_negative_always_wins():
    _, plan = prepare(GenerationRequest(prompt=PROMPT, model="ltx-video-2b", seed=1, expand_prompt=False), GPU)
    assert plan.prompt == PROMPT
    _, plan = prepare(GenerationRequest(prompt=PROMPT, model="wan2.1-t2v-1.3b", seed=1, negative_prompt="rain"), GPU)
    assert plan.negative_prompt == "rain" and plan.prompt == expand(PROMPT, "wan").prompt


def test_prepare_prompt_is_idempotent():
    req = GenerationRequest(prompt=PROMPT, model="cogvideox-2b")
    once, info = prepare_prompt(req, "cogvideox")
    twice, info2 = prepare_prompt(once, "cogvideox")
    assert twice.prompt == once.prompt == info.prompt and info.source == "engine" and info2.source == "as-typed"
    assert info.hints == {"shot": ["close up"], "light": ["overcast"]} and info.original == PROMPT


def test_metadata_records_original_expanded_source_and_hints(tmp_path, cache):
    r = localvideo.generate(PROMPT, model="tiny-wan", seed=3, steps=1, output=str(tmp_path / "e.mp4"), hardware=CPU,
                            cache=cache)
    meta = json.loads(r.sidecar.read_text())
    assert meta["original_prompt"] == PROMPT and meta["prompt"] == expand(PROMPT, "wan").prompt
    assert meta["prompt_source"] == "engine" and meta["prompt_hints"] == {"shot": ["close up"], "light": ["overcast"]}
    assert meta["prompt_changes"] and meta["prompt_enhancer"] is None

    r2 = localvideo.generate(PROMPT, model="tiny-wan", seed=3, steps=1, output=str(tmp_path / "t.mp4"),
                             hardware=CPU, cache=cache, expand_prompt=False)
    meta2 = json.loads(r2.sidecar.read_text())
    assert meta2["prompt"] == meta2["original_prompt"] == PROMPT and meta2["prompt_source"] == "as-typed"


def test_enhancer_fallback_is_recorded_in_the_metadata(tmp_path, cache):
    with torch_threads(1):
        r = localvideo.generate(PROMPT, model="tiny-ltx", seed=3, steps=1, output=str(tmp_path / "l.mp4"),
                                hardware=CPU, cache=cache, enhance="tiny-lm")
    meta = json.loads(r.sidecar.read_text())
    assert meta["prompt_source"] == "engine" and meta["prompt_enhancer"].startswith("tiny-lm (RANDOM")
    assert "not used" in meta["prompt_fallback_reason"] and meta["prompt"] == expand(PROMPT, "ltx").prompt
