"""Shared test setup: everything offline, all state under one temporary LOCALVIDEO_HOME per session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Before huggingface_hub is imported anywhere: it reads these at import time.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts"


@pytest.fixture(scope="session")
def lv_home(tmp_path_factory) -> Path:
    """One data folder for the whole session, so tiny models are built once and reused."""
    home = tmp_path_factory.mktemp("localvideo-home")
    return home


@pytest.fixture(autouse=True)
def _isolated_home(lv_home, monkeypatch):
    monkeypatch.setenv("LOCALVIDEO_HOME", str(lv_home))
    monkeypatch.setenv("HF_HOME", str(lv_home / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(lv_home / "hf" / "hub"))
    yield


@pytest.fixture(scope="module")
def server():
    """The session's shared live `localvideo serve` (tests/_live.py), started on first use."""
    from _live import shared_server

    return shared_server()


@pytest.fixture()
def api(server):
    """An httpx client on ``server`` (a module may override either fixture, e.g. with its own server)."""
    import httpx

    with httpx.Client(base_url=server.url, timeout=30, headers=server.headers) as c:
        yield c


def run_cli(*args: str, env_extra: dict | None = None, timeout: float = 300):
    """Run the real `localvideo` console entry point in a subprocess."""
    import subprocess

    env = os.environ.copy()
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "localvideo.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)
