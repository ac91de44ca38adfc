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
import re
import shutil
import time
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


# Components that are code and small files, not weights: schedulers, tokenizers, image processors.
_NO_WEIGHTS_CLASSES = ("Scheduler", "Tokenizer", "Processor", "FeatureExtractor")
_NO_WEIGHTS_NAMES = ("scheduler", "tokenizer", "feature_extractor", "image_processor", "processor")
# Unsharded weight files, as diffusers and transformers name them; sharded ones come with a *.index.json.
_WEIGHT_FILES = ("diffusion_pytorch_model*.safetensors", "diffusion_pytorch_model*.bin", "model*.safetensors",
                 "pytorch_model*.bin")
_SHARD = re.compile(r"-\d{5}-of-\d{5}\.")
PULL_MARKER = ".localvideo-pull.json"  # written by pull() once every file is there: names and sizes


def _needs_weights(name: str, value: list) -> bool:
    cls = str(value[1]) if len(value) > 1 and value[1] else ""
    return not (name.startswith(_NO_WEIGHTS_NAMES) or cls.endswith(_NO_WEIGHTS_CLASSES)
                or any(c in cls for c in ("Tokenizer", "ImageProcessor")))


def _file_ok(path: Path) -> bool:
    """A regular file (a Hugging Face cache symlink whose blob is there) with something in it."""
    try:
        return path.is_file() and path.stat().st_size > 0
    except OSError:
        return False


def _weights_missing(sub: Path) -> str | None:
    """What is missing from a component folder that needs weights, or None: it has an unsharded weight file, or
    every shard one of its ``*.index.json`` files lists (a hand download may hold a .bin index beside the
    safetensors one)."""
    if any(_file_ok(f) and not _SHARD.search(f.name) for pattern in _WEIGHT_FILES for f in sub.glob(pattern)):
        return None
    first = None
    for index in sorted(sub.glob("*.index.json"), key=lambda f: ("safetensors" not in f.name, f.name)):
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            first = first or f"{sub.name}/{index.name} (unreadable)"
            continue
        lost = [s for s in shards if not _file_ok(sub / s)]
        if not lost and shards:
            return None
        if first is None:
            more = f" and {len(lost) - 1} more" if len(lost) > 1 else ""
            first = f"{sub.name}/{lost[0]}{more} ({len(lost)} of {len(shards)} weight shards)" if lost else \
                f"{sub.name}/{index.name} (lists no shards)"
    return first or f"{sub.name} weights"


def missing_parts(path: Path) -> list[str]:
    """What a diffusers folder lacks to load, in words ("transformer weights", "vae/diffusion_pytorch_model.
    safetensors", "model_index.json"); empty when it is complete.

    Complete means model_index.json, every listed component folder, the weights of each component that has any
    (every shard a ``*.index.json`` lists, else an unsharded weight file), and every file a finished
    ``localvideo models pull`` recorded. Schedulers, tokenizers and image processors carry no weights."""
    path = Path(path)
    index = path / "model_index.json"
    if not index.is_file():
        return ["model_index.json"]
    try:
        data = json.loads(index.read_text())
    except (OSError, ValueError):
        return ["model_index.json (unreadable)"]
    if not isinstance(data, dict):
        return ["model_index.json (not a pipeline index)"]
    missing = []
    for name, value in data.items():
        if name.startswith("_") or not isinstance(value, list) or not value or value[0] is None:
            continue
        sub = path / name
        if not sub.is_dir() or not any(sub.iterdir()):
            missing.append(f"{name}/")
        elif _needs_weights(name, value):
            lost = _weights_missing(sub)
            if lost:
                missing.append(lost)
    marker = path / PULL_MARKER
    if not missing and marker.is_file():  # files a finished pull had, removed since (a tokenizer file, a config)
        try:
            files = json.loads(marker.read_text()).get("files", {})
            gone = [n for n, size in sorted(files.items()) if not (path / n).is_file()
                    or (path / n).stat().st_size != int(size)]
        except (OSError, ValueError, TypeError, AttributeError):
            gone = []  # an unreadable marker proves nothing either way: the checks above stand
        if gone:
            missing.append(gone[0] + (f" and {len(gone) - 1} more files" if len(gone) > 1 else ""))
    return missing


def _complete(path: Path) -> bool:
    """A diffusers folder is usable when nothing it needs to load is missing (:func:`missing_parts`)."""
    return not missing_parts(path)


def _usable(spec, path: Path) -> bool:
    """Complete for this kind of model: a spec may bring its own check (``is_complete(path)``, e.g. a transformers
    causal-LM folder for the prompt enhancer); otherwise it is a diffusers folder."""
    check = getattr(spec, "is_complete", None)
    return check(path) if callable(check) else _complete(path)


def models_folder_path(spec: ModelSpec, settings: Settings | None = None) -> Path:
    settings = settings or get_settings()
    return settings.models / spec.repo


@dataclass(frozen=True)
class Incomplete:
    """A copy of the model that is there only in part (an interrupted pull, files removed): it does not load."""

    path: Path
    source: str  # models-folder | hf-cache | tiny
    missing: tuple[str, ...]

    def describe(self) -> str:
        return "incomplete: missing " + ", ".join(self.missing)


