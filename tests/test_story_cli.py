"""`localvideo story` on the command line: --dry-run refuses exactly what the real run refuses and shows the story
as it will be made; the real run plans every scene on this machine before generating any."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image

from conftest import run_cli

SCRIPT = "[1s] wide shot: a fox wakes\n[1s] it stretches\n[cut] [2s] a crow lands on a branch"


def _refusals(photo: str) -> list[tuple[list[str], int, str]]:
    return [
        (["--model", "tiny-cogvideox", "--continuity"], 2, "cannot start a clip from an image"),
        (["--model", "tiny-wan", "--crossfade", "50"], 2, "crossfade must be from 0 to 10"),
        (["--model", "tiny-wan-flf2v"], 2, "between a first and a last frame"),
        (["--model", "tiny-wan", "--width", "99999"], 2, "width"),
        (["--model", "tiny-cogvideox", "--image", photo], 2, "cannot start from an image"),
        (["--model", "tiny-wan", "--image", photo + ".missing.png"], 2, "no image file"),
        (["--model", "wan2.1-i2v-14b-480p"], 2, "the first scene needs one"),
        (["--model", "wan2.1-t2v-1.3b"], 3, "localvideo models pull wan2.1-t2v-1.3b"),
        (["--model", "tiny-wan", "--output", "story.avi"], 2, ".mp4"),
    ]


def test_dry_run_refuses_exactly_what_the_real_run_refuses(tmp_path):
    photo = tmp_path / "photo.png"
    Image.new("RGB", (64, 48), (10, 20, 30)).save(photo)
    cases = _refusals(str(photo))
    env = {"LOCALVIDEO_OUTPUTS_DIR": str(tmp_path / "out")}
    runs = [(args, dry) for args, _, _ in cases for dry in (True, False)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda r: run_cli("story", SCRIPT, *r[0], *(["--dry-run"] if r[1] else []),
                                                   env_extra=env), runs))
    for (args, dry), r in zip(runs, results):
        code, words = next((c, w) for a, c, w in cases if a == args)
        what = f"{'dry run' if dry else 'run'} with {args}"
        assert r.returncode == code, (what, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr and r.stderr.startswith("Error:") and words in r.stderr, (what, r.stderr)
    for (args, _), dry, real in zip(runs[::2], results[::2], results[1::2]):
        assert dry.stderr.splitlines()[0] == real.stderr.splitlines()[0], args  # the same error, word for word
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "out") == ["photo.png"]


def test_dry_run_shows_transitions_frames_and_duration():
    r = run_cli("story", SCRIPT, "--model", "tiny-wan", "--crossfade", "0.25", "--width", "64", "--height", "64",
                "--steps", "2", "--seed", "5", "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    # 1 s at 16 fps → 17 frames (4k+1), 2 s → 33; scene 2 continues (−1), scene 3 is a cut crossfaded (4 frames)
    assert [s["planned_frames"] for s in d["scenes"]] == [17, 17, 33]
    assert [s["transition"] for s in d["scenes"]] == ["start", "continued", "crossfade"]
    assert [s["task"] for s in d["scenes"]] == ["t2v", "i2v", "t2v"]
    assert d["frames"] == 17 + 17 + 33 - 1 - 4 == 62 and d["duration_s"] == 62 / 16 and d["crossfade_frames"] == 4
    assert [(s["start_frame"], s["end_frame"]) for s in d["scenes"]] == [(0, 17), (17, 33), (29, 62)]
    assert [s["seed"] for s in d["scenes"]] == [5, 6, 7] and (d["width"], d["height"], d["steps"]) == (64, 64, 2)
    assert d["boundaries"] == [{"before_scene": 2, "frame": 17, "time_s": 1.0625, "transition": "continued"},
                               {"before_scene": 3, "frame": 29, "time_s": 1.8125, "transition": "crossfade"}]
    assert d["heaviest_scene"] == 3 and d["plan"]["num_frames"] == 33 and d["plan"]["strategy"]
    text = run_cli("story", SCRIPT, "--model", "tiny-cogvideox", "--crossfade", "0.25", "--dry-run").stdout
    # tiny-cogvideox: text-to-video only (no continuity), 8 fps, 8k+1 frames: 9 + 9 + 17 − 2 × 2 crossfade frames
    assert "3 scenes on tiny-cogvideox, 31 frames (3.88 s) at 8 fps" in text
    assert "continuity off; crossfade 0.25 s (2 frames) at hard cuts" in text
    assert [line.split()[5] for line in text.splitlines() if line.strip()[:2] in ("1.", "2.", "3.")] == [
        "start", "crossfade", "crossfade"]


def test_dry_run_plans_every_scene_for_a_hypothetical_gpu():
    script = "[5f] a fox wakes\n[8s] it runs across the whole valley"
    r = run_cli("story", script, "--model", "wan2.1-t2v-1.3b", "--dry-run", "--vram", "4", "--json")
    err = json.loads(r.stdout)
    # scene 1 fits a 4 GB GPU; scene 2 (129 frames at 832x480) does not: said before anything runs, naming it
    assert r.returncode == 4 and err["error"] == "does_not_fit" and err["scene"] == 2 and err["line"] == 2
    assert err["message"].startswith("Scene 2 of 2 (line 2) does not fit: wan2.1-t2v-1.3b at 832x480, 129 frames")
    assert err["hint"].startswith("Make scene 2 at most 93 frames ([93f], 5.81 s at 16 fps)")
    fits = run_cli("story", script, "--model", "wan2.1-t2v-1.3b", "--dry-run", "--vram", "8", "--json")
    assert fits.returncode == 0 and json.loads(fits.stdout)["frames"] == 5 + 129  # not installed: fine for --vram
    bad = run_cli("story", script, "--model", "tiny-wan", "--vram", "8")
    assert bad.returncode == 2 and "--vram only makes sense with --dry-run" in bad.stderr


def _too_long_for_this_machine():
    """(model, width, height, frames) of a clip this machine cannot hold while a 9-frame one fits, or None."""
    from localvideo.catalog import get_model
    from localvideo.errors import DoesNotFit
    from localvideo.hardware import probe
    from localvideo.planner import plan
    from localvideo.request import GenerationRequest

    hw = probe()
    for model, w, h in (("ltx-video-2b", 1024, 576), ("wan2.1-t2v-1.3b", 1280, 720), ("ltx-video-2b", 768, 512)):
        spec = get_model(model)
        try:
            plan(GenerationRequest(prompt="x", model=model, width=w, height=h, num_frames=9), spec, hw)
        except DoesNotFit:
            continue
        try:
            plan(GenerationRequest(prompt="x", model=model, width=w, height=h, num_frames=spec.max_frames), spec, hw)
        except DoesNotFit:
            return model, w, h, spec.max_frames
    return None


def test_the_real_run_plans_every_scene_on_this_machine_before_generating(tmp_path):
    found = _too_long_for_this_machine()
    if found is None:
        pytest.skip("every clip fits this machine: no scene to refuse")
    model, w, h, frames = found
    out = tmp_path / "story.mp4"
    r = run_cli("story", f"[9f] a fox wakes\n[{frames}f] it runs", "--model", model, "--width", str(w), "--height",
                str(h), "--output", str(out), "--json")
    # refused for scene 2 before scene 1 is made (scene 1 alone would have stopped at "not installed", exit 3)
    err = json.loads(r.stdout)
    assert r.returncode == 4 and err["error"] == "does_not_fit" and err["scene"] == 2, r.stdout + r.stderr
    assert err["message"].startswith(f"Scene 2 of 2 (line 2) does not fit: {model}")
    assert list(tmp_path.iterdir()) == []
