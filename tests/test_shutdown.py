"""SIGTERM (or Ctrl-C) of a real `localvideo serve` with open event streams: they end at once, a running job's with
its final ``interrupted`` state, and uvicorn has nothing to cancel (no ERROR in the log).

Before, the service and its event hub closed only in the lifespan shutdown, which uvicorn runs after waiting (5 s)
for open connections: the stream hung, uvicorn logged ``ERROR: Cancel 1 running task(s), timeout graceful shutdown
exceeded``, and the stream's last event said ``running`` although the job was set ``interrupted``.
"""

from __future__ import annotations

import signal
import sqlite3
import threading
import time

import httpx

from _live import LiveServer, wait_state
from localvideo.jobs.models import STOPPED_MESSAGES

LONG = {"model": "tiny-wan", "steps": 400, "width": 128, "height": 128, "num_frames": 33, "seed": 11}
FAST = {"model": "tiny-wan", "steps": 2, "width": 128, "height": 128, "num_frames": 9}


class _Stream(threading.Thread):
    """Reads one job's event stream: (event, id, job) with the time each arrived, and when the stream ended."""

    def __init__(self, url: str, job_id: str) -> None:
        super().__init__(daemon=True)
        self.url, self.job_id = url, job_id
        self.events: list[tuple[str, int, dict]] = []
        self.opened = threading.Event()
        self.ended_at: float | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        from _live import sse_events

        try:
            with httpx.Client(base_url=self.url, timeout=httpx.Timeout(10, read=60)) as c, \
                    c.stream("GET", f"/v1/jobs/{self.job_id}/events") as r:
                for item in sse_events(r.iter_lines()):
                    self.events.append(item)
                    self.opened.set()
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e
        finally:
            self.ended_at = time.monotonic()


def test_sigterm_ends_open_event_streams_with_the_final_state_and_no_error(tmp_path):
    home = tmp_path / "home"
    server = LiveServer(home).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as api:
            running = api.post("/v1/jobs", json={"prompt": "caught by the shutdown", **LONG}).json()
            queued = api.post("/v1/jobs", json={"prompt": "waits for the restart", **FAST}).json()
            wait_state(api, running["id"], lambda j: j["progress"] and j["progress"]["phase"] == "denoising"
                       and j["progress"]["step"] >= 1)
        streams = [_Stream(server.url, running["id"]), _Stream(server.url, queued["id"])]
        for s in streams:
            s.start()
            assert s.opened.wait(30), "the stream sent the job first"
        t0 = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        for s in streams:
            s.join(15)
            assert not s.is_alive() and s.error is None, s.error
        server.proc.wait(30)
    finally:
        server.stop()
    log = server.log()
    assert "ERROR" not in log and "Traceback" not in log, log

    run_stream, queued_stream = streams
    assert run_stream.ended_at - t0 < 4.5, f"the stream ended {run_stream.ended_at - t0:.1f} s after SIGTERM"
    event, _, last = run_stream.events[-1]
    assert (event, last["state"]) == ("state", "interrupted"), [(e, j["state"]) for e, _, j in run_stream.events]
    assert last["error"]["error"] == "interrupted" and last["links"]["video"] is None
    p = last["progress"]
    assert p["phase"] == "denoising" and p["step"] < 400, "where it stopped"
    assert p["eta_s"] is None and p["message"] == STOPPED_MESSAGES["interrupted"], "and it does not look live"
    assert queued_stream.ended_at - t0 < 4.5, "a queued job's stream ends too"
    assert [j["state"] for _, _, j in queued_stream.events] == ["queued"], "it stays queued, for the restart"

    db = sqlite3.connect(home / "jobs.db")
    rows = dict(db.execute("SELECT id, state FROM jobs").fetchall())
    db.close()
    assert rows == {running["id"]: "interrupted", queued["id"]: "queued"}, "the stream told what the database says"
    assert not (home / "outputs" / running["id"]).exists() or not any((home / "outputs" / running["id"]).iterdir())