def _present(path: Path) -> bool:
    """Something of a model is here (a folder with files in it), complete or not."""
    try:
        return path.is_dir() and any(path.iterdir())
    except OSError:
        return False


def inspect(spec: ModelSpec, settings: Settings | None = None) -> Installed | Incomplete | None:
    """The model on this machine: :class:`Installed` (loads), :class:`Incomplete` (a copy lacking files: what is
    missing) or None (nothing of it). A complete copy anywhere wins over an incomplete one. Never touches the
    network."""
    settings = settings or get_settings()
    if spec.tiny:
        path = settings.tiny / spec.id
        missing = missing_parts(path)
        if not missing:
            return Installed(path, "tiny", _folder_size(path))
        return Incomplete(path, "tiny", tuple(missing)) if _present(path) else None
    partial = None
    local = models_folder_path(spec, settings)
    if _usable(spec, local):
        return Installed(local, "models-folder", _folder_size(local))
    if _present(local):
        partial = Incomplete(local, "models-folder", tuple(_missing(spec, local)))
    if settings.use_hf_cache:
        try:
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(spec.repo, allow_patterns=list(spec.allow_patterns),
                                          ignore_patterns=list(spec.ignore_patterns), local_files_only=True,
                                          cache_dir=os.environ.get("HF_HUB_CACHE") or None))
        except Exception:  # LocalEntryNotFoundError and friends: not cached
            path = None
        if path is not None:
            if _usable(spec, path):
                return Installed(path, "hf-cache", _folder_size(path))
            if partial is None and _present(path):
                partial = Incomplete(path, "hf-cache", tuple(_missing(spec, path)))
    return partial


def _missing(spec, path: Path) -> list[str]:
    """What is missing, in words; a spec with its own completeness check says only "files"."""
    if callable(getattr(spec, "is_complete", None)):
        return ["files (config, tokenizer or weight shards)"]
    return missing_parts(path) or ["files"]


def find(spec: ModelSpec, settings: Settings | None = None) -> Installed | None:
    """Where the model's weights are on this machine, or None (an incomplete copy is None too: see
    :func:`inspect`). Never touches the network."""
    found = inspect(spec, settings)
    return found if isinstance(found, Installed) else None


def not_installed(spec: ModelSpec, settings: Settings | None = None,
                  found: Installed | Incomplete | None = None) -> ModelNotInstalled:
    """The error for a model that cannot load here: not installed, or incomplete (naming what is missing)."""
    settings = settings or get_settings()
    found = inspect(spec, settings) if found is None else found
    if isinstance(found, Incomplete):
        where = "in the Hugging Face cache at" if found.source == "hf-cache" else "at"
        return ModelNotInstalled(
            f"{spec.id} is incomplete {where} {found.path}: missing {', '.join(found.missing)}.",
            hint=f"Finish the download with: {pull_command(spec)}",
            model=spec.id, command=pull_command(spec), missing=list(found.missing), path=str(found.path))
    return ModelNotInstalled(
        f"{spec.id} is not installed (looked in {models_folder_path(spec, settings)}"
        f"{' and the Hugging Face cache' if settings.use_hf_cache else ''}).",
        hint=f"Download it with: {pull_command(spec)}",
        model=spec.id,
        command=pull_command(spec),
    )


def locate(spec: ModelSpec, settings: Settings | None = None) -> Path:
    """Path of a usable copy of the model. Tiny models are built on first use; real ones must have been pulled."""
    settings = settings or get_settings()
    if spec.tiny:
        from .tiny import ensure_tiny_pipeline

        # the build is named by the id (tiny-wan → "wan", tiny-wan-flf2v → "wan-flf2v"), as find() looks it up
        return ensure_tiny_pipeline(spec.id.removeprefix("tiny-"), settings.tiny)
    found = inspect(spec, settings)
    if not isinstance(found, Installed):
        raise not_installed(spec, settings, found)
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
        raise DownloadError(f"The download of {spec.repo} is incomplete: missing {', '.join(_missing(spec, dest))}.",
                            hint=f"Run `{pull_command(spec)}` again; finished files are kept.")
    write_pull_marker(dest, spec)
    return Installed(dest, "models-folder", _folder_size(dest))


def write_pull_marker(dest: Path, spec: ModelSpec) -> None:
    """Record the files of a finished pull (names and sizes): a file removed later makes the copy incomplete
    (:func:`missing_parts`). Written atomically; hidden files (the hub's download cache) are left out."""
    files = {}
    for f in sorted(dest.rglob("*")):
        rel = f.relative_to(dest)
        if f.is_file() and not any(part.startswith(".") for part in rel.parts):
            files[rel.as_posix()] = f.stat().st_size
    tmp = dest / f"{PULL_MARKER}.partial"
    tmp.write_text(json.dumps({"repo": spec.repo, "model": spec.id, "pulled_at": int(time.time()),
                               "files": files}, indent=1) + "\n")
    os.replace(tmp, dest / PULL_MARKER)
