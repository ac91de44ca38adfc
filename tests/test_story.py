"""Stories: the script parser, paragraph → shot list, and make_story with tiny real pipelines (random weights).

The frame-count formula under test (localvideo.story): total = Σ F_k − C − H × N, where F_k are the frames generated
per scene, C the scenes continued from the previous scene's last frame (their copy of it is dropped), H the hard
cuts and N the crossfade frames (crossfades apply at hard cuts only).
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading

import numpy as np
import pytest
from PIL import Image

from _helpers import teach_tiny_lm, torch_threads
from conftest import run_cli
from localvideo.errors import Cancelled, GenerationFailed, InvalidRequest
from localvideo.hardware import Hardware
from localvideo.media.concat import Piece, blend, join
from localvideo.media.encode import encode_video
from localvideo.media.probe import probe, read_frames
from localvideo.prompts.scenes import (Scene, parse_script, scenes_to_script, sentence_scenes,
                                       shot_list_from_paragraph, split_sentences, validate_shot_list)
from localvideo.runtime.cache import PipelineCache
from localvideo.story import make_story, story_frames

CPU = Hardware.assumed(None, ram_gb=16)
BIG = Hardware.assumed(None, ram_gb=64)


@pytest.fixture(scope="module")
def cache():
    return PipelineCache(8 * 10**9)


# -------------------------------------------------------------------------------------------------------- parser

PARSE = [
    # (script, [(prompt, duration_s, frames, shot, line, cut)])
    ("a fox wakes", [("a fox wakes", None, None, (), 1, False)]),
    ("[4s] wide shot: a fox trots\n[2.5s] close-up: it blinks\nit runs away [tracking]",
     [("a fox trots [wide shot]", 4.0, None, ("wide shot",), 1, False),
      ("it blinks [close up]", 2.5, None, ("close up",), 2, False),
      ("it runs away [tracking]", None, None, (), 3, False)]),
    ("# title comment\n\n  [3 sec]  Close-Up, dolly in:  the fox\n   sniffs the air  \n\n# between\n[33f] a field\n",
     [("the fox sniffs the air [close up, dolly in]", 3.0, None, ("close up", "dolly in"), 3, False),
      ("a field", None, 33, (), 7, False)]),
    ("first block line one\nline two\n\n[1s] second block\n[2s] a timed line starts a scene\n",
     [("first block line one line two", None, None, (), 1, False), ("second block", 1.0, None, (), 4, False),
      ("a timed line starts a scene", 2.0, None, (), 5, False)]),
    ("a fox [1500ms]\n[cut] [2,5s] Scene 2: aerial: the city [neon]",
     [("a fox", 1.5, None, (), 1, False), ("the city [neon] [aerial]", 2.5, None, ("aerial",), 2, True)]),
    ("Note: the fox is red\nat 12:30 the fox wakes [sic]",
     [("Note: the fox is red", None, None, (), 1, False), ("at 12:30 the fox wakes [sic]", None, None, (), 2, False)]),
    ("\ufeff一只红狐狸在雪地里奔跑 [2s]\r\n[1s] 狐狸停下了", [("一只红狐狸在雪地里奔跑", 2.0, None, (), 1, False),
                                                  ("狐狸停下了", 1.0, None, (), 2, False)]),
]


@pytest.mark.parametrize("script,want", PARSE)
def test_parse_script(script, want):
    scenes = parse_script(script)
    got = [(s.prompt, s.duration_s, s.frames, s.shot, s.line, s.cut) for s in scenes]
    assert got == want
    assert [s.index for s in scenes] == list(range(len(want)))
    again = parse_script(scenes_to_script(scenes))  # written back in the script format, it parses the same
    assert [(s.prompt, s.duration_s, s.frames, s.shot, s.cut) for s in again] == [w[:4] + (w[5],) for w in want]


BAD = [
    ("", "empty"),
    ("  \n# just a comment\n\n", "empty"),
    ("[4s]", "no description, only a duration"),
    ("ok scene\n[4s] wide shot:", "Scene 2 (line 2) has no description"),
    ("[2s] [dolly in]", "no description"),
    ("ok\n\n[0s] a fox", "line 3"),
    ("[0s] a fox", "more than 0"),
    ("[-2s] a fox", "more than 0"),
    ("[61s] a fox", "at most 60"),
    ("[100000s] a fox", "at most 60"),
    ("[4] a fox", "no unit"),
    ("[4x] a fox", "unknown unit"),
    ("[2.5f] a fox", "whole number of frames"),
    ("[0f] a fox", "whole number of frames"),
    ("[4s] a fox [2s]", "2 durations"),
    ("a fox\n[4s a fox", "Line 2: a '[' is never closed"),
    ("a fox ] runs", "never opened"),
    ("a [fox [dolly in]]", "inside another bracket"),
    ("a fox " * 800, "characters"),
    ("\n".join(f"scene {i}" for i in range(101)), "101 scenes"),
]


@pytest.mark.parametrize("script,words", BAD)
def test_bad_scripts_are_clear_errors(script, words):
    with pytest.raises(InvalidRequest) as e:
        parse_script(script)
    assert words in str(e.value)


def test_parse_errors_carry_the_line_number():
    with pytest.raises(InvalidRequest) as e:
        parse_script("# c\n[2s] ok\n\n[3q] bad unit")
    assert e.value.details["line"] == 4 and "line 4" in e.value.message


# ---------------------------------------------------------------------------------------- paragraph → shot list

PARAGRAPH = ("A red fox wakes in its den under the pine roots. It yawns. Outside, fresh snow covers the silent "
             "forest! The fox trots out, sniffs the cold air and leaps into a snowdrift.")


def test_sentence_split_keeps_abbreviations_and_cjk():
    assert split_sentences("Mr. Fox wakes up. He runs! Is it snowing? Yes. 狐狸跑了。它停下了！") == [
        "Mr. Fox wakes up.", "He runs!", "Is it snowing?", "Yes.", "狐狸跑了。", "它停下了！"]
    assert split_sentences("no full stop at the end") == ["no full stop at the end"]


def test_paragraph_fallback_is_one_scene_per_sentence():
    sl = shot_list_from_paragraph(PARAGRAPH)
    assert sl.source == "sentences" and sl.reason_if_fallback is None
    assert [s.prompt for s in sl.scenes] == [
        "A red fox wakes in its den under the pine roots. It yawns.",  # the two-word sentence joins its neighbour
        "Outside, fresh snow covers the silent forest!",
        "The fox trots out, sniffs the cold air and leaps into a snowdrift."]
    grouped = sentence_scenes(" ".join(f"The fox takes step number {i}." for i in range(10)), max_scenes=3,
                              duration_s=2)
    assert len(grouped) == 3 and all(s.duration_s == 2 for s in grouped)
    assert "number 0." in grouped[0].prompt and "number 9." in grouped[2].prompt
    assert parse_script(sl.script)[1].prompt == sl.scenes[1].prompt
    with pytest.raises(InvalidRequest, match="empty"):
        shot_list_from_paragraph("   ")


GOOD_LIST = ("[3s] wide shot: a red fox sleeps in its den under the pine roots\n"
             "[2s] wide shot: fresh snow covers the silent forest outside\n"
             "[3s] close-up: the fox trots out, sniffs the cold air and leaps into a snowdrift")

SHOT_LISTS = [
    (GOOD_LIST, None),
    ("1. " + GOOD_LIST.replace("\n", "\n2. ", 1).replace("\n[3s]", "\n3. [3s]"), None),  # numbering tolerated
    (GOOD_LIST.replace("\n", " "), None),  # shots on one line: each duration starts a shot
    ("Sure! Here is your shot list:\n" + GOOD_LIST, "preamble"),
    ("**Shot list**\n" + GOOD_LIST, "markdown"),
    (GOOD_LIST.replace("[2s] ", ""), "no duration"),
    (GOOD_LIST.replace("[2s]", "[40s]"), "lasts 40 s"),
    ("[3s] wide shot: a red fox sleeps in its den under the pine roots", "single shot"),
    ("[3s] a cat sleeps on a sofa\n[3s] a dog barks at the mailman\n[2s] the rain falls on a city street",
     "drops most of the story"),
    ("[3s] wide shot: the fox\n[3s] close-up: a fox den", "too short"),
    ("[3s] a red fox in its den in the snow\n[3s] a red fox in its den in the snow", "repeats"),
    ("[3s] the red fox wakes in the den [ snow\n[2s] the fox leaps into the forest snow", "does not parse"),
    ("<think>planning</think>" + GOOD_LIST + " <|im_end|>", "markup"),
]


@pytest.mark.parametrize("raw,why", SHOT_LISTS)
def test_llm_shot_lists_are_validated_strictly(raw, why):
    scenes, reason = validate_shot_list(raw, PARAGRAPH, max_scenes=8)
    if why is None:
        assert reason is None and [s.duration_s for s in scenes] == [3.0, 2.0, 3.0]
        assert scenes[2].shot == ("close up",)
    else:
        assert scenes is None and why in reason
    assert validate_shot_list(GOOD_LIST, PARAGRAPH, max_scenes=2)[1] == "it has 3 shots; at most 2 were asked for"
    assert "cut off" in validate_shot_list(GOOD_LIST, PARAGRAPH, finished=False)[1]


@pytest.fixture()
def one_thread():
    """Tiny LMs on a shared 2-core box: more threads only fight each other (see _helpers.torch_threads)."""
    with torch_threads(1):
        yield


def test_tiny_random_lm_shot_list_falls_back_with_the_reason(one_thread):
    streamed: list[str] = []
    sl = shot_list_from_paragraph(PARAGRAPH, "tiny-lm", hardware=BIG, max_new_tokens=40, stream=streamed.append)
    assert sl.source == "sentences" and "tiny-lm" in sl.reason_if_fallback and "not used" in sl.reason_if_fallback
    assert sl.raw_output and "".join(streamed) == sl.raw_output and len(sl.scenes) == 3


def test_a_tiny_lm_that_learned_a_shot_list_is_used(tmp_path, one_thread):
    """The LLM path end to end: teach the tiny LM one good shot list, then ask it for this paragraph."""
    from localvideo.prompts.scenes import build_shot_list_messages

    _, folder = teach_tiny_lm(build_shot_list_messages(PARAGRAPH, 8), GOOD_LIST, tmp_path / "director-lm",
                              max_steps=300)
    sl = shot_list_from_paragraph(PARAGRAPH, str(folder), hardware=BIG)
    assert sl.source == "llm", sl.reason_if_fallback
    assert sl.raw_output.strip() == GOOD_LIST.replace("\n", " ") and [s.duration_s for s in sl.scenes] == [3.0, 2.0, 3.0]


# ------------------------------------------------------------------------------------------------------- joining


def test_join_drops_and_crossfades_exactly(tmp_path):
    """Lossless check of the blend arithmetic: flat-colour segments survive H.264 almost exactly."""
    a = np.full((6, 32, 32, 3), 200, np.uint8)
    b = np.full((5, 32, 32, 3), 40, np.uint8)
    c = np.full((4, 32, 32, 3), 120, np.uint8)
    for name, arr in (("a", a), ("b", b), ("c", c)):
        encode_video(arr, tmp_path / f"{name}.mp4", fps=8)
    result, spans, notes = join([Piece(tmp_path / "a.mp4"), Piece(tmp_path / "b.mp4", crossfade_in=2),
                                 Piece(tmp_path / "c.mp4", drop_first=1)], tmp_path / "out.mp4", fps=8)
    assert result.frames == 6 + 5 + 4 - 2 - 1 == probe(result.path).frames
    assert [(s.start, s.end) for s in spans] == [(0, 6), (4, 9), (9, 12)] and notes == []
    got = read_frames(result.path)[:, 16, 16, 1].astype(int)
    want = [200, 200, 200, 200, 147, 93, 40, 40, 40, 120, 120, 120]  # 200·(1−j/3) + 40·j/3 for j = 1, 2
    assert np.abs(got - want).max() <= 3, got
    assert blend(a[0], b[0], 0.5)[0, 0, 0] == 120
    with pytest.raises(InvalidRequest, match="too few"):
        join([Piece(tmp_path / "a.mp4"), Piece(tmp_path / "c.mp4", crossfade_in=5)], tmp_path / "bad.mp4", fps=8)
    assert not (tmp_path / "bad.mp4").exists()


# ----------------------------------------------------------------------------------------- stories, end to end

SCRIPT = """# a tiny story
[0.5s] wide shot: a red fox trots across a snowy field
[0.5s] close-up: the fox lifts its head and sniffs the air
[cut] [0.5s] the fox runs into the dark pine forest [tracking]
"""


def test_three_scene_story_with_continuity_and_a_crossfade(cache, tmp_path):
    out = tmp_path / "story.mp4"
    seen: list = []
    r = make_story(SCRIPT, model="tiny-wan", width=96, height=96, steps=2, seed=7, crossfade_s=0.25,
                   output=str(out), keep_segments=True, hardware=CPU, cache=cache, on_progress=seen.append)
    fps, n = 16.0, 4  # 0.5 s at 16 fps = 8 → 9 frames (4k+1); crossfade 0.25 s = 4 frames
    assert [s.frames for s in r.scenes] == [9, 9, 9] and r.crossfade_frames == n
    assert [s.transition for s in r.scenes] == ["start", "continued", "crossfade"]
    assert [s.task for s in r.scenes] == ["t2v", "i2v", "t2v"]
    # total = Σ F_k − C − H × N
    want = 9 + 9 + 9 - 1 - 1 * n
    assert r.frames == want == story_frames([9, 9, 9], ["start", "continued", "crossfade"], n)
    info = probe(r.path)
    assert info.frames == want and info.fps == fps and (info.width, info.height) == (96, 96)
    # scene boundaries in the sidecar and in the MP4's tag
    side = json.loads(r.sidecar.read_text())
    tag = json.loads(info.tags["localvideo"])
    for md in (side, tag):
        assert md["kind"] == "story" and md["script"] == SCRIPT and md["seed"] == 7 and md["num_frames"] == want
        assert [(s["start_frame"], s["end_frame"]) for s in md["scenes"]] == [(0, 9), (9, 17), (13, 22)]
        assert [s["start_time_s"] for s in md["scenes"]] == [0.0, 0.5625, 0.8125]
        assert [s["seed"] for s in md["scenes"]] == [7, 8, 9]
        assert md["scenes"][0]["prompt"] == "a red fox trots across a snowy field [wide shot]"
        assert md["scenes"][0]["expanded_prompt"].startswith("A red fox trots across a snowy field")
        assert "wide shot" in md["scenes"][0]["expanded_prompt"]
        assert md["continuity"] | {} == {"requested": "auto", "used": True, "model_supports_i2v": True,
                                         "continued_scenes": [2], "hard_cut_scenes": [3]}
        assert md["crossfade"]["frames"] == n
        assert md["boundaries"] == [{"before_scene": 2, "frame": 9, "time_s": 0.5625, "transition": "continued"},
                                    {"before_scene": 3, "frame": 13, "time_s": 0.8125, "transition": "crossfade"}]
    assert "RANDOM WEIGHTS" in info.tags["comment"]
    # continuity: scene 2 was conditioned on the last frame of scene 1 as the runner decoded it (not an encoded copy:
    # tests/test_story_join.py checks it exactly; the kept segment has that frame through one encode)
    seg = r.segments_dir
    assert sorted(p.name for p in seg.glob("*.mp4")) == ["scene-001.mp4", "scene-002.mp4", "scene-003.mp4"]
    assert not list(seg.glob("*.npy")), "the lossless frames are removed after the join"
    last1 = read_frames(seg / "scene-001.mp4")[-1]
    png = seg / "scene-001-last.png"
    cond = side["scenes"][1]["conditioning"]
    cond_px = np.asarray(Image.open(png).convert("RGB"))
    assert np.abs(cond_px.astype(np.float32) - last1).mean() < 6
    assert cond["pixels_sha256"] == hashlib.sha256(cond_px.tobytes()).hexdigest()
    assert cond["file_sha256"] == cond["input_image"]["sha256"] == hashlib.sha256(png.read_bytes()).hexdigest()
    assert cond["from_scene"] == 1 and cond["from_frame"] == 8
    seg2_meta = json.loads((seg / "scene-002.json").read_text())
    assert seg2_meta["task"] == "i2v" and seg2_meta["input_image"]["sha256"] == cond["file_sha256"]
    assert side["scenes"][0]["conditioning"] is None and side["scenes"][2]["conditioning"] is None
    # the joined video: scene 2 starts at its second frame (its copy of the seed frame is dropped) …
    final = read_frames(r.path).astype(np.float32)
    s2 = read_frames(seg / "scene-002.mp4").astype(np.float32)
    s3 = read_frames(seg / "scene-003.mp4").astype(np.float32)
    assert np.abs(final[9] - s2[1]).mean() < np.abs(final[9] - s2[0]).mean() or np.abs(s2[0] - s2[1]).mean() < 2
    assert np.abs(final[9:13] - s2[1:5]).mean() < 6
    # … and the crossfade frames are the linear blend of scene 2's tail and scene 3's head
    for j in range(n):
        a = (j + 1) / (n + 1)
        expect = (1 - a) * s2[5 + j] + a * s3[j]
        assert np.abs(final[13 + j] - expect).mean() < 6
    assert np.abs(final[17:] - s3[n:]).mean() < 6
    # progress: scene i of n with steps, then joining and done
    assert {(p.scene, p.scenes) for p in seen if p.phase == "denoising"} == {(1, 3), (2, 3), (3, 3)}
    assert [p.phase for p in seen][-2:] == ["joining", "done"]


def test_text_only_model_makes_hard_cuts(cache, tmp_path):
    r = make_story("[1s] a lighthouse on a cliff\n[1s] waves crash below\n[1s] a gull flies away", model="tiny-cogvideox",
                   width=96, height=96, steps=1, seed=3, output=str(tmp_path), hardware=CPU, cache=cache)
    # 1 s at 8 fps = 8 → 9 frames (8k+1); no continuity (t2v only), no crossfade: total = Σ F_k
    assert [s.frames for s in r.scenes] == [9, 9, 9] and not r.continuity
    assert [s.transition for s in r.scenes] == ["start", "cut", "cut"]
    assert r.frames == 27 == probe(r.path).frames
    assert r.path.parent == tmp_path and r.path.name.endswith(f"-story-tiny-cogvideox-seed3.mp4")
    md = json.loads(r.sidecar.read_text())
    assert [(s["start_frame"], s["end_frame"]) for s in md["scenes"]] == [(0, 9), (9, 18), (18, 27)]
    assert md["continuity"]["used"] is False and md["continuity"]["hard_cut_scenes"] == [2, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([r.path.name, r.sidecar.name])  # segments removed


@pytest.mark.parametrize("when", ["within", "between", "joining"])
def test_cancel_mid_story_leaves_nothing(cache, tmp_path, lv_home, when):
    """Nothing is left: no MP4, no segments, no kept scene frames (.npy), no work folder, no latents."""
    stop = threading.Event()

    def on_progress(p):
        if when == "within" and p.scene == 2 and p.phase == "denoising":
            stop.set()  # the runner raises at its next step
        if when == "between" and p.scene == 1 and p.phase == "encoding":
            stop.set()  # scene 1 finishes; the story stops before scene 2
        if when == "joining" and p.phase == "joining":
            assert len(list(tmp_path.glob(".*.partial-*/scene-*.npy"))) == 3  # every scene's frames, kept
            stop.set()  # the join stops at its next frame

    latents = lv_home / "latents"
    before = set(latents.glob("*")) if latents.exists() else set()  # other tests may keep latents on purpose
    with pytest.raises(Cancelled) as e:
        make_story(SCRIPT, model="tiny-wan", width=96, height=96, steps=2, seed=1, output=str(tmp_path / "c.mp4"),
                   hardware=CPU, cache=cache, on_progress=on_progress, cancel=stop, keep_segments=True)
    if when == "between":
        assert "before scene 2" in e.value.message
    if when == "joining":
        assert "Joining the story was cancelled" in e.value.message
    assert list(tmp_path.iterdir()) == []
    assert (set(latents.glob("*")) if latents.exists() else set()) == before, "no latents left behind"


@pytest.mark.parametrize("kwargs,words", [
    (dict(script="[5s] a fox", model="tiny-wan"), "at most 65 frames"),
    (dict(script="[0.5s] a fox\n[0.5s] a cat", model="tiny-cogvideox", crossfade_s=1.0), "too few for crossfades"),
    (dict(script="a fox\na cat", model="tiny-cogvideox", continuity=True), "cannot start a clip from an image"),
    (dict(script="a fox\na cat", model="tiny-wan", crossfade_s=0.01), "less than one frame"),
    (dict(script="a fox", model="tiny-wan", crossfade_s=-1), "crossfade"),
    (dict(script="a fox", model="tiny-wan", output="story.avi"), ".mp4"),
    (dict(script="a fox", model="no-such-model"), "no-such-model"),
    (dict(script=[], model="tiny-wan"), "needs a script"),
])
def test_bad_stories_fail_before_any_work(kwargs, words, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    script = kwargs.pop("script")
    kwargs.setdefault("output", str(tmp_path / "x.mp4"))
    with pytest.raises(InvalidRequest) as e:
        make_story(script, hardware=CPU, **kwargs)
    assert words in str(e.value)
    assert list(tmp_path.iterdir()) == []


class _Boom(RuntimeError):
    pass


NAN = "Denoising produced NaN/Inf latents; no video was written."


@pytest.mark.parametrize("make_error,keep_segments,keep_failed", [
    (lambda: GenerationFailed(NAN, hint="Try another seed."), False, True),
    (lambda: _Boom("CUDA error: an illegal memory access was encountered"), True, True),
    (lambda: GenerationFailed(NAN), False, False),
], ids=["localvideo-error", "other-error-with-kept-segments", "jobs-keep-nothing"])
def test_a_failing_scene_keeps_the_scenes_finished_before_it(cache, tmp_path, make_error, keep_segments, keep_failed):
    """Scene 3 of 3 fails while denoising: no story MP4, but scenes 1–2 are in story.segments.failed/, each a real
    MP4 of its frames with its settings, and the error says where (a job keeps nothing: its folder is removed)."""
    from localvideo.errors import LocalVideoError
    from localvideo.runtime import leftovers

    error = make_error()

    def on_progress(p):
        if p.scene == 3 and p.phase == "denoising":
            raise error

    out = tmp_path / "story.mp4"
    with pytest.raises(type(error)) as e:
        make_story("[5f] a fox sleeps\n[5f] a fox wakes\n[cut] [5f] a crow lands", model="tiny-wan", width=64,
                   height=64, steps=1, seed=6, output=str(out), hardware=CPU, cache=cache, on_progress=on_progress,
                   keep_segments=keep_segments, keep_failed_scenes=keep_failed)
    kept = tmp_path / "story.segments.failed"
    said = f"Scenes 1–2 of 3 are kept in {kept} (an MP4 per scene, with its settings)."
    if not keep_failed:
        assert list(tmp_path.iterdir()) == [] and said not in str(e.value) and "kept_scenes_dir" not in e.value.details
        return
    if isinstance(error, LocalVideoError):
        assert e.value.hint == f"{said} Try another seed." and e.value.details["kept_scenes_dir"] == str(kept)
        assert e.value.message == NAN
    else:
        assert e.value.__notes__ == [said]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["story.segments.failed"]  # no story MP4, no work folder
    assert sorted(p.name for p in kept.iterdir()) == ["scene-001-last.png", "scene-001.json", "scene-001.mp4",
                                                      "scene-002.json", "scene-002.mp4", "story.json"]
    for k in (1, 2):
        video = kept / f"scene-00{k}.mp4"
        info = probe(video)
        meta = json.loads((kept / f"scene-00{k}.json").read_text())
        assert info.frames == 5 and (info.width, info.height) == (64, 64) and len(read_frames(video)) == 5
        assert meta["seed"] == 6 + k - 1 and json.loads(info.tags["localvideo"])["seed"] == meta["seed"]
        assert meta["task"] == ("t2v" if k == 1 else "i2v")
    story = json.loads((kept / "story.json").read_text())
    assert story["scenes_kept"] == [1, 2] and story["scene_count"] == 3 and story["seed"] == 6
    assert story["script"].startswith("[5f] a fox sleeps")
    assert story["scenes"][1]["segment"] == str(kept / "scene-002.mp4")
    assert leftovers.sweep([tmp_path]) == [] and kept.is_dir(), "the leftovers sweep never removes kept scenes"


def test_scenes_list_and_no_continuity(cache, tmp_path):
    scenes = [Scene(index=0, prompt="a fox sleeps", text="a fox sleeps", frames=5),
              Scene(index=1, prompt="a fox wakes", text="a fox wakes", frames=5)]
    r = make_story(scenes, model="tiny-wan", continuity=False, width=64, height=64, steps=1, seed=2,
                   output=str(tmp_path / "s.mp4"), hardware=CPU, cache=cache)
    assert [s.transition for s in r.scenes] == ["start", "cut"] and r.frames == 10 == probe(r.path).frames
    assert r.metadata["continuity"]["requested"] is False and "[5f] a fox sleeps" in r.metadata["script"]


def test_cli_story(tmp_path):
    script = tmp_path / "fox.story"
    script.write_text("[0.5s] wide shot: a red fox trots\n[0.5s] close-up: the fox blinks\n", encoding="utf-8")
    out = tmp_path / "cli.mp4"
    r = run_cli("story", str(script), "--model", "tiny-ltx", "--width", "64", "--height", "64", "--steps", "1",
                "--seed", "4", "--crossfade", "0.1", "--negative", "blurry, text overlay", "--output", str(out),
                "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    # 0.5 s at 24 fps = 12 → 9 frames (8k+1); tiny-ltx does i2v: scene 2 continues (crossfades only at cuts)
    assert data["ok"] and data["frames"] == 9 + 9 - 1 == probe(out).frames and data["continuity"] is True
    assert [s["transition"] for s in data["scenes"]] == ["start", "continued"]
    # --negative: every scene's model read it (recorded per scene in the MP4's metadata)
    tag = json.loads(probe(out).tags["localvideo"])
    assert [s["negative_prompt"] for s in tag["scenes"]] == ["blurry, text overlay"] * 2
    bad = run_cli("story", "[4s a fox", "--model", "tiny-ltx", "--json")
    assert bad.returncode == 2 and json.loads(bad.stdout)["line"] == 1
    dry = run_cli("story", PARAGRAPH, "--from-paragraph", "--model", "tiny-wan", "--duration", "1", "--dry-run",
                  "--json")
    assert dry.returncode == 0, dry.stderr
    d = json.loads(dry.stdout)
    assert [s["planned_frames"] for s in d["scenes"]] == [17, 17, 17] and d["shot_list"]["source"] == "sentences"


KILLED_STORY = """
import sys, time
from localvideo.hardware import Hardware
from localvideo.story import make_story

