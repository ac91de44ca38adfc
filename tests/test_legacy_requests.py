"""Job rows whose stored request was written by an older (development) localvideo: retried and run, not refused.

A dev build stored the step-cache field as ``cache``; it is now ``step_cache``. Retrying such a row migrates it
(renamed fields moved, unknown fields that ask for nothing dropped, each change noted on the job); a row with an
unknown field that asked for something is refused with one sentence saying what to do. New submissions stay strict.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest

from localvideo.errors import InvalidRequest
from localvideo.hardware import Hardware
from localvideo.jobs import JobConflict, JobService
from localvideo.jobs.legacy import StoredRequestError, migrate
from localvideo.jobs.models import Job, JobError, utcnow
from localvideo.jobs.store import SQLiteJobStore
from localvideo.settings import Settings

CPU = Hardware.assumed(None, ram_gb=16)
# what the dev build stored: the whole request dump, with the old name of the step cache
LEGACY = {"prompt": "a lantern on a quiet river", "negative_prompt": None, "model": "tiny-wan", "width": 128,
          "height": 128, "num_frames": 9, "fps": None, "steps": 2, "guidance": None, "seed": 7, "strategy": "auto",
          "vae_tiling": None, "image": None, "last_image": None, "expand_prompt": True, "enhance": None,
          "quantization": "auto", "gguf_path": None, "cache": "fbc:0.1", "loras": [], "attention": "sdpa",
          "compile": False}


@pytest.fixture()
def settings(lv_home, tmp_path) -> Settings:
    return Settings(home=lv_home, jobs_db_path=tmp_path / "jobs.db", outputs_dir=tmp_path / "outputs")


def _legacy_row(settings: Settings, request: dict, state: str = "failed") -> str:
    """A row as the old build left it, written straight into a real store (before the service opens it)."""
    store = SQLiteJobStore(settings.jobs_db)
    job_id = uuid.uuid4().hex
    error = None if state == "queued" else JobError(error="invalid_request",
                                                    message="Invalid request: cache: is not a known field.")
    store.insert(Job(id=job_id, kind="text-to-video", state=state, request=request, created_at=utcnow(),
                     error=error, finished_at=None if state == "queued" else utcnow()))
    store.close()
    return job_id


def _old_database(settings: Settings, requests: list[dict]) -> list[str]:
    """A jobs database exactly as the dev build wrote it (schema 1, no ``notes`` column), with failed rows."""
    import sqlite3

    settings.jobs_db.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(settings.jobs_db)
    db.executescript("""
        PRAGMA journal_mode=WAL;
        CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, kind TEXT NOT NULL,
            state TEXT NOT NULL, request TEXT NOT NULL, progress TEXT, result TEXT, error TEXT,
            cancel_requested INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL,
            started_at REAL, finished_at REAL, version INTEGER NOT NULL DEFAULT 0);
        PRAGMA user_version=1;""")
    ids = []
    for request in requests:
        ids.append(uuid.uuid4().hex)
        db.execute("INSERT INTO jobs (id, kind, state, request, error, attempts, created_at, finished_at, version)"
                   " VALUES (?, 'text-to-video', 'failed', ?, ?, 1, ?, ?, 3)",
                   (ids[-1], json.dumps(request), json.dumps({"error": "invalid_request", "message": "Invalid "
                    "request: cache: is not a known field.", "hint": None}), time.time(), time.time()))
    db.commit()
    db.close()
    return ids


def wait_for(get, job_id: str, pred, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = get(job_id)
        if pred(job):
            return job
        time.sleep(0.05)
    raise TimeoutError(get(job_id))


def _sidecar(settings: Settings, job_id: str) -> dict:
    return json.loads((settings.outputs / job_id / "video.json").read_text())


def test_retrying_a_row_with_a_renamed_field_migrates_it_and_makes_the_video(settings):
    job_id = _legacy_row(settings, {**LEGACY, "preview": None})  # and a field no version knows now, left empty
    svc = JobService(settings, hardware=CPU, workers=1).start()
    try:
        again = svc.retry(job_id)
        assert again.state == "queued" and again.error is None
        assert again.request["step_cache"] == "fbc:0.1" and not {"cache", "preview"} & set(again.request)
        assert any("'cache' is now 'step_cache'" in n for n in again.notes)
        assert any("'preview'" in n and "dropped" in n for n in again.notes)
        done = wait_for(svc.get, job_id, lambda j: j.terminal)
        assert done.state == "succeeded", done.error
        assert done.result.seed == 7 and done.result.frames == 9 and done.notes == again.notes
        assert _sidecar(settings, job_id)["step_cache"] == "fbc:0.1"  # the renamed field was used, not dropped
        stored = SQLiteJobStore(settings.jobs_db)  # the row itself now holds this version's request, and the notes
        try:
            row = stored.get(job_id)
        finally:
            stored.close()
        assert row.request == again.request and row.notes == again.notes
    finally:
        svc.close()


def test_a_queued_legacy_row_runs_after_an_upgrade_with_the_change_noted(settings):
    job_id = _legacy_row(settings, LEGACY, state="queued")  # queued by the old build, never retried
    svc = JobService(settings, hardware=CPU, workers=1).start()
    try:
        done = wait_for(svc.get, job_id, lambda j: j.terminal)
        assert done.state == "succeeded", done.error
        assert any("'cache' is now 'step_cache'" in n for n in done.result.notes)
    finally:
        svc.close()


def test_a_row_whose_unknown_field_asked_for_something_is_refused_with_what_to_do(settings):
    job_id = _legacy_row(settings, {**LEGACY, "upscale": 2})
    svc = JobService(settings, hardware=CPU, workers=1).start()
    try:
        with pytest.raises(JobConflict) as e:
            svc.retry(job_id)
        assert isinstance(e.value, StoredRequestError) and e.value.code == "stored_request_unsupported"
        assert e.value.message.startswith(f"Job {job_id} cannot be retried: its stored request has field 'upscale'")
        assert "new job without 'upscale'" in e.value.hint
        row = svc.get(job_id)
        assert row.state == "failed" and row.request == {**LEGACY, "upscale": 2}, "a refused retry changes nothing"
    finally:
        svc.close()


def test_migrate_rules():
    assert migrate("text-to-video", {"prompt": "x", "step_cache": "fbc"}) == ({"prompt": "x", "step_cache": "fbc"}, [])
    out, notes = migrate("text-to-video", {"prompt": "x", "cache": "mag", "step_cache": None})
    assert out == {"prompt": "x", "step_cache": "mag"} and len(notes) == 1
    out, _ = migrate("text-to-video", {"prompt": "x", "cache": "fbc", "step_cache": "fbc"})  # the same: fine
    assert out == {"prompt": "x", "step_cache": "fbc"}
    with pytest.raises(StoredRequestError, match="both 'cache'"):
        migrate("text-to-video", {"prompt": "x", "cache": "fbc", "step_cache": "mag"})
    out, notes = migrate("image-to-video", {"prompt": "x", "image": "a.png", "old_flag": False, "extra": []})
    assert out == {"prompt": "x", "image": "a.png"} and len(notes) == 2
    with pytest.raises(StoredRequestError, match=r"not valid for this version .*steps"):
        migrate("text-to-video", {"prompt": "x", "steps": 100000})
    with pytest.raises(StoredRequestError, match="'cache' = 'fbc'"):  # stories never had a step cache field
        migrate("story", {"script": "a fox", "cache": "fbc"})
    assert migrate("photo-animation", {"image": "a.png", "move": "orbit"})[1] == []


def test_new_submissions_stay_strict(settings):
    svc = JobService(settings, hardware=CPU, workers=1)  # not started: nothing runs
    try:
        with pytest.raises(InvalidRequest, match="cache: is not a known field"):
            svc.submit(**{k: v for k, v in LEGACY.items() if v is not None})
    finally:
        svc.store.close()


def test_retry_through_the_rest_api_on_a_database_from_the_dev_build(settings):
    from fastapi.testclient import TestClient

    from localvideo.api.app import create_app

    migrated, refused = _old_database(settings, [LEGACY, {**LEGACY, "upscale": 2}])
    svc = JobService(settings, hardware=CPU, workers=1).start()
    client = TestClient(create_app(settings, service=svc), base_url="http://127.0.0.1:8765")
    try:
        r = client.post("/v1/jobs", json={k: v for k, v in LEGACY.items() if v is not None})
        assert r.status_code == 422 and "cache" in r.json()["message"], "new submissions: unknown fields refused"
        r = client.post(f"/v1/jobs/{refused}/retry")
        assert r.status_code == 409 and r.json()["error"] == "stored_request_unsupported", r.text
        assert "upscale" in r.json()["message"] and r.json()["hint"]
        r = client.post(f"/v1/jobs/{migrated}/retry")
        assert r.status_code == 202, r.text
        body = r.json()
        assert body["request"]["step_cache"] == "fbc:0.1" and "cache" not in body["request"] and body["notes"]
        done = wait_for(lambda i: client.get(f"/v1/jobs/{i}").json(), migrated, lambda j: j["state"] not in
                        ("queued", "running"))
        assert done["state"] == "succeeded", done["error"]
        assert client.get(f"/v1/jobs/{migrated}/video").status_code == 200
    finally:
        client.close()
        svc.close()
