"""Secure by default: loopback, tokens off loopback, no CORS unless allowed, ids not paths, bounded uploads."""

from __future__ import annotations

import contextlib
import http.client
import json
import io
import socket
import struct
import subprocess
import sys
import zlib

import httpx
import pytest
from PIL import Image

from _live import ROOT, free_port
from localvideo.api.app import create_app
from localvideo.api.auth import check_bind, is_loopback, token_matches
from localvideo.errors import InvalidRequest
from localvideo.media.upload import InvalidImage, UnsupportedMediaType, UploadTooLarge, check_image
from localvideo.settings import Settings

I2V = "/v1/jobs/image-to-video"


@pytest.fixture()
def api(server):
    """The shared live server (conftest's ``server``), with a longer client timeout than conftest's ``api``."""
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


@contextlib.contextmanager
def _asgi(tmp_path, **kw):
    """The app in-process (no socket, no lifespan: the job service is not started, nothing runs)."""
    from fastapi.testclient import TestClient

    app = create_app(Settings(home=tmp_path), **kw)
    client = TestClient(app, base_url="http://127.0.0.1:8765")
    try:
        yield client
    finally:
        client.close()
        app.state.service.store.close()


def png_bytes(w=64, h=48, fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 30, 30)).save(buf, fmt)
    return buf.getvalue()


