"""`localvideo decode FILE` on damaged or mismatched latents: one clear sentence and exit code 2, nothing written.

The bad files are real latents of a real tiny run, saved again with their metadata or tensor edited by hand (as a
user or a broken copy would). A good file still decodes to the original run's frames, with its metadata.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.torch import save_file

import localvideo
from localvideo import generation
from conftest import run_cli
from localvideo.errors import InvalidRequest
from localvideo.hardware import Hardware
from localvideo.media.probe import probe, read_frames
from localvideo.runtime import latents as latents_io
from localvideo.runtime.cache import PipelineCache

CPU = Hardware.assumed(None, ram_gb=16)
PROMPT = "a paper boat on a puddle [dolly in]"


def _keep_frames(mp, into: list) -> None:
    """Keep a copy of the frames each run hands to the encoder. The MP4s cannot be compared exactly: libx264 with
    its automatic threads does not encode the same frames to the same pixels every time (seen here)."""
    real = generation.record

    def record(frames, *args, **kwargs):
        into.append(np.array(frames, copy=True))
        return real(frames, *args, **kwargs)

    mp.setattr(generation, "record", record)


@pytest.fixture(scope="module")
def kept(tmp_path_factory, lv_home):
    """A tiny-wan run (tiled decode, as `localvideo decode` does) that kept its latents, in the session's home."""
    folder = tmp_path_factory.mktemp("kept")
    frames = []
    with pytest.MonkeyPatch.context() as mp:  # module scope: before the per-test home fixture applies
        mp.setenv("LOCALVIDEO_HOME", str(lv_home))
        _keep_frames(mp, frames)
        result = localvideo.generate(PROMPT, model="tiny-wan", seed=6, steps=2, width=64, height=64, num_frames=9,
                                     vae_tiling=True, output=str(folder / "orig.mp4"), hardware=CPU,
                                     cache=PipelineCache(8 * 10**9), keep_latents=True)
    assert result.latents.is_relative_to(lv_home)
    result.frames_encoded = frames[0]
    yield result
    result.latents.unlink(missing_ok=True)


def _read(path):
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata()), f.get_tensor("latents")


def _edited(kept, tmp_path, name: str, tensor=None, **meta_edits):
    meta, latents = _read(kept.latents)
    for key, value in meta_edits.items():
        if value is None:
            meta.pop(key)
        else:
            meta[key] = value(meta[key]) if callable(value) else value
    path = tmp_path / f"{name}.latents.safetensors"
    save_file({"latents": (latents if tensor is None else tensor(latents)).contiguous()}, str(path), metadata=meta)
    return path


def _plan(**changes):
    return lambda text: json.dumps({**json.loads(text), **changes})


