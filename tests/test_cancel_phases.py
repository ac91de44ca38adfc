"""Cancel is honoured while the VAE decodes and while the MP4 is encoded, not only while denoising.

Before, a cancel in phase ``decoding`` or ``encoding`` was accepted (202, ``cancel_requested``) and ignored: the job
ran on and ended ``succeeded``. Now the run checks the cancel before each VAE decoder block (per latent frame for Wan)
and before each encoded frame, and a cancelled run leaves nothing: no video, no sidecar, no temp file, no latents.

Everything is real (tiny pipelines, the VAE, PyAV, a uvicorn server on loopback). To cancel at a known moment, the
tests pause the worker in-process — at a progress event, or at the Nth call of the VAE decoder (a global torch
forward pre-hook that only waits) — cancel over HTTP, then let it go on.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest
import torch

from _live import free_port, sse_jobs
from localvideo.errors import Cancelled
from localvideo.generation import generate
from localvideo.hardware import Hardware
from localvideo.jobs import JobService
from localvideo.jobs.models import STOPPED_MESSAGES
from localvideo.settings import Settings

CPU = Hardware.assumed(None, ram_gb=16)
JOB = {"model": "tiny-wan", "steps": 2, "width": 128, "height": 128, "num_frames": 33, "seed": 7}


def _files(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


@pytest.fixture()
def settings(lv_home, tmp_path) -> Settings:
    # tiny models are shared by the session; the home (latents, uploads), database and outputs are this test's own
    return Settings(home=tmp_path / "home", tiny_dir=lv_home / "tiny", jobs_db_path=tmp_path / "jobs.db",
                    outputs_dir=tmp_path / "outputs")


class _DecoderGate:
    """Pauses the thread that calls the VAE decoder (any module whose class is ``class_name``) at its ``at``-th call:
    ``reached`` is set, and the call waits for ``release``. Only waits; the decoder then runs as it would have."""

    def __init__(self, class_name: str = "WanDecoder3d", at: int = 2) -> None:
        self.class_name, self.at, self.calls = class_name, at, 0
        self.reached, self.release = threading.Event(), threading.Event()
        self._handle = None

    def __enter__(self) -> "_DecoderGate":
        def hook(module, _args):
            if type(module).__name__ == self.class_name:
                self.calls += 1
                if self.calls == self.at:
                    self.reached.set()
                    assert self.release.wait(60), "the test never let the decoder go on"

        self._handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self._handle.remove()


class _PhaseGate:
    """Pauses the job's worker right after it published progress in ``phase`` until ``release``."""

    def __init__(self, svc: JobService, phase: str) -> None:
        self.reached, self.release = threading.Event(), threading.Event()
        inner = svc._progress

        def progress(job_id, p):
            inner(job_id, p)
            if p.phase == phase and not self.reached.is_set():
                self.reached.set()
                assert self.release.wait(60), "the test never let the worker go on"

        svc._progress = progress


class _Api:
    """The job service behind a real uvicorn server on a loopback port, in this process (so gates can pause it)."""

    def __init__(self, settings: Settings) -> None:
        import uvicorn

        from localvideo.api.app import create_app

        self.svc = JobService(settings, hardware=CPU, workers=1)
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(create_app(settings, service=self.svc), host="127.0.0.1",
                                                    port=self.port, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> httpx.Client:
        self.svc.start()
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30)
        return self.client

    def __exit__(self, *exc) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(30)
        self.svc.close()


def _cancel_while_paused(api: httpx.Client, job_id: str, gate, phase: str) -> dict:
    assert gate.reached.wait(120), "the job never reached the gate"
    now = api.get(f"/v1/jobs/{job_id}").json()
    assert now["state"] == "running" and now["progress"]["phase"] == phase
    r = api.post(f"/v1/jobs/{job_id}/cancel")
    assert r.status_code == 202 and r.json()["cancel_requested"] is True
    gate.release.set()
    return sse_jobs(api, job_id, timeout=120)[-1][2]