def on_progress(p):
    if p.scene == 2:  # scene 1's frames are kept in the work folder: stop here until killed
        print("ready", flush=True)
        time.sleep(600)

make_story("[5f] a fox sleeps\\n[5f] a fox wakes", model="tiny-wan", continuity=False, width=64, height=64, steps=1,
           seed=2, output=sys.argv[1], hardware=Hardware.assumed(None, ram_gb=16), on_progress=on_progress)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="judges processes through /proc")
def test_a_killed_story_s_work_folder_is_swept_by_the_next_story_but_never_a_live_or_foreign_one(
        cache, tmp_path, caplog):
    """A real story process is SIGKILLed mid-story (an OOM kill): its work folder, with a scene's uncompressed frames,
    is left behind. The next story in that folder removes it — but not while that process lives, and never a work
    folder named for another host (outputs may be on a folder shared by several machines)."""
    import dataclasses
    import logging
    import os
    import signal
    import subprocess

    from localvideo.runtime import leftovers
    from localvideo.story import work_folder

    p = subprocess.Popen([sys.executable, "-c", KILLED_STORY, str(tmp_path / "killed.mp4")], stdout=subprocess.PIPE,
                         text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        (work,) = tmp_path.glob(".killed.segments.partial-*")
        assert leftovers.parse_tag(work.name.split(".partial-", 1)[1]).pid == p.pid
        tag = work.name.split(".partial-", 1)[1]
        # scene 1's frames, and the claim on scene 2's name (it is being made)
        assert sorted(f.name for f in work.iterdir()) == [f".scene-002.mp4.inuse-{tag}", "scene-001.npy"]
        assert (tmp_path / f".killed.mp4.inuse-{tag}").is_file()  # the story's claim on its output name
        assert work == work_folder(tmp_path / "killed.mp4").with_name(work.name)
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        other_host = dataclasses.replace(leftovers.me(), host="gpu2", pid=dead.pid)  # that pid is dead here too
        foreign = tmp_path / f".other.segments.partial-{other_host.tag}"
        foreign.mkdir()
        (foreign / "scene-001.npy").write_bytes(b"\0" * 100)

        make_story("[5f] a fox", model="tiny-wan", width=64, height=64, steps=1, seed=3,
                   output=str(tmp_path / "while-alive.mp4"), hardware=CPU, cache=cache)
        assert work.is_dir() and (work / "scene-001.npy").is_file(), "a live story's work folder is never touched"
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    assert work.is_dir(), "killed: nothing cleaned it up"
    size = (work / "scene-001.npy").stat().st_size
    with caplog.at_level(logging.INFO, logger="localvideo.runtime.leftovers"):
        make_story("[5f] a fox", model="tiny-wan", width=64, height=64, steps=1, seed=4,
                   output=str(tmp_path / "after.mp4"), hardware=CPU, cache=cache)
    assert not work.exists()
    assert f"removed story work folder {work} ({leftovers.human(size)}): left by process {p.pid}: that process is " \
           "gone" in caplog.text
    assert "before a story: removed 2 leftover(s)" in caplog.text  # its work folder and its claim on killed.mp4
    assert not list(tmp_path.glob(".killed.mp4.inuse-*"))
    assert (foreign / "scene-001.npy").is_file(), "another host's work folder is never touched"
    assert sorted(x.name for x in tmp_path.glob("*.mp4")) == ["after.mp4", "while-alive.mp4"]


def test_a_scene_waiting_for_the_model_carries_the_message_into_the_jobs_progress():
    from localvideo.jobs.executors import job_progress
    from localvideo.runtime.recovery import WAITING_FOR_MODEL
    from localvideo.story import StoryProgress

    p = job_progress(StoryProgress(2, 3, "queued", 0, 8, 1.0, None, WAITING_FOR_MODEL))
    assert (p.scene, p.scenes, p.phase, p.message) == (2, 3, "queued", WAITING_FOR_MODEL)
    assert StoryProgress(1, 3, "denoising").to_dict()["message"] is None
