"""The REST API against a live `localvideo serve` (uvicorn, loopback) running real tiny pipelines."""

from __future__ import annotations

from _live import sse_jobs, wait_state
from localvideo.media.probe import probe, read_frames

FAST = {"model": "tiny-wan", "steps": 2, "width": 128, "height": 128, "num_frames": 9, "seed": 3}
SLOW = {"model": "tiny-wan", "steps": 40, "width": 128, "height": 128, "num_frames": 33}
PHASES = ["queued", "loading", "denoising", "decoding", "encoding", "done"]


def test_health_models_system_and_openapi(api):
    assert api.get("/v1/health").json()["status"] == "ok"
    models = {m["id"]: m for m in api.get("/v1/models").json()}
    assert models["tiny-wan"]["installed"] and models["tiny-wan"]["random_weights"] and models["tiny-wan"]["fits"]
    flags = ("supports_last_image", "requires_last_image")
    assert [models["tiny-wan"][k] for k in flags] == [False, False]
    flf2v = models["tiny-wan-flf2v"]  # a first-and-last-frame model: it says so, and fits when given both frames
    assert [flf2v[k] for k in flags] == [True, True] and flf2v["fits"] is True and flf2v["reason"] is None
    real = models["wan2.1-t2v-1.3b"]
    assert not real["installed"] and real["pull_command"] == "localvideo models pull wan2.1-t2v-1.3b"
    system = api.get("/v1/system").json()
    assert system["auth_required"] is False and system["cors_origins"] == [] and "ram_total_bytes" in system["hardware"]
    spec = api.get("/openapi.json").json()
    assert spec["info"]["title"] == "localvideo"
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/events", "/v1/jobs/{job_id}/video",
            "/v1/jobs/{job_id}/thumbnail", "/v1/models", "/v1/system", "/v1/health"} <= set(spec["paths"])
    assert set(flags) <= set(spec["components"]["schemas"]["ModelOut"]["required"])
    fields = spec["components"]["schemas"]["JobCreate"]["properties"]
    assert {"prompt", "negative_prompt", "model", "width", "height", "num_frames", "fps", "steps", "guidance",
            "seed"} <= set(fields)
    assert not {"output", "image", "last_image", "gguf_path", "loras", "enhance"} & set(fields), "no server paths"


