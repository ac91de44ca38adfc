"""Output names: a user's file is never replaced unasked, and two runs never write one file."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest

import localvideo
from localvideo.errors import InvalidRequest, OutputError
from localvideo.hardware import Hardware
from localvideo.media.encode import release_output, reserve_output
from localvideo.media.probe import probe
from localvideo.request import GenerationRequest
from localvideo.runtime.cache import PipelineCache

CPU = Hardware.assumed(None, ram_gb=16)
SMALL = dict(model="tiny-wan", steps=1, width=64, height=64, num_frames=5, hardware=CPU)


@pytest.fixture(scope="module")
def cache():
    return PipelineCache(budget_bytes=4 * 10**9)


def test_an_existing_output_is_refused_unless_overwrite_and_a_foreign_json_never_replaced(tmp_path, cache):
    mine = tmp_path / "holiday.mp4"
    mine.write_bytes(b"my own video")
    with pytest.raises(OutputError, match="exists already; it was left as it is") as e:
        localvideo.generate("a fox", output=str(mine), cache=cache, **SMALL)
    assert "--overwrite" in e.value.hint and mine.read_bytes() == b"my own video"
    assert not list(tmp_path.glob(".*"))  # no claim, no temp file left behind
    r = localvideo.generate("a fox", output=str(mine), overwrite=True, cache=cache, **SMALL)
    assert r.path == mine and probe(mine).frames == 5

    notes = tmp_path / "notes.json"
    notes.write_text('{"my": "config"}')
    for overwrite in (False, True):
        with pytest.raises(OutputError, match="is not a localvideo settings file"):
            localvideo.generate("a fox", output=str(tmp_path / "notes.mp4"), overwrite=overwrite, cache=cache,
                                **SMALL)
    assert notes.read_text() == '{"my": "config"}' and not (tmp_path / "notes.mp4").exists()


def test_the_cli_refuses_an_existing_output_for_generate_story_and_animate(tmp_path):
    from conftest import run_cli
    from PIL import Image

    taken = tmp_path / "taken.mp4"
    taken.write_bytes(b"keep me")
    photo = tmp_path / "p.png"
    Image.new("RGB", (96, 64), (120, 80, 40)).save(photo)
    for args in (("generate", "a fox", "-m", "tiny-wan", "--steps", "1"),
                 ("story", "[5f] a fox", "-m", "tiny-wan", "--steps", "1"),
                 ("story", "[5f] a fox", "-m", "tiny-wan", "--dry-run"),
                 ("animate", str(photo), "--frames", "4")):
        r = run_cli(*args, "-o", str(taken), timeout=120)
        assert r.returncode == 5, (args, r.stderr)
        assert f"{taken} exists already" in r.stderr.replace("\n", "") and "Traceback" not in r.stderr, args
    assert taken.read_bytes() == b"keep me"
    r = run_cli("animate", str(photo), "--frames", "4", "-o", str(taken), "--overwrite", timeout=120)
    assert r.returncode == 0, r.stderr
    assert probe(taken).frames == 4


def test_runs_given_the_same_chosen_name_at_once_each_get_their_own_file(tmp_path, cache, monkeypatch):
    """A default name is the second, the model and the seed: two runs started together with one seed collide
    unless the name is claimed (both said 'Wrote' and one video was lost)."""
    from localvideo import generation

    monkeypatch.setattr(generation, "_default_name", lambda plan: "same-second-tiny-wan-seed7.mp4")
    results: dict[str, object] = {}

    def run(prompt: str) -> None:
        results[prompt] = localvideo.generate(prompt, output=str(tmp_path) + "/", seed=7, cache=cache,
                                              expand_prompt=False, **SMALL)

    threads = [threading.Thread(target=run, args=(p,)) for p in ("a cat", "a dog")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    paths = {p: r.path for p, r in results.items()}
    assert sorted(x.name for x in paths.values()) == ["same-second-tiny-wan-seed7.mp4",
                                                      "same-second-tiny-wan-seed7~1.mp4"]
    for prompt, path in paths.items():
        assert json.loads(path.with_suffix(".json").read_text())["prompt"] == prompt  # each its own video
    assert not list(tmp_path.glob(".*"))  # claims released


def test_a_claimed_name_is_skipped_or_refused_and_a_dead_run_s_claim_is_not_a_claim(tmp_path):
    target = tmp_path / "v.mp4"
    first = reserve_output(target, unique=True)
    assert first == target
    assert reserve_output(target, unique=True) == tmp_path / "v~1.mp4"  # the same process, another run
    with pytest.raises(OutputError, match="Another run in this process is writing"):
        reserve_output(target, unique=False)
    release_output(first)
    release_output(tmp_path / "v~1.mp4")

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from localvideo.media.encode import "
                               "reserve_output; reserve_output(sys.argv[1], unique=False); print('ready', flush=True);"
                               " time.sleep(600)", str(target)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(OutputError, match="Another run is writing"):
            reserve_output(target, unique=False)
        assert reserve_output(target, unique=True) == tmp_path / "v~1.mp4"
        release_output(tmp_path / "v~1.mp4")
    finally:
        holder.kill()
        holder.wait()
    assert reserve_output(target, unique=False) == target  # its owner is gone: the claim no longer holds
    release_output(target)


def test_fields_given_with_a_request_replace_the_request_s_own(tmp_path, cache):
    base = GenerationRequest(prompt="a fox", seed=1, fps=16, **{k: v for k, v in SMALL.items() if k != "hardware"})
    r = localvideo.generate(request=base, seed=5, fps=8, output=str(tmp_path / "a.mp4"), hardware=CPU, cache=cache)
    assert (r.seed, r.plan.fps) == (5, 8) and probe(r.path).fps == pytest.approx(8)
    with pytest.raises(InvalidRequest, match="frames"):
        localvideo.generate(request=base, num_frames=0, output=str(tmp_path / "b.mp4"), hardware=CPU, cache=cache)


def test_the_public_api_imports_lazily_and_every_name_resolves():
    code = ("import sys, localvideo; assert 'torch' not in sys.modules; "
            "e = localvideo.errors; assert issubclass(e.OutputError, e.LocalVideoError); "
            "names = [n for n in dir(localvideo) if not n.startswith('_')]; print(sorted(names)); "
            "[getattr(localvideo, n) for n in names]")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == repr(sorted(["GenerationRequest", "GenerationResult", "animate", "decode_saved",
                                            "errors", "generate", "make_story"]))


def test_what_a_killed_run_left_is_swept_by_the_next_run_in_that_folder(tmp_path, cache, lv_home):
    """A CLI user who never runs `serve`: the latents and temp video of a run killed while decoding go at the next
    run (they were nobody's: no error promised them), and a kept video is never touched."""
    killed = subprocess.Popen([sys.executable, "-c", """
import sys
from pathlib import Path
from localvideo.media.encode import reserve_output
from localvideo.runtime import latents
from localvideo.runtime.leftovers import owner_tag
out, home = Path(sys.argv[1]), Path(sys.argv[2])
reserve_output(out / "v.mp4", unique=False)
lat = latents.reserve(out / "v.mp4", home / "latents")
lat.write_bytes(b"\\0" * 4096)  # as if saved before the decode it was killed in
(out / f".v.mp4.{owner_tag()}.partial.mp4").write_bytes(b"\\0" * 100)
print(lat.name, flush=True)
import time; time.sleep(600)
""", str(tmp_path), str(lv_home)], stdout=subprocess.PIPE, text=True)
    name = killed.stdout.readline().strip()
    killed.kill()
    killed.wait()
    (tmp_path / "kept.mp4").write_bytes(b"a video")
    assert (lv_home / "latents" / name).is_file() and len(list(tmp_path.glob(".v.mp4.*"))) == 2
    localvideo.generate("a fox", output=str(tmp_path / "next.mp4"), cache=cache, **SMALL)
    assert not (lv_home / "latents" / name).exists() and not list(tmp_path.glob(".*"))
    assert (tmp_path / "kept.mp4").read_bytes() == b"a video"
