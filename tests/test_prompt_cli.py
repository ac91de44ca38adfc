"""The prompt options of `localvideo generate`, through the real console entry point."""

from __future__ import annotations

import json

from conftest import run_cli

from localvideo.prompts import expand

FOX = "a red fox trots across fresh snow [dolly in] [golden hour]"


def test_show_prompt_with_dry_run_prints_the_expansion_and_the_plan_and_generates_nothing():
    r = run_cli("generate", FOX, "--show-prompt", "--dry-run", "--vram", "24")
    assert r.returncode == 0, r.stderr
    e = expand(FOX, "wan")
    assert "Prompt (expanded by the prompt engine, for wan)" in r.stdout and e.prompt in r.stdout
    assert e.negative_prompt in r.stdout and "camera from your hint: dolly in" in r.stdout
    assert "Plan (dry run, nothing generated)" in r.stdout


def test_no_expand_and_json_show_the_prompt_as_typed():
    r = run_cli("generate", FOX, "-m", "ltx-video-2b", "--no-expand", "--show-prompt", "--dry-run", "--vram", "24",
                "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["plan"]["prompt"] == FOX and out["prompt"]["source"] == "as-typed"
    r = run_cli("generate", FOX, "-m", "cogvideox-2b", "--show-prompt", "--dry-run", "--vram", "24", "--json")
    out = json.loads(r.stdout)
    assert out["plan"]["prompt"] == expand(FOX, "cogvideox").prompt and out["prompt"]["original"] == FOX
    assert out["prompt"]["hints"] == {"camera": ["dolly in"], "light": ["golden hour"]}


def test_enhance_without_the_model_names_the_pull_command():
    r = run_cli("generate", FOX, "--enhance", "--dry-run", "--vram", "24", "--json")
    assert r.returncode == 3
    err = json.loads(r.stdout)
    assert err["error"] == "model_not_installed" and err["command"] == "localvideo models pull qwen2.5-1.5b-instruct"