BAD = {
    "no-plan": (dict(plan=None), "has no plan in its metadata"),
    "bad-json": (dict(plan='{"model": "tiny-wan", '), "has a plan that is not valid JSON"),
    "not-an-object": (dict(plan="[1, 2]"), "has a plan that is not a JSON object"),
    "no-size": (dict(plan=lambda t: json.dumps({k: v for k, v in json.loads(t).items() if k != "width"})),
                "has a plan without 'width'"),
    "no-prompt": (dict(plan=lambda t: json.dumps({k: v for k, v in json.loads(t).items() if k != "prompt"})),
                  "has a plan without 'prompt'"),
    "unknown-model": (dict(plan=_plan(model="no-such-model")), "a model localvideo does not know ('no-such-model')"),
    "other-family": (dict(plan=_plan(model="tiny-ltx")), "the plan names tiny-ltx (family ltx) but says the "
                                                         "latents are from the wan family"),
    "other-model": (dict(plan=_plan(model="tiny-ltx", family="ltx", pipeline="LTXPipeline", latent_shape=[2, 8, 8])),
                    "the latents tensor is [1, 16, 3, 8, 8], but 64x64, 9 frames on tiny-ltx gives [1, 128, 8]"),
    "other-pipeline": (dict(plan=_plan(pipeline="LTXPipeline")), "the pipeline 'LTXPipeline', which is not one of"),
    "edited-size": (dict(plan=_plan(width=128, height=128)), "128x128, 9 frames on tiny-wan means latents of "
                                                             "3x16x16, but the plan says 3x8x8"),
    "edited-size-and-shape": (dict(plan=_plan(width=128, height=128, latent_shape=[3, 16, 16])),
                              "the latents tensor is [1, 16, 3, 8, 8], but 128x128, 9 frames on tiny-wan gives "
                              "[1, 16, 3, 16, 16]"),
    "edited-frames": (dict(plan=_plan(num_frames=17, latent_shape=[5, 8, 8])),
                      "the latents tensor is [1, 16, 3, 8, 8], but 64x64, 17 frames on tiny-wan gives"),
    "cut-frames": (dict(tensor=lambda t: t[:, :, :2]), "the latents tensor is [1, 16, 2, 8, 8], but 64x64, 9 "
                                                       "frames on tiny-wan gives [1, 16, 3, 8, 8]"),
    "bad-generator-state": (dict(generator_state="AAAA"), "has a damaged generator state"),
    "bad-extra": (dict(extra="{oops"), "has run metadata that is not valid JSON"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_damaged_or_mismatched_latents_file_is_one_clear_error(kept, tmp_path, case):
    edits, expected = BAD[case]
    edits = dict(edits)
    tensor = edits.pop("tensor", None)
    path = _edited(kept, tmp_path, case, tensor=tensor, **edits)
    out = tmp_path / "out.mp4"
    r = run_cli("decode", str(path), "--output", str(out))
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and r.stdout == ""
    first = r.stderr.splitlines()[0]
    assert first.startswith(f"Error: {path.name} ") and expected in first, first
    assert not out.exists() and list(tmp_path.iterdir()) == [path]
    r = run_cli("decode", str(path), "--json")
    d = json.loads(r.stdout)
    assert r.returncode == 2 and d["error"] == "invalid_request" and expected in d["message"]


def test_a_good_file_decodes_to_the_original_frames_and_restores_the_run_metadata(kept, tmp_path, monkeypatch):
    """Latents saved with the run's metadata beyond the plan (what generation passes to latents.save)."""
    from localvideo.generation import decode_saved

    frames = []
    _keep_frames(monkeypatch, frames)
    original = json.loads(kept.sidecar.read_text())
    assert original["original_prompt"] == PROMPT and original["prompt_hints"]
    saved = latents_io.load(kept.latents)
    extra = {k: original[k] for k in ("original_prompt", "prompt_source", "prompt_hints", "prompt_changes",
                                      "prompt_enhancer", "prompt_fallback_reason")}
    path = tmp_path / "good.latents.safetensors"
    latents_io.save(path, saved.latents, saved.generator_state, saved.plan, extra=extra | {"seed": 999})
    latents_io.release(path)
    result = decode_saved(path, output=str(tmp_path / "late.mp4"), hardware=CPU)
    assert result.frames == 9 and (result.width, result.height) == (64, 64) and result.seed == 6
    assert np.array_equal(frames[0], kept.frames_encoded) and read_frames(result.path).shape == (9, 64, 64, 3)
    meta = json.loads(probe(result.path).tags["localvideo"])
    assert {k: meta[k] for k in extra} == extra and json.loads(result.sidecar.read_text())["prompt_hints"]
    assert meta["seed"] == 6 and meta["num_frames"] == 9 and meta["decoded_from"] == str(path)  # never overridden
    r = run_cli("decode", str(path), "--output", str(tmp_path / "cli.mp4"), "--json")  # and from the command line
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["frames"] == 9 and d["metadata"]["original_prompt"] == PROMPT and d["metadata"]["seed"] == 6


def test_latents_files_from_before_the_run_metadata_still_decode(kept, tmp_path, monkeypatch):
    from localvideo.generation import decode_saved

    frames = []
    _keep_frames(monkeypatch, frames)
    meta, _ = _read(kept.latents)
    path = _edited(kept, tmp_path, "old", extra=None) if "extra" in meta else kept.latents
    result = decode_saved(path, output=str(tmp_path / "old.mp4"), hardware=CPU)
    assert result.frames == 9 and np.array_equal(frames[0], kept.frames_encoded)


def test_decode_restores_the_prompt_as_typed_and_how_it_was_rewritten(kept, tmp_path):
    from localvideo.generation import decode_saved

    result = decode_saved(kept.latents, output=str(tmp_path / "again.mp4"), hardware=CPU)
    original = json.loads(kept.sidecar.read_text())
    for key in ("original_prompt", "prompt_source", "prompt_hints"):
        assert result.metadata.get(key) == original[key], key


def test_decode_refuses_an_existing_output_unless_overwrite(kept, tmp_path):
    from localvideo.errors import OutputError
    from localvideo.generation import decode_saved

    taken = tmp_path / "taken.mp4"
    taken.write_bytes(b"keep me")
    with pytest.raises(OutputError, match="exists already"):
        decode_saved(kept.latents, output=str(taken), hardware=CPU)
    assert taken.read_bytes() == b"keep me" and not list(tmp_path.glob(".*"))
    assert decode_saved(kept.latents, output=str(taken), overwrite=True, hardware=CPU).path == taken
    assert taken.stat().st_size > 100


def test_check_refuses_in_process_too(kept):
    from localvideo.catalog import get_model

    saved = latents_io.load(kept.latents)
    saved.latents = saved.latents[:, :, :1]
    with pytest.raises(InvalidRequest, match="does not fit its plan"):
        latents_io.check(saved, get_model("tiny-wan"))
