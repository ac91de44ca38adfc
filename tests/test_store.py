"""Model store: offline lookup, typed error naming the pull command, pull with a disk-space check.

The Hugging Face hub cannot be reached here, so pull tests use a fake hub at that boundary (file list with sizes,
and a snapshot_download that copies a local folder); nothing else is faked.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from localvideo.catalog import get_model
from localvideo.errors import DownloadError, ModelNotInstalled
from localvideo.runtime import store
from localvideo.settings import get_settings


def _fake_diffusers_folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline", "transformer": ["diffusers",
                                                       "WanTransformer3DModel"], "vae": ["diffusers", "AutoencoderKLWan"]}))
    for sub in ("transformer", "vae"):
        (path / sub).mkdir(exist_ok=True)
        (path / sub / "config.json").write_text("{}")
        (path / sub / "diffusion_pytorch_model.safetensors").write_bytes(b"0" * 1000)
    return path


def test_missing_model_is_a_typed_error_naming_the_exact_pull_command():
    spec = get_model("wan2.1-t2v-1.3b")
    with pytest.raises(ModelNotInstalled) as e:
        store.locate(spec)
    assert "localvideo models pull wan2.1-t2v-1.3b" in e.value.hint
    assert e.value.details["command"] == "localvideo models pull wan2.1-t2v-1.3b"
    assert store.find(spec) is None


def test_model_in_the_models_folder_is_found(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALVIDEO_MODELS_DIR", str(tmp_path / "models"))
    spec = get_model("cogvideox-2b")
    _fake_diffusers_folder(tmp_path / "models" / spec.repo)
    found = store.find(spec)
    assert found and found.source == "models-folder" and found.path == tmp_path / "models" / spec.repo


def test_incomplete_folder_is_not_installed(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALVIDEO_MODELS_DIR", str(tmp_path / "models"))
    spec = get_model("cogvideox-2b")
    folder = _fake_diffusers_folder(tmp_path / "models" / spec.repo)
    shutil.rmtree(folder / "vae")
    assert store.find(spec) is None


def test_model_in_the_hugging_face_cache_is_found_offline(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    spec = get_model("mochi-1")
    repo_dir = cache / ("models--" + spec.repo.replace("/", "--"))
    commit = "0" * 40
    _fake_diffusers_folder(repo_dir / "snapshots" / commit)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    found = store.find(spec)
    assert found and found.source == "hf-cache"


class FakeHub:
    """The hub boundary: a file list with sizes, and a download that copies from a local folder."""

    def __init__(self, files: dict[str, int], source: Path | None = None):
        self.files, self.source, self.downloads = files, source, []

    def model_info(self, repo, files_metadata=False):
        return SimpleNamespace(siblings=[SimpleNamespace(rfilename=n, size=s) for n, s in self.files.items()])

    def snapshot_download(self, repo, local_dir, allow_patterns, ignore_patterns):
        self.downloads.append((repo, allow_patterns, ignore_patterns))
        shutil.copytree(self.source, local_dir, dirs_exist_ok=True)
        return local_dir


def test_download_size_counts_only_the_files_the_patterns_allow():
    spec = get_model("ltx-video-2b")
    hub = FakeHub({"model_index.json": 1, "transformer/diffusion_pytorch_model.safetensors": 100,
                   "ltx-video-2b-v0.9.5.safetensors": 10_000, "vae/diffusion_pytorch_model.bin": 5_000,
                   "text_encoder/model-00001-of-00002.safetensors": 50, "tokenizer/spiece.model": 2})
    assert store.download_size(spec, api=hub) == 1 + 100 + 50 + 2


def test_pull_refuses_when_the_disk_is_too_small(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALVIDEO_MODELS_DIR", str(tmp_path / "models"))
    free = shutil.disk_usage(tmp_path).free
    hub = FakeHub({"transformer/diffusion_pytorch_model.safetensors": free * 2})
    with pytest.raises(DownloadError, match="Not enough disk space"):
        store.pull(get_model("wan2.1-t2v-1.3b"), api=hub, snapshot_download=hub.snapshot_download)
    assert hub.downloads == []


def test_pull_downloads_with_the_catalog_patterns_into_the_models_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALVIDEO_MODELS_DIR", str(tmp_path / "models"))
    source = _fake_diffusers_folder(tmp_path / "remote")
    hub = FakeHub({"model_index.json": 100, "transformer/diffusion_pytorch_model.safetensors": 1000}, source)
    spec = get_model("wan2.1-t2v-1.3b")
    installed = store.pull(spec, api=hub, snapshot_download=hub.snapshot_download)
    assert installed.path == get_settings().models / spec.repo
    assert hub.downloads[0][1] == list(spec.allow_patterns) and "*.bin" in hub.downloads[0][2]
    assert store.locate(spec) == installed.path