def bomb_png(w=20000, h=20000) -> bytes:
    """A real 20000×20000 PNG (400 megapixels) that compresses to ~50 KB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    c = zlib.compressobj(9)
    row = b"\x00" * (1 + (w + 7) // 8)  # 1-bit grayscale rows
    idat = b"".join(c.compress(row) for _ in range(h)) + c.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


# -- binding and tokens -----------------------------------------------------------------------------------------

def test_loopback_rules():
    for h in ("127.0.0.1", "127.9.9.9", "::1", "[::1]", "localhost"):
        assert is_loopback(h), h
    for h in ("0.0.0.0", "::", "192.168.1.10", "example.com", ""):
        assert not is_loopback(h), h
    check_bind("127.0.0.1", None)
    check_bind("0.0.0.0", "secret")
    with pytest.raises(InvalidRequest, match="without an API token"):
        check_bind("0.0.0.0", None)
    assert token_matches("Bearer s3cret", "s3cret") and token_matches("bearer s3cret", "s3cret")
    assert not token_matches("Bearer s3cre", "s3cret") and not token_matches("Basic s3cret", "s3cret")
    assert not token_matches(None, "s3cret") and not token_matches("Bearer", "s3cret")


def test_serve_refuses_a_public_bind_without_a_token_before_listening(tmp_path):
    port = free_port()
    env = {"LOCALVIDEO_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-m", "localvideo.cli", "serve", "--host", "0.0.0.0", "--port", str(port)],
                       capture_output=True, text=True, timeout=60, cwd=str(ROOT), env=env)
    assert r.returncode == 2 and "without an API token" in r.stderr, r.stderr
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "nothing is listening"
    assert not (tmp_path / "jobs.db").exists(), "it stopped before touching anything"


def test_token_required_off_loopback(tmp_path):
    with pytest.raises(InvalidRequest):
        create_app(Settings(home=tmp_path), host="0.0.0.0")
    with _asgi(tmp_path, host="0.0.0.0", token="tok-123") as c:
        for path in ("/v1/jobs", "/v1/models", "/v1/system", f"/v1/jobs/{'a' * 32}"):
            r = c.get(path)
            assert r.status_code == 401 and r.json()["error"] == "unauthorized", path
            assert r.headers["www-authenticate"] == "Bearer"
        assert c.get("/v1/jobs", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.post("/v1/jobs", json={"prompt": "x", "model": "tiny-wan"}).status_code == 401
        ok = c.get("/v1/jobs", headers={"Authorization": "Bearer tok-123"})
        assert ok.status_code == 200 and ok.json()["total"] == 0
        assert c.get("/v1/health").status_code == 200, "health needs no token and tells nothing"
        # off loopback the Host header is not pinned (the token protects)
        assert c.get("/v1/jobs", headers={"Authorization": "Bearer tok-123", "Host": "studio.lan"}).status_code == 200


def test_live_server_with_token(tmp_path):
    from _live import LiveServer

    server = LiveServer(tmp_path / "home", token="live-token-9").start()
    try:
        assert httpx.get(server.url + "/v1/jobs").status_code == 401
        r = httpx.get(server.url + "/v1/system", headers=server.headers)
        assert r.status_code == 200 and r.json()["auth_required"] is True
    finally:
        server.stop()


# -- browsers on other sites --------------------------------------------------------------------------------------

def test_cors_is_off_by_default(api):
    pre = api.options("/v1/jobs", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST",
                                           "Access-Control-Request-Headers": "content-type"})
    assert pre.status_code >= 400 and "access-control-allow-origin" not in pre.headers
    r = api.get("/v1/jobs", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers
    # a "simple" cross-site POST (no preflight in a browser) is refused outright
    r = api.post("/v1/jobs", json={"prompt": "x", "model": "tiny-wan"}, headers={"Origin": "https://evil.example"})
    assert r.status_code == 403 and r.json()["error"] == "forbidden_origin"
    r = api.post(I2V, files={"image": ("a.png", png_bytes(), "image/png")}, headers={"Origin": "https://evil.example"})
    assert r.status_code == 403


def test_cors_allow_list_when_configured(tmp_path):
    with _asgi(tmp_path, cors_origins=["https://studio.example"]) as c:
        ok = c.options("/v1/jobs", headers={"Origin": "https://studio.example", "Access-Control-Request-Method": "POST"})
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "https://studio.example"
        bad = c.options("/v1/jobs", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
        assert bad.status_code == 400 and "access-control-allow-origin" not in bad.headers
        r = c.get("/v1/jobs", headers={"Origin": "https://studio.example"})
        assert r.headers["access-control-allow-origin"] == "https://studio.example"


def test_dns_rebinding_host_is_refused_on_loopback(api):
    r = api.get("/v1/jobs", headers={"Host": "attacker.example:8765"})
    assert r.status_code == 400 and r.json()["error"] == "forbidden_host"
    assert api.get("/v1/jobs", headers={"Host": "localhost"}).status_code == 200


# -- ids, not paths --------------------------------------------------------------------------------------------

def _raw_get(server, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


@pytest.mark.parametrize("path", [
    "/v1/jobs/../../../../etc/passwd",
    "/v1/jobs/..%2F..%2F..%2Fetc%2Fpasswd",
    "/v1/jobs/%2e%2e/video",
    "/v1/jobs/%2e%2e%2f%2e%2e%2fjobs.db/video",
    "/v1/jobs/..%5C..%5Cjobs.db/video",
    "/v1/jobs/00000000000000000000000000000000/video",
    "/v1/jobs/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    "/v1/jobs/0000000000000000000000000000000%00/video",
    "/v1/jobs/%00",
    "/v1/jobs/1%20OR%201=1",
    "/v1/jobs/'%3B%20DROP%20TABLE%20jobs%3B--",
    "/v1/jobs/" + "a" * 5000,
    "/v1/jobs/video.mp4/video",
    "/v1/jobs//video",
    "/v1/jobs/%252e%252e%252fjobs.db/thumbnail",
])
def test_path_tricks_answer_404_or_422(server, path):
    status, body = _raw_get(server, path)
    assert status in (404, 422), (path, status, body[:200])
    assert b"root:" not in body and b"SQLite" not in body


def test_job_files_are_only_served_by_id(api, server):
    job = api.post("/v1/jobs", json={"prompt": "served by id", "model": "tiny-wan", "steps": 2, "num_frames": 9}).json()
    from _live import wait_state

    wait_state(api, job["id"], lambda j: j["state"] == "succeeded")
    assert api.get(f"/v1/jobs/{job['id']}/video").status_code == 200
    assert api.get(f"/v1/jobs/{job['id'].upper()}/video").status_code == 404
    assert api.get(f"/v1/jobs/{job['id']}/video.json").status_code == 404
    assert api.get(f"/v1/jobs/{job['id']}/../jobs.db").status_code == 404
    status, _ = _raw_get(server, f"/v1/jobs/{job['id']}%2F..%2F..%2Fjobs.db/video")
    assert status == 404


# -- uploads and bodies ----------------------------------------------------------------------------------------

def test_upload_checks_unit():
    ok = check_image(png_bytes(), max_bytes=10**6, max_pixels=10**6, declared_type="image/png")
    assert (ok.format, ok.width, ok.height, ok.mime) == ("PNG", 64, 48, "image/png")
    assert check_image(png_bytes(fmt="JPEG"), max_bytes=10**6, max_pixels=10**6).format == "JPEG"
    assert check_image(png_bytes(fmt="WEBP"), max_bytes=10**6, max_pixels=10**6).format == "WEBP"
    with pytest.raises(UploadTooLarge):
        check_image(bomb_png(), max_bytes=10**7, max_pixels=40_000_000)
    with pytest.raises(UploadTooLarge, match="megapixels"):
        check_image(png_bytes(2000, 1000), max_bytes=10**7, max_pixels=1_000_000)
    with pytest.raises(UploadTooLarge):
        check_image(png_bytes(), max_bytes=100, max_pixels=10**6)
    with pytest.raises(UnsupportedMediaType):
        check_image(b"GIF89a" + b"\x00" * 100, max_bytes=10**6, max_pixels=10**6)
    with pytest.raises(UnsupportedMediaType, match="declared"):
        check_image(png_bytes(), max_bytes=10**6, max_pixels=10**6, declared_type="image/jpeg")
    with pytest.raises(UnsupportedMediaType):
        check_image(b"<svg xmlns='http://www.w3.org/2000/svg'/>", max_bytes=10**6, max_pixels=10**6)
    with pytest.raises(InvalidImage):
        check_image(png_bytes()[:60], max_bytes=10**6, max_pixels=10**6)
    with pytest.raises(InvalidImage):
        check_image(b"", max_bytes=10**6, max_pixels=10**6)


def test_decompression_bomb_upload_is_refused(api):
    r = api.post(I2V, files={"image": ("huge.png", bomb_png(), "image/png")})
    assert r.status_code in (413, 422) and r.json()["error"] == "too_large", r.text


def test_60_mb_upload_is_refused(api):
    big = b"\x89PNG\r\n\x1a\n" + b"\x00" * (60 * 1024 * 1024)
    r = api.post(I2V, files={"image": ("big.png", big, "image/png")})
    assert r.status_code == 413 and r.json()["error"] == "too_large"

    def chunked():  # no Content-Length: the server counts what arrives
        boundary = b"--xyz\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n" \
                   b"Content-Type: image/png\r\n\r\n"
        yield boundary
        for _ in range(60):
            yield b"\x00" * (1024 * 1024)
        yield b"\r\n--xyz--\r\n"

    r = api.post(I2V, content=chunked(), headers={"Content-Type": "multipart/form-data; boundary=xyz"})
    assert r.status_code == 413


def test_wrong_content_types_are_refused(api):
    r = api.post(I2V, files={"image": ("cat.png", b"this is text, not a picture", "image/png")})
    assert r.status_code == 415 and "content" in r.json()["message"]
    r = api.post(I2V, files={"image": ("cat.jpg", png_bytes(), "image/jpeg")})
    assert r.status_code == 415 and "declared" in r.json()["message"]
    r = api.post(I2V, files={"image": ("x.gif", b"GIF89a" + b"\x01" * 64, "image/gif")})
    assert r.status_code == 415
    r = api.post(I2V, content=png_bytes(), headers={"Content-Type": "image/png"})
    assert r.status_code == 415 and r.json()["error"] == "unsupported_media_type"
    r = api.post("/v1/jobs", content=b'{"prompt": "x"}', headers={"Content-Type": "text/plain"})
    assert r.status_code == 415


def test_valid_image_upload_makes_an_image_to_video_job(api, server):
    from _live import sse_jobs

    r = api.post(I2V, files={"image": ("photo.bin", png_bytes(160, 120), "application/octet-stream")},
                 data={"params": '{"prompt": "make it move", "model": "tiny-wan", "steps": 2, "num_frames": 9}'})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["kind"] == "image-to-video" and job["request"]["image"] == "uploaded:image.png", "no server path shown"
    final = sse_jobs(api, job["id"])[-1][2]
    assert final["state"] == "succeeded" and final["result"]["frames"] == 9
    assert (final["result"]["width"], final["result"]["height"]) == (144, 112), "follows the image's aspect ratio"
    stored = server.home / "uploads" / job["id"] / "image.png"
    assert stored.read_bytes() == png_bytes(160, 120), "stored by job id, under a name the server chose"
    assert api.delete(f"/v1/jobs/{job['id']}").status_code == 204 and not stored.parent.exists()


def test_clients_cannot_name_server_paths(api):
    for field, value in [("image", "/etc/passwd"), ("last_image", "../../x.png"), ("output", "/tmp/x.mp4"),
                         ("gguf_path", "/models/x.gguf"), ("loras", [["/x.safetensors", 1.0]]),
                         ("enhance", "/some/folder")]:
        r = api.post("/v1/jobs", json={"prompt": "x", "model": "tiny-wan", field: value})
        assert r.status_code == 422 and "not a known field" in r.json()["message"], (field, r.text)
        r = api.post(I2V, files={"image": ("a.png", png_bytes(), "image/png")},
                     data={"params": json.dumps({"prompt": "x", "model": "tiny-wan", field: value})})
        assert r.status_code == 422 and "not a known field" in r.json()["message"], (field, r.text)
    r = api.post(I2V, files={"image": ("a.png", png_bytes(), "image/png")},
                 data={"params": '{"prompt": "x", "model": "tiny-cogvideox"}'})
    assert r.status_code == 422 and "i2v" in r.json()["message"], "a t2v-only model refuses an image"
    r = api.post(I2V, files={"image": ("a.png", png_bytes(), "image/png")}, data={"params": "[1, 2]"})
    assert r.status_code == 422


def test_request_bodies_are_bounded(api):
    r = api.post("/v1/jobs", json={"prompt": "x" * 2_000_000, "model": "tiny-wan"})
    assert r.status_code == 413 and r.json()["error"] == "too_large"

    def chunked():  # no Content-Length at all: counted as it arrives
        yield b'{"prompt": "'
        for _ in range(15):
            yield b"y" * 100_000
        yield b'"}'

    r = api.post("/v1/jobs", content=chunked(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"] == "too_large"


def test_photo_animation_upload_is_checked_the_same_way(api):
    animate = "/v1/jobs/animate"
    assert api.post(animate, files={"image": ("huge.png", bomb_png(), "image/png")}).status_code == 413
    assert api.post(animate, files={"image": ("cat.png", b"plain text", "image/png")}).status_code == 415
    assert api.post(animate, content=png_bytes(), headers={"Content-Type": "image/png"}).status_code == 415
    big = b"\x89PNG\r\n\x1a\n" + b"\x00" * (60 * 1024 * 1024)
    assert api.post(animate, files={"image": ("big.png", big, "image/png")}).status_code == 413
    r = api.post(animate, files={"image": ("a.png", png_bytes(), "image/png")}, data={"params": '{"image": "/etc/x"}'})
    assert r.status_code == 422 and "not a known field" in r.json()["message"]
