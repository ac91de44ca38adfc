"""Where localvideo keeps its state. Everything lives under one folder, ``LOCALVIDEO_HOME``.

Layout under home: ``models/`` (downloaded weights), ``tiny/`` (locally built random-weight test models),
``outputs/`` (videos), later ``jobs.db``. Each sub-folder can be overridden on its own with
``LOCALVIDEO_MODELS_DIR`` etc., but pointing ``LOCALVIDEO_HOME`` elsewhere moves all of them at once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_home() -> Path:
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return base / "localvideo"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LOCALVIDEO_", extra="ignore")

    home: Path = Field(default_factory=_default_home)
    models_dir: Path | None = None
    tiny_dir: Path | None = None
    outputs_dir: Path | None = None
    # Also look for weights in the Hugging Face cache (HF_HOME / HF_HUB_CACHE) when they are not in models_dir.
    use_hf_cache: bool = True
    # Memory budget for pipelines kept warm in one process (GB of host RAM / VRAM). None = derived from hardware.
    cache_budget_gb: float | None = None
    # -- job service and REST API (localvideo serve) --
    jobs_db_path: Path | None = None  # SQLite job store; default <home>/jobs.db
    workers: int | None = None  # job worker threads; None = one per GPU, or one on a CPU-only machine
    api_token: str | None = None  # required (Authorization: Bearer) whenever the API binds a non-loopback address
    api_cors_origins: list[str] = Field(default_factory=list)  # CORS allow-list; empty = CORS off
    api_max_body_bytes: int = 1_000_000  # JSON request bodies
    api_max_upload_bytes: int = 20_000_000  # image uploads (bytes on the wire)
    api_max_upload_pixels: int = 40_000_000  # image uploads (width x height), refuses decompression bombs
    # -- scale-out (docs/cluster.md): where the job service's jobs run --
    executor: Literal["local", "ray"] = "local"  # local: in this process; ray: on Ray actors (localvideo[cluster])
    ray_address: str | None = None  # auto, HOST:PORT or ray://…; None starts a Ray instance inside the server
    ray_actors: int | None = None  # actors to start; None = one per GPU in the cluster, else ray_cpu_actors
    ray_cpu_actors: int = 2  # CPU actors on a cluster without GPUs
    ray_max_retries: int = 2  # times a job runs again on another actor after the one running it died
    ray_stream_outputs: bool = False  # actors write to their node's outputs and the head pulls the files over Ray
    shared_dir: Path | None = None  # where actors write job files (same path on every node); None = outputs

    @property
    def models(self) -> Path:
        return Path(self.models_dir) if self.models_dir else self.home / "models"

    @property
    def tiny(self) -> Path:
        return Path(self.tiny_dir) if self.tiny_dir else self.home / "tiny"

    @property
    def outputs(self) -> Path:
        return Path(self.outputs_dir) if self.outputs_dir else self.home / "outputs"

    @property
    def jobs_db(self) -> Path:
        return Path(self.jobs_db_path) if self.jobs_db_path else self.home / "jobs.db"


def get_settings() -> Settings:
    """Read settings from the environment now (not cached, so tests and users can change them)."""
    return Settings()
