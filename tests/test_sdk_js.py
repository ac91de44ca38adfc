"""The TypeScript SDK (sdk/js): npm ci, tsc build, then node's test runner against the live server."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from _live import ROOT, shared_server

JS = ROOT / "sdk" / "js"
NODE = shutil.which("node")
NPM = shutil.which("npm")


def _run(cmd: list[str], env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=JS, capture_output=True, text=True, timeout=timeout, env=env)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return r


@pytest.mark.skipif(NODE is None or NPM is None, reason="node/npm are not installed (apt-get install nodejs npm)")
def test_typescript_sdk_against_the_live_server():
    lock = (JS / "package-lock.json").read_text()
    installed = JS / "node_modules" / "typescript" / "package.json"
    if not installed.is_file() or '"version": "' + _locked_ts(lock) not in installed.read_text():
        _run([NPM, "ci", "--no-audit", "--no-fund"])
    _run([NPM, "run", "build"])
    dts = (JS / "dist" / "index.d.ts").read_text()
    model_info = _interface(dts, "ModelInfo")
    for field in ("supports_last_image: boolean;", "requires_last_image: boolean;"):
        assert field in model_info, f"ModelInfo in the published types lacks {field}"
    _same_fields(dts)
    env = {**os.environ, "LOCALVIDEO_URL": shared_server().url}
    env.pop("LOCALVIDEO_API_TOKEN", None)
    r = _run([NODE, "--test", "test/"], env=env, timeout=400)
    out = r.stdout
    assert "# fail 0" in out and "# skipped 0" in out and "# pass 4" in out, out[-3000:]


def _interface(dts: str, name: str) -> str:
    body = dts[dts.index(f"interface {name} "):]
    return body[:body.index("\n}")]


def _fields(block: str) -> set[str]:
    import re

    return set(re.findall(r"^\s+(?:readonly )?(\w+)\??:", block, re.M))


def _same_fields(dts: str) -> None:
    """The published types name every field the server takes and gives: a request type per REST body (JobCreate,
    StoryCreate, AnimateCreate), JobResult as the job service fills it and ModelInfo as /v1/models rows."""
    from localvideo.api.schemas import AnimateCreate, JobCreate, ModelOut, StoryCreate
    from localvideo.jobs.models import JobProgress, JobResult

    for ts, model in (("JobRequest", JobCreate), ("StoryRequest", StoryCreate), ("AnimationRequest", AnimateCreate),
                      ("JobResult", JobResult), ("JobProgress", JobProgress), ("ModelInfo", ModelOut)):
        assert _fields(_interface(dts, ts)) == set(model.model_fields), (ts, _fields(_interface(dts, ts)) ^
                                                                          set(model.model_fields))


def _locked_ts(lock: str) -> str:
    import json

    return json.loads(lock)["packages"]["node_modules/typescript"]["version"]
