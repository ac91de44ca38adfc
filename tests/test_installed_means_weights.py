"""A model is installed when its weights are there, not when its folders are.

A download interrupted after the configs (or a folder copied by hand without its weights) used to count as
installed: `models list`, /v1/models and job submission said yes and the run failed only when diffusers loaded it.
The hub is the one boundary faked here (tests/test_store.py's FakeHub); the folders are real files.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import run_cli
from localvideo.catalog import get_model
from localvideo.errors import ModelNotInstalled
from localvideo.runtime import store
from localvideo.settings import get_settings
from test_store import FakeHub

SPEC = get_model("wan2.1-t2v-1.3b")
INDEX = {"_class_name": "WanPipeline", "_diffusers_version": "0.42.1", "scheduler": ["diffusers",
         "UniPCMultistepScheduler"], "text_encoder": ["transformers", "UMT5EncoderModel"], "tokenizer":
         ["transformers", "T5TokenizerFast"], "transformer": ["diffusers", "WanTransformer3DModel"],
         "transformer_2": [None, None], "vae": ["diffusers", "AutoencoderKLWan"]}


def _configs_only(path: Path) -> Path:
    """What an interrupted pull leaves: the pipeline index and every small file, no weights."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "model_index.json").write_text(json.dumps(INDEX))
    for sub, name in (("scheduler", "scheduler_config.json"), ("tokenizer", "tokenizer_config.json"),
                      ("tokenizer", "spiece.model"), ("text_encoder", "config.json"), ("transformer", "config.json"),
                      ("vae", "config.json")):
        (path / sub).mkdir(exist_ok=True)
        (path / sub / name).write_text("{}")
    return path


def _shards(folder: Path, stem: str, n: int, present: int) -> None:
    names = [f"{stem}-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    (folder / f"{stem}.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {f"layer{i}.weight": name for i, name in enumerate(names)}}))
    for name in names[:present]:
        (folder / name).write_bytes(b"0" * 100)


def _complete(path: Path) -> Path:
    _configs_only(path)
    _shards(path / "transformer", "diffusion_pytorch_model", 2, 2)
    _shards(path / "text_encoder", "model", 3, 3)
    (path / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"0" * 100)
    return path


@pytest.fixture()
def models_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("LOCALVIDEO_MODELS_DIR", str(tmp_path / "models"))
    return tmp_path / "models"


def test_configs_without_weights_are_incomplete_and_say_what_is_missing(models_dir):
    folder = _configs_only(models_dir / SPEC.repo)
    assert store.find(SPEC) is None
    found = store.inspect(SPEC)
    assert isinstance(found, store.Incomplete) and found.path == folder
    assert found.missing == ("text_encoder weights", "transformer weights", "vae weights")
    with pytest.raises(ModelNotInstalled) as e:
        store.locate(SPEC)
    assert e.value.message == (f"wan2.1-t2v-1.3b is incomplete at {folder}: missing text_encoder weights, "
                               f"transformer weights, vae weights.")
    assert e.value.hint == "Finish the download with: localvideo models pull wan2.1-t2v-1.3b"
    assert e.value.details["missing"] == list(found.missing)


def test_a_missing_shard_is_named_and_a_complete_folder_is_installed(models_dir):
    folder = _complete(models_dir / SPEC.repo)
    assert store.find(SPEC).path == folder
    (folder / "text_encoder" / "model-00002-of-00003.safetensors").unlink()
    assert store.inspect(SPEC).missing == ("text_encoder/model-00002-of-00003.safetensors (1 of 3 weight shards)",)
    (folder / "text_encoder" / "model-00002-of-00003.safetensors").write_bytes(b"")  # created, not yet written
    assert store.find(SPEC) is None


def test_weights_in_the_names_diffusers_and_transformers_use_are_found(models_dir):
    folder = _configs_only(models_dir / SPEC.repo)
    (folder / "transformer" / "diffusion_pytorch_model.bin").write_bytes(b"0")
    (folder / "text_encoder" / "pytorch_model.bin").write_bytes(b"0")
    (folder / "vae" / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"0")
    assert store.find(SPEC) is not None
    # a .bin index beside a complete safetensors one (a hand download of the whole repo) is fine
    _shards(folder / "transformer", "diffusion_pytorch_model", 2, 2)
    (folder / "transformer" / "diffusion_pytorch_model.bin").unlink()
    (folder / "transformer" / "diffusion_pytorch_model.bin.index.json").write_text(json.dumps(
        {"weight_map": {"a": "diffusion_pytorch_model-00001-of-00002.bin"}}))
    assert store.find(SPEC) is not None
    # a shard without its index is not a loadable checkpoint
    (folder / "transformer" / "diffusion_pytorch_model.safetensors.index.json").unlink()
    assert store.inspect(SPEC).missing[0].startswith("transformer/diffusion_pytorch_model-00001-of-00002.bin")


