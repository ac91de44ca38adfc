"""A real `localvideo serve` in a subprocess on a free loopback port, with its own LOCALVIDEO_HOME."""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    def __init__(self, home: Path, token: str | None = None, extra_args: tuple[str, ...] = (),
                 env: dict | None = None) -> None:
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        self.token = token
        self.extra_args = extra_args
        self.env = env or {}
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.log_path = self.home / "server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def start(self, timeout: float = 60.0) -> "LiveServer":
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALVIDEO_")}
        env.update({"LOCALVIDEO_HOME": str(self.home), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                    "HF_HOME": str(self.home / "hf"), "TOKENIZERS_PARALLELISM": "false", **self.env})
        if self.token:
            env["LOCALVIDEO_API_TOKEN"] = self.token
        cmd = [sys.executable, "-m", "localvideo.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
               "--log-level", "warning", *self.extra_args]
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, cwd=str(ROOT), env=env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/v1/health", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not answer within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind, like a power cut for the process."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)
        self.proc = None


_SHARED: LiveServer | None = None


def shared_server() -> LiveServer:
    """One server for the API, SDK and schemathesis tests of a session (started on first use)."""
    global _SHARED
    if _SHARED is None:
        _SHARED = LiveServer(Path(tempfile.mkdtemp(prefix="localvideo-live-"))).start()
        atexit.register(_SHARED.stop)
    return _SHARED


def sse_jobs(client: httpx.Client, job_id: str, timeout: float = 120.0) -> list[tuple[str, int, dict]]:
    """All (event, id, job) of a job's SSE stream until it ends; fails after ``timeout`` seconds."""
    out, deadline = [], time.monotonic() + timeout
    with client.stream("GET", f"/v1/jobs/{job_id}/events", timeout=httpx.Timeout(10, read=timeout)) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        for item in sse_events(r.iter_lines()):
            out.append(item)
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still running after {timeout} s")
    return out


def sse_events(lines):
    """(event, id, data as JSON) for each ``data:`` line of a Server-Sent Events stream (a response's lines)."""
    event, eid = "message", -1
    for line in lines:
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("id: "):
            eid = int(line[4:])
        elif line.startswith("data: "):
            yield event, eid, json.loads(line[6:])


def wait_state(client: httpx.Client, job_id: str, predicate, timeout: float = 120.0, interval: float = 0.05) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if predicate(job):
            return job
        time.sleep(interval)
    raise TimeoutError(f"job {job_id} never reached the expected state: {job}")