def test_submit_streams_progress_in_order_then_serves_a_decodable_mp4_with_ranges(api, server, tmp_path):
    r = api.post("/v1/jobs", json={"prompt": "a lighthouse in a storm", **FAST})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["state"] == "queued" and job["request"]["prompt"] == "a lighthouse in a storm"
    assert job["request"]["seed"] == 3 and job["links"]["video"] is None

    events = sse_jobs(api, job["id"])
    ids = [e[1] for e in events]
    assert ids == sorted(set(ids)), "event ids (job versions) strictly increase"
    states = [e[2]["state"] for e in events]
    assert states[-1] == "succeeded" and set(states) <= {"queued", "running", "succeeded"}
    phases = [e[2]["progress"]["phase"] for e in events if e[2]["progress"]]
    assert [PHASES.index(p) for p in phases] == sorted(PHASES.index(p) for p in phases), phases
    assert {"denoising", "decoding", "encoding"} <= set(phases)
    steps = [e[2]["progress"]["step"] for e in events if e[2]["progress"] and e[2]["progress"]["phase"] == "denoising"]
    assert steps == sorted(steps) and steps[-1] == 2
    assert any(e[2]["progress"]["eta_s"] is not None for e in events if e[2]["progress"])
    assert events[-1][0] == "state" and any(e[0] == "progress" for e in events)

    done = api.get(f"/v1/jobs/{job['id']}").json()
    res = done["result"]
    assert done["state"] == "succeeded" and done["attempts"] == 1 and done["error"] is None
    assert (res["frames"], res["width"], res["height"], res["seed"]) == (9, 128, 128, 3) and res["random_weights"]
    assert done["links"]["video"] == f"/v1/jobs/{job['id']}/video"

    video = api.get(done["links"]["video"])
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    assert video.headers["accept-ranges"] == "bytes" and len(video.content) == res["bytes"]
    out = tmp_path / "v.mp4"
    out.write_bytes(video.content)
    info = probe(out)
    assert (info.frames, info.width, info.height, info.codec) == (9, 128, 128, "h264")
    assert read_frames(out).shape == (9, 128, 128, 3)

    part = api.get(done["links"]["video"], headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == video.content[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(video.content)}"
    assert api.get(done["links"]["video"], headers={"Range": f"bytes={10**9}-"}).status_code == 416
    assert api.head(done["links"]["video"]).status_code == 200

    thumb = api.get(done["links"]["thumbnail"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert thumb.content[:3] == b"\xff\xd8\xff"
    assert (server.home / "outputs" / job["id"] / "video.mp4").is_file()


def test_cancel_a_running_job_stops_it_and_leaves_no_file(api, server):
    job = api.post("/v1/jobs", json={"prompt": "a long slow pan", **SLOW}).json()
    wait_state(api, job["id"], lambda j: j["progress"] and j["progress"]["phase"] == "denoising"
               and j["progress"]["step"] >= 1)
    r = api.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 202 and r.json()["cancel_requested"] is True
    final = sse_jobs(api, job["id"], timeout=60)[-1][2]
    assert final["state"] == "cancelled" and final["error"]["error"] == "cancelled"
    assert final["progress"]["step"] < 40, "it stopped early"
    assert final["progress"]["phase"] == "denoising", "it never decoded"
    assert api.get(f"/v1/jobs/{job['id']}/video").status_code == 404
    assert not (server.home / "outputs" / job["id"]).exists() or not any((server.home / "outputs" / job["id"]).iterdir())
    # cancelling again is harmless; retrying runs it again from the start
    assert api.post(f"/v1/jobs/{job['id']}/cancel").json()["state"] == "cancelled"
    again = api.post(f"/v1/jobs/{job['id']}/retry").json()
    assert again["state"] == "queued" and again["error"] is None and again["request"] == final["request"]
    assert api.post(f"/v1/jobs/{job['id']}/cancel").json()["state"] in ("cancelled", "running")
    end = wait_state(api, job["id"], lambda j: j["state"] in ("cancelled", "succeeded"), timeout=60)
    assert end["state"] == "cancelled" and end["attempts"] in (1, 2)


def test_cancel_of_a_queued_job_is_immediate(api):
    blocker = api.post("/v1/jobs", json={"prompt": "blocker", **SLOW}).json()
    queued = api.post("/v1/jobs", json={"prompt": "waiting", **FAST}).json()
    r = api.post(f"/v1/jobs/{queued['id']}/cancel")
    assert r.status_code == 202 and r.json()["state"] == "cancelled" and r.json()["attempts"] == 0
    api.post(f"/v1/jobs/{blocker['id']}/cancel")
    wait_state(api, blocker["id"], lambda j: j["state"] == "cancelled", timeout=60)


def test_list_filters_and_paginates_newest_first(api):
    made = [api.post("/v1/jobs", json={"prompt": f"page test {i}", **FAST}).json()["id"] for i in range(5)]
    api.post(f"/v1/jobs/{made[1]}/cancel")
    for jid in made:
        wait_state(api, jid, lambda j: j["state"] in ("succeeded", "cancelled"), timeout=120)
    everything = api.get("/v1/jobs", params={"limit": 200}).json()
    ids = [j["id"] for j in everything["jobs"]]
    assert ids[:5] == made[::-1], "newest first"
    seen, offset = [], 0
    while offset is not None:
        page = api.get("/v1/jobs", params={"limit": 2, "offset": offset}).json()
        assert page["total"] == everything["total"] and len(page["jobs"]) <= 2
        seen += [j["id"] for j in page["jobs"]]
        offset = page["next_offset"]
    assert seen == ids, "pages cover every job exactly once"
    ok = api.get("/v1/jobs", params={"state": "succeeded", "limit": 200}).json()
    assert all(j["state"] == "succeeded" for j in ok["jobs"]) and set(made) - {made[1]} <= {j["id"] for j in ok["jobs"]}
    both = api.get("/v1/jobs", params=[("state", "succeeded"), ("state", "cancelled"), ("limit", 200)]).json()
    assert both["total"] == ok["total"] + api.get("/v1/jobs", params={"state": "cancelled"}).json()["total"]
    bad = api.get("/v1/jobs", params={"state": "exploded"})
    assert bad.status_code == 422 and bad.json()["error"] == "invalid_request"
    assert api.get("/v1/jobs", params={"limit": 0}).status_code == 422


def test_errors_are_typed_json_with_the_right_status(api):
    def post(**body):
        return api.post("/v1/jobs", json={"prompt": "x", **body})

    r = post(model="no-such-model")
    assert r.status_code == 422 and r.json()["error"] == "unknown_model" and r.json()["message"]
    r = post(model="wan2.1-t2v-1.3b", width=256, height=256, num_frames=17)  # small: fits any machine's RAM
    assert r.status_code == 409 and r.json()["error"] == "model_not_installed"
    assert "localvideo models pull wan2.1-t2v-1.3b" in r.json()["hint"]
    r = post(model="tiny-wan", steps=0)
    assert r.status_code == 422 and "steps" in r.json()["message"]
    r = post(model="tiny-wan", output="/etc/cron.d/x.mp4")
    assert r.status_code == 422 and "output" in r.json()["message"]
    r = api.post("/v1/jobs", json={"prompt": "   ", "model": "tiny-wan"})
    assert r.status_code == 422 and "prompt" in r.json()["message"]
    r = api.post("/v1/jobs", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["message"] == "Invalid request: body: is not valid JSON."
    r = post(model="tiny-wan", width=8192, height=8192, num_frames=2048)
    assert r.status_code in (409, 422) and r.json()["error"] in ("does_not_fit", "invalid_request")
    missing = "0" * 32
    for method, path in [("GET", ""), ("POST", "/cancel"), ("POST", "/retry"), ("DELETE", ""), ("GET", "/video"),
                         ("GET", "/events"), ("GET", "/thumbnail")]:
        r = api.request(method, f"/v1/jobs/{missing}{path}")
        assert r.status_code == 404 and r.json()["error"] == "not_found", (method, path, r.text)


def test_state_conflicts_and_delete_with_files(api, server):
    job = api.post("/v1/jobs", json={"prompt": "to delete", **FAST}).json()
    wait_state(api, job["id"], lambda j: j["state"] == "succeeded")
    folder = server.home / "outputs" / job["id"]
    assert (folder / "video.mp4").is_file() and (folder / "thumbnail.jpg").is_file()
    for action, then in (("cancel", "there is nothing to cancel"), ("retry", "only failed, cancelled or interrupted "
                                                                             "jobs can be retried")):
        r = api.post(f"/v1/jobs/{job['id']}/{action}")
        assert r.status_code == 409 and r.json()["error"] == "conflict"
        assert r.json()["message"] == f"Job {job['id']} has succeeded; {then}."
    assert (folder / "video.mp4").is_file(), "a refused retry leaves the finished video alone"
    slow = api.post("/v1/jobs", json={"prompt": "busy", **SLOW}).json()
    wait_state(api, slow["id"], lambda j: j["state"] == "running")
    r = api.delete(f"/v1/jobs/{slow['id']}")
    assert r.status_code == 409 and "cancel" in r.json()["message"]
    api.post(f"/v1/jobs/{slow['id']}/cancel")
    assert api.delete(f"/v1/jobs/{job['id']}").status_code == 204
    assert not folder.exists()
    assert api.get(f"/v1/jobs/{job['id']}").status_code == 404
    assert api.get(f"/v1/jobs/{job['id']}/video").status_code == 404
    wait_state(api, slow["id"], lambda j: j["state"] == "cancelled", timeout=60)
    assert api.delete(f"/v1/jobs/{slow['id']}").status_code == 204


def test_deleting_a_queued_job_ends_its_event_streams_with_a_deleted_event(api, server):
    """Before, the stream hung until the next keepalive (15 s), then ended with no final event."""
    import threading
    import time

    from localvideo.client import ApiError, Client

    blocker = api.post("/v1/jobs", json={"prompt": "blocker", **{**SLOW, "steps": 400}}).json()
    queued = api.post("/v1/jobs", json={"prompt": "deleted while waiting", **FAST}).json()
    wait_state(api, blocker["id"], lambda j: j["state"] == "running")
    got: dict = {"events": [], "sdk": []}
    raw_open, sdk_open = threading.Event(), threading.Event()

    def raw() -> None:
        from _live import sse_events

        with api.stream("GET", f"/v1/jobs/{queued['id']}/events") as r:
            for item in sse_events(r.iter_lines()):
                got["events"].append(item)
                raw_open.set()
        got["raw_ended"] = time.monotonic()

    def sdk() -> None:
        with Client(server.url) as lv:
            try:
                lv.wait(queued["id"], on_progress=lambda j: (got["sdk"].append(j.state), sdk_open.set()))
            except ApiError as e:
                got["sdk_error"] = e
        got["sdk_ended"] = time.monotonic()

    threads = [threading.Thread(target=raw, daemon=True), threading.Thread(target=sdk, daemon=True)]
    for t in threads:
        t.start()
    assert raw_open.wait(30) and sdk_open.wait(30), "both streams sent the queued job first"
    t0 = time.monotonic()
    assert api.delete(f"/v1/jobs/{queued['id']}").status_code == 204
    for t in threads:
        t.join(10)
        assert not t.is_alive(), "a stream on a deleted job still hangs"
    assert got["raw_ended"] - t0 < 5 and got["sdk_ended"] - t0 < 5, "ended at once, not at the next keepalive"
    assert [e[0] for e in got["events"]] == ["state", "deleted"]
    (_, first_id, first), (_, last_id, last) = got["events"]
    assert last_id == first_id + 1 and last["id"] == queued["id"] and last["state"] == "queued"
    assert got["sdk"] == ["queued", "queued"]
    err = got["sdk_error"]
    assert (err.status, err.code) == (404, "not_found"), "the SDK's wait then says the job is gone"
    api.post(f"/v1/jobs/{blocker['id']}/cancel")
    wait_state(api, blocker["id"], lambda j: j["state"] == "cancelled", timeout=60)