def test_an_incomplete_hugging_face_cache_snapshot_is_incomplete(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    repo_dir = cache / ("models--" + SPEC.repo.replace("/", "--"))
    commit = "1" * 40
    snap = _complete(repo_dir / "snapshots" / commit)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    # the cache links each file to a blob; a blob still downloading leaves the link dangling
    vae = snap / "vae" / "diffusion_pytorch_model.safetensors"
    vae.unlink()
    os.symlink(repo_dir / "blobs" / "abc123", vae)
    found = store.inspect(SPEC)
    assert isinstance(found, store.Incomplete) and found.source == "hf-cache" and found.missing == ("vae weights",)
    with pytest.raises(ModelNotInstalled, match="incomplete in the Hugging Face cache at"):
        store.locate(SPEC)
    (repo_dir / "blobs").mkdir()
    (repo_dir / "blobs" / "abc123").write_bytes(b"0" * 10)
    assert store.find(SPEC).source == "hf-cache"


def test_a_finished_pull_is_recorded_and_a_file_removed_later_makes_it_incomplete(models_dir, tmp_path):
    remote = _complete(tmp_path / "remote")
    hub = FakeHub({"model_index.json": 100}, remote)
    installed = store.pull(SPEC, api=hub, snapshot_download=hub.snapshot_download)
    marker = json.loads((installed.path / store.PULL_MARKER).read_text())
    assert marker["repo"] == SPEC.repo and marker["files"]["tokenizer/spiece.model"] == 2
    (installed.path / "tokenizer" / "spiece.model").unlink()  # no weights, but the tokenizer cannot load without it
    assert store.inspect(SPEC).missing == ("tokenizer/spiece.model",)
    store.pull(SPEC, api=hub, snapshot_download=hub.snapshot_download)  # the fix the error names
    assert store.find(SPEC) is not None


def test_a_pull_that_ends_without_the_weights_says_what_is_missing(models_dir, tmp_path):
    from localvideo.errors import DownloadError

    remote = _configs_only(tmp_path / "remote")
    hub = FakeHub({"model_index.json": 100}, remote)
    with pytest.raises(DownloadError, match="incomplete: missing text_encoder weights, transformer weights"):
        store.pull(SPEC, api=hub, snapshot_download=hub.snapshot_download)
    assert not (models_dir / SPEC.repo / store.PULL_MARKER).exists()


def test_the_cli_and_the_job_service_report_a_partial_download_as_not_installed(models_dir):
    folder = _configs_only(models_dir / SPEC.repo)
    env = {"LOCALVIDEO_MODELS_DIR": str(models_dir)}
    rows = {r["id"]: r for r in json.loads(run_cli("models", "list", "--json", env_extra=env).stdout)}
    assert rows[SPEC.id]["installed"] is False
    doctor = {m["model"]: m for m in json.loads(run_cli("doctor", "--json", env_extra=env).stdout)["models"]}
    assert doctor[SPEC.id]["installed"] is False
    assert doctor[SPEC.id]["incomplete"] == "incomplete: missing text_encoder weights, transformer weights, vae weights"
    r = run_cli("generate", "a fox", "--model", SPEC.id, "--steps", "1", env_extra=env)
    assert r.returncode == 3 and "Traceback" not in r.stderr
    assert f"{SPEC.id} is incomplete at {folder}: missing text_encoder weights" in r.stderr
    assert f"localvideo models pull {SPEC.id}" in r.stderr

    from localvideo.hardware import Hardware
    from localvideo.jobs.service import JobService

    svc = JobService(get_settings(), hardware=Hardware.assumed(24), workers=1)
    assert {m["id"]: m for m in svc.models()}[SPEC.id]["installed"] is False
    with pytest.raises(ModelNotInstalled):
        svc.submit(prompt="a fox", model=SPEC.id)


def test_tiny_models_built_here_count_as_installed():
    for model in ("tiny-wan", "tiny-ltx", "tiny-cogvideox"):
        spec = get_model(model)
        path = store.locate(spec)  # built on first use (reused from the session's home)
        found = store.find(spec)
        assert found is not None and found.source == "tiny" and found.path == path, model


MISSING = "incomplete: missing text_encoder weights, transformer weights, vae weights"


def test_models_list_and_show_say_what_a_partial_download_lacks_and_how_to_finish_it(models_dir):
    folder = _configs_only(models_dir / SPEC.repo)
    env = {"LOCALVIDEO_MODELS_DIR": str(models_dir), "COLUMNS": "400"}
    rows = {r["id"]: r for r in json.loads(run_cli("models", "list", "--json", env_extra=env).stdout)}
    row = rows[SPEC.id]
    assert (row["installed"], row["incomplete"], row["path"], row["source"]) == (False, MISSING, str(folder),
                                                                                 "models-folder")
    absent = rows["wan2.1-t2v-14b"]  # nothing of it here: not installed, not incomplete
    assert (absent["installed"], absent["incomplete"], absent["path"]) == (False, None, None)
    table = run_cli("models", "list", env_extra=env).stdout
    line = next(ln for ln in table.splitlines() if f" {SPEC.id} " in ln)
    assert MISSING in line
    shown = json.loads(run_cli("models", "show", SPEC.id, "--json", env_extra=env).stdout)
    assert (shown["installed"], shown["incomplete"], shown["path"]) == (False, MISSING, str(folder))
    text = run_cli("models", "show", SPEC.id, env_extra=env).stdout
    assert MISSING in text and f"finish the download with: localvideo models pull {SPEC.id}" in text
    assert "install with" not in text


def test_the_rest_api_refuses_a_job_for_a_partial_download_naming_what_is_missing(models_dir, lv_home, tmp_path):
    from importlib import metadata

    from fastapi.testclient import TestClient

    from localvideo.api.app import create_app
    from localvideo.hardware import Hardware
    from localvideo.jobs.service import JobService
    from localvideo.settings import Settings

    folder = _configs_only(models_dir / SPEC.repo)
    settings = Settings(home=lv_home, models_dir=models_dir, jobs_db_path=tmp_path / "jobs.db",
                        outputs_dir=tmp_path / "outputs")
    svc = JobService(settings, hardware=Hardware.assumed(24), workers=1)  # not started: nothing may run
    client = TestClient(create_app(settings, service=svc), base_url="http://127.0.0.1:8765")
    try:
        for path, body in (("/v1/jobs", {"prompt": "a fox", "model": SPEC.id, "steps": 1}),
                           ("/v1/jobs/story", {"script": "[2s] a fox wakes\n[2s] the fox runs", "model": SPEC.id})):
            r = client.post(path, json=body)
            assert r.status_code == 409, (path, r.text)
            err = r.json()
            assert err["error"] == "model_not_installed" and err["message"] == (
                f"{SPEC.id} is incomplete at {folder}: missing text_encoder weights, transformer weights, "
                f"vae weights."), path
            assert err["hint"] == f"Finish the download with: localvideo models pull {SPEC.id}"
            assert err["missing"] == ["text_encoder weights", "transformer weights", "vae weights"]
        assert client.get("/v1/jobs").json()["total"] == 0
        rows = {m["id"]: m for m in client.get("/v1/models").json()}
        assert (rows[SPEC.id]["installed"], rows[SPEC.id]["incomplete"]) == (False, MISSING)
        assert rows[SPEC.id]["pull_command"] == f"localvideo models pull {SPEC.id}"
        assert rows["wan2.1-t2v-14b"]["incomplete"] is None and rows["tiny-wan"]["incomplete"] is None
        software = client.get("/v1/system").json()["software"]
        assert software["torch"] == metadata.version("torch") and software["torch_build"]
        assert software["diffusers"] == metadata.version("diffusers")
    finally:
        client.close()
        svc.close()


def test_the_studio_shows_a_partial_download_as_incomplete_and_the_software_versions(models_dir, lv_home, tmp_path):
    from importlib import metadata

    from localvideo.hardware import Hardware
    from localvideo.jobs.service import JobService
    from localvideo.settings import Settings
    from localvideo.ui import views

    _configs_only(models_dir / SPEC.repo)
    settings = Settings(home=lv_home, models_dir=models_dir, jobs_db_path=tmp_path / "jobs.db",
                        outputs_dir=tmp_path / "outputs")
    svc = JobService(settings, hardware=Hardware.assumed(24), workers=1)
    try:
        rows = svc.models()  # what the studio renders
        row = next(r for r in rows if r["id"] == SPEC.id)
        assert views.model_choice_label(row).startswith(f"{SPEC.id} · incomplete (")
        info = views.model_info_html(row, SPEC)
        assert f">incomplete</span> {MISSING}: finish the download" in info and "not installed" not in info
        table = views.models_html(rows, {}, {})
        mine = table.split(f'<tr data-model="{SPEC.id}">')[1].split("</tr>")[0]
        assert ">incomplete</span>" in mine and MISSING in mine and "not installed" not in mine
        other = table.split('<tr data-model="wan2.1-t2v-14b">')[1].split("</tr>")[0]
        assert ">not installed</span>" in other
        html = views.system_html(svc.system(), rows, False)
        assert (f"<li>Software: torch {metadata.version('torch')} (" in html
                and f"diffusers {metadata.version('diffusers')}" in html)
    finally:
        svc.close()


def test_the_not_installed_message_names_only_the_places_looked_in(tmp_path):
    from localvideo.catalog import get_model
    from localvideo.runtime.store import not_installed
    from localvideo.settings import Settings

    spec = get_model("wan2.1-t2v-1.3b")
    with_cache = not_installed(spec, Settings(home=tmp_path, use_hf_cache=True)).message
    without = not_installed(spec, Settings(home=tmp_path, use_hf_cache=False)).message
    assert "and the Hugging Face cache" in with_cache and "Hugging Face" not in without
    assert str(tmp_path / "models") in without
