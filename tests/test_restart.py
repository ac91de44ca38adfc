"""Kill the server hard in the middle of a job, start it again: the database is intact, the job is interrupted,
no partial MP4 is visible, and a retry succeeds."""

from __future__ import annotations

import sqlite3

import httpx

from _live import LiveServer, sse_jobs, wait_state
from localvideo.media.probe import probe


def test_sigkill_mid_job_then_restart(tmp_path):
    home = tmp_path / "home"
    server = LiveServer(home).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as api:
            done = api.post("/v1/jobs", json={"prompt": "finished before the crash", "model": "tiny-wan", "steps": 2,
                                              "num_frames": 9}).json()
            wait_state(api, done["id"], lambda j: j["state"] == "succeeded")
            job = api.post("/v1/jobs", json={"prompt": "caught in the crash", "model": "tiny-wan", "steps": 12,
                                             "num_frames": 33, "width": 128, "height": 128, "seed": 5}).json()
            wait_state(api, job["id"], lambda j: j["progress"] and j["progress"]["phase"] == "denoising"
                       and j["progress"]["step"] >= 2)
            server.kill()
    finally:
        server.stop()

    db = sqlite3.connect(home / "jobs.db")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = dict(db.execute("SELECT id, state FROM jobs").fetchall())
    db.close()
    assert rows == {done["id"]: "succeeded", job["id"]: "running"}, "the row still says running: nobody cleaned up"

    server = LiveServer(home).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as api:
            back = api.get(f"/v1/jobs/{job['id']}").json()
            assert back["state"] == "interrupted" and back["error"]["error"] == "interrupted"
            p = back["progress"]  # where it stopped, frozen: it must not look live
            assert p["phase"] == "denoising" and p["step"] >= 2 and p["eta_s"] is None
            assert p["message"] == "Where the job was when the server stopped; it is not running."
            assert back["links"]["video"] is None
            assert api.get(f"/v1/jobs/{job['id']}/video").status_code == 404
            assert not list((home / "outputs").glob(f"{job['id']}/*.mp4")), "no partial MP4 left behind"
            assert not list((home / "outputs").glob(f"{job['id']}/.*")), "no hidden partial files either"
            assert api.get(f"/v1/jobs/{done['id']}").json()["state"] == "succeeded"
            assert api.get(f"/v1/jobs/{done['id']}/video").status_code == 200, "history survived"
            listed = api.get("/v1/jobs", params={"state": "interrupted"}).json()
            assert [j["id"] for j in listed["jobs"]] == [job["id"]]

            assert api.post(f"/v1/jobs/{job['id']}/retry").json()["state"] == "queued"
            final = sse_jobs(api, job["id"], timeout=180)[-1][2]
            assert final["state"] == "succeeded" and final["attempts"] == 2 and final["result"]["seed"] == 5
            out = tmp_path / "retried.mp4"
            out.write_bytes(api.get(f"/v1/jobs/{job['id']}/video").content)
            assert probe(out).frames == 33
    finally:
        server.stop()