def _assert_cancelled_with_nothing_left(api: httpx.Client, settings: Settings, final: dict, phase: str) -> None:
    assert final["state"] == "cancelled", f"the cancel in phase {phase} was ignored: {final['state']}"
    assert final["error"]["error"] == "cancelled" and final["result"] is None
    p = final["progress"]
    assert p["phase"] == phase, "it stopped in that phase"
    assert p["eta_s"] is None and p["message"] == STOPPED_MESSAGES["cancelled"], "stopped progress does not look live"
    r = api.get(f"/v1/jobs/{final['id']}/video")
    assert r.status_code == 404 and r.json()["message"].endswith("it was cancelled.")
    assert _files(settings.outputs) == [], "no video, sidecar, thumbnail or temp file"
    assert _files(settings.home / "latents") == [], "the saved latents went with the cancel"


def test_a_job_cancelled_while_the_vae_decodes_ends_cancelled_with_no_video(settings):
    with _Api(settings) as api, _DecoderGate(at=2) as gate:
        job = api.post("/v1/jobs", json={"prompt": "a heron lifts off a pond", **JOB}).json()
        final = _cancel_while_paused(api, job["id"], gate, "decoding")
        _assert_cancelled_with_nothing_left(api, settings, final, "decoding")
    # 33 frames are 9 Wan latent frames, one decoder call each: it stopped in the one it was paused at
    assert gate.calls == 2, f"the decoder ran on after the cancel ({gate.calls} calls)"


def test_a_job_cancelled_while_encoding_ends_cancelled_with_no_video(settings):
    server = _Api(settings)
    gate = _PhaseGate(server.svc, "encoding")
    with server as api:
        job = api.post("/v1/jobs", json={"prompt": "a heron lifts off a pond", **JOB}).json()
        final = _cancel_while_paused(api, job["id"], gate, "encoding")
        _assert_cancelled_with_nothing_left(api, settings, final, "encoding")


def test_generate_cancelled_mid_decode_raises_and_leaves_nothing(settings, tmp_path):
    out = tmp_path / "out"
    seen = {"phase": None, "checks": 0}

    def on_progress(p):
        seen["phase"] = p.phase

    def cancel() -> bool:  # asked at each denoising step, then before each VAE decoder block: yes on the 20th
        if seen["phase"] == "decoding":
            seen["checks"] += 1
        return seen["checks"] >= 20

    with _DecoderGate(at=10**9) as calls, pytest.raises(Cancelled, match="while decoding"):
        generate("a heron lifts off a pond", **JOB, output=str(out / "heron.mp4"), on_progress=on_progress,
                 cancel=cancel, settings=settings)
    assert seen["phase"] == "decoding", "it never reached encoding"
    assert 1 <= calls.calls < 9, f"stopped part-way through the 9 latent frames ({calls.calls} decoder calls)"
    assert _files(out) == [] and _files(settings.home / "latents") == []


def test_generate_cancelled_mid_encode_removes_the_partial_mp4(settings, tmp_path):
    out = tmp_path / "out"
    seen = {"phase": None, "checks": 0, "partial": []}

    def on_progress(p):
        seen["phase"] = p.phase

    def cancel() -> bool:  # asked before each frame is encoded: yes before the 61st of 65
        if seen["phase"] != "encoding":
            return False
        seen["checks"] += 1
        if seen["checks"] == 61:
            seen["partial"] = [p.name for p in out.glob(".heron.mp4.*.partial.mp4")]
            return True
        return False

    with pytest.raises(Cancelled, match="while encoding"):  # 65 frames: past x264's lookahead, packets are written
        generate("a heron lifts off a pond", **{**JOB, "num_frames": 65}, output=str(out / "heron.mp4"),
                 on_progress=on_progress, cancel=cancel, settings=settings)
    assert len(seen["partial"]) == 1, "60 frames were in the encoder's temp file when the cancel came"
    assert _files(out) == [], "no video, no sidecar, and the temp file is gone"
    assert _files(settings.home / "latents") == []
