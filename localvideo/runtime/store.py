"""The model store: where weights are, offline, and how to get them when asked.

Lookup order for a real model: ``<models folder>/<org>/<name>`` (what ``localvideo models pull`` writes), then the
Hugging Face cache (``HF_HUB_CACHE``), with ``local_files_only`` — nothing is ever downloaded implicitly.
Tiny models are built on this machine into ``<home>/tiny/`` the first time they are used.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..catalog import ModelSpec
from ..errors import DownloadError, ModelNotInstalled
from ..settings import Settings, get_settings

log = logging.getLogger(__name__)
DISK_MARGIN = 1.05  # ask for 5 % more free space than the files need


@dataclass(frozen=True)
class Installed:
    path: Path
    source: str  # models-folder | hf-cache | tiny
    size_bytes: int


def pull_command(spec: ModelSpec) -> str:
    return f"localvideo models pull {spec.id}"


def _folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _complete(path: Path) -> bool:
    """A diffusers folder is usable when model_index.json exists and each listed component folder has files."""
    index = path / "model_index.json"
    if not index.is_file():
        return False
    try:
        data = json.loads(index.read_text())
    except (OSError, ValueError):
        return False
    for name, value in data.items():
        if name.startswith("_") or not isinstance(value, list) or value[0] is None:
            continue
        sub = path / name
        if not sub.is_dir() or not any(sub.iterdir()):
            return False
    return True


def _usable(spec, path: Path) -> bool:
    """Complete for this kind of model: a spec may bring its own check (``is_complete(path)``, e.g. a transformers
    causal-LM folder for the prompt enhancer); otherwise it is a diffusers folder."""
    check = getattr(spec, "is_complete", None)
    return check(path) if callable(check) else _complete(path)


def models_folder_path(spec: ModelSpec, settings: Settings | None = None) -> Path:
    settings = settings or get_settings()
    return settings.models / spec.repo


def find(spec: ModelSpec, settings: Settings | None = None) -> Installed | None:
    """Where the model's weights are on this machine, or None. Never touches the network."""
    settings = settings or get_settings()
    if spec.tiny:
        path = settings.tiny / spec.id
        return Installed(path, "tiny", _folder_size(path)) if _complete(path) else None
    local = models_folder_path(spec, settings)
    if _usable(spec, local):
        return Installed(local, "models-folder", _folder_size(local))
    if settings.use_hf_cache:
        try:
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(spec.repo, allow_patterns=list(spec.allow_patterns),
                                          ignore_patterns=list(spec.ignore_patterns), local_files_only=True,
                                          cache_dir=os.environ.get("HF_HUB_CACHE") or None))
        except Exception:  # LocalEntryNotFoundError and friends: not cached
            return None
        if _usable(spec, path):
            return Installed(path, "hf-cache", _folder_size(path))
    return None


def locate(spec: ModelSpec, settings: Settings | None = None) -> Path:
    """Path of a usable copy of the model. Tiny models are built on first use; real ones must have been pulled."""
    settings = settings or get_settings()
    if spec.tiny:
        from .tiny import ensure_tiny_pipeline

        # the build is named by the id (tiny-wan → "wan", tiny-wan-flf2v → "wan-flf2v"), as find() looks it up
        return ensure_tiny_pipeline(spec.id.removeprefix("tiny-"), settings.tiny)
    found = find(spec, settings)
    if found is None:
        raise ModelNotInstalled(
            f"{spec.id} is not installed (looked in {models_folder_path(spec, settings)} and the Hugging Face cache).",
            hint=f"Download it with: {pull_command(spec)}",
            model=spec.id,
            command=pull_command(spec),
        )
    return found.path


# -- downloading (only when asked) -----------------------------------------------------------------------------

def _selected(files: list[tuple[str, int]], spec: ModelSpec) -> list[tuple[str, int]]:
    def allowed(name: str) -> bool:
        return any(fnmatch.fnmatch(name, p) for p in spec.allow_patterns) and not any(
            fnmatch.fnmatch(name, p) for p in spec.ignore_patterns)

    return [(n, s) for n, s in files if allowed(n)]


def download_size(spec: ModelSpec, api=None) -> int:
    """Bytes the pull will fetch, from the hub's file list filtered by the catalog's patterns."""
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    info = api.model_info(spec.repo, files_metadata=True)
    files = [(s.rfilename, int(s.size or 0)) for s in (info.siblings or [])]
    return sum(size for _, size in _selected(files, spec))


def pull(spec: ModelSpec, settings: Settings | None = None, api=None, snapshot_download=None) -> Installed:
    """Download a model into the models folder (resumable), after checking there is room for it.

    ``api``/``snapshot_download`` default to huggingface_hub's; tests pass fakes because the hub is unreachable here.
    """
    settings = settings or get_settings()
    if spec.tiny:
        path = locate(spec, settings)
        return Installed(path, "tiny", _folder_size(path))
    dest = models_folder_path(spec, settings)
    try:
        need = download_size(spec, api)
    except Exception as e:
        raise DownloadError(f"Could not read the file list of {spec.repo} from the Hugging Face hub: {e}",
                            hint="Check your network connection (and HF_TOKEN for gated models), then retry.") from e
    have = _folder_size(dest) if dest.exists() else 0
    probe_dir = dest
    while not probe_dir.exists():
        probe_dir = probe_dir.parent
    free = shutil.disk_usage(probe_dir).free
    if (need - have) * DISK_MARGIN > free:
        raise DownloadError(
            f"Not enough disk space for {spec.id}: it needs {need / 1e9:.1f} GB and {free / 1e9:.1f} GB is free "
            f"on {probe_dir}.",
            hint="Free some space or point LOCALVIDEO_MODELS_DIR at a larger disk.",
        )
    if snapshot_download is None:
        from huggingface_hub import snapshot_download
    dest.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s (%.1f GB) into %s", spec.repo, need / 1e9, dest)
    try:
        snapshot_download(spec.repo, local_dir=str(dest), allow_patterns=list(spec.allow_patterns),
                          ignore_patterns=list(spec.ignore_patterns))
    except Exception as e:
        raise DownloadError(f"Downloading {spec.repo} failed: {e}",
                            hint=f"Run `{pull_command(spec)}` again; finished files are kept.") from e
    if not _usable(spec, dest):
        raise DownloadError(f"The download of {spec.repo} is incomplete.",
                            hint=f"Run `{pull_command(spec)}` again; finished files are kept.")
    return Installed(dest, "models-folder", _folder_size(dest))
