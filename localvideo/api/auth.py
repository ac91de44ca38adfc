"""Who may talk to the API: binding rules, bearer tokens, and a guard against browsers on other sites.

* Loopback (127.0.0.0/8, ::1, localhost) is the default. Binding anything else without a token is refused before the
  server listens (:func:`check_bind`).
* With a token every ``/v1`` route except ``GET /v1/health`` requires ``Authorization: Bearer <token>``, compared in
  constant time.
* :class:`GuardMiddleware` (pure ASGI, first in line): on a loopback server the ``Host`` header must name loopback
  (defeats DNS rebinding); a state-changing request carrying a foreign ``Origin`` is refused (CORS does not stop
  "simple" cross-site POSTs, this does); bodies are bounded in bytes, counted as they arrive, whatever
  ``Content-Length`` says; endpoints with a body require their content type.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import secrets
import time
from urllib.parse import urlsplit

from ..errors import InvalidRequest, LocalVideoError

LOOPBACK_NAMES = {"localhost", "localhost.", "ip6-localhost"}


class Unauthorized(LocalVideoError):
    code = "unauthorized"


def is_loopback(host: str) -> bool:
    h = host.strip().strip("[]").lower()
    if h in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve a non-loopback address without a token."""
    if not is_loopback(host) and not token:
        raise InvalidRequest(
            f"Refusing to listen on {host} without an API token: anyone who can reach this machine could use it.",
            hint="Set LOCALVIDEO_API_TOKEN or pass --token (e.g. --token "
                 f"{secrets.token_urlsafe(24)}), or bind 127.0.0.1.")


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_matches(header: str | None, token: str) -> bool:
    if not header:
        return False
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode("utf-8", "surrogateescape"), token.encode())


# -- browser sessions (the web UI): a signed cookie, issued by the UI's login form after checking the token ------
SESSION_COOKIE = "localvideo_session"
SESSION_TTL_S = 12 * 3600


def _session_key(token: str) -> bytes:
    return hashlib.sha256(b"localvideo-ui-session\0" + token.encode()).digest()


def new_session(token: str, ttl_s: int = SESSION_TTL_S, now: float | None = None) -> str:
    """A cookie value proving its holder typed ``token`` (until it expires; a new token voids every session)."""
    exp = int((time.time() if now is None else now) + ttl_s)
    sig = hmac.new(_session_key(token), f"v1.{exp}".encode(), hashlib.sha256).hexdigest()
    return f"v1.{exp}.{sig}"


def session_valid(value: str | None, token: str, now: float | None = None) -> bool:
    if not value or not token:
        return False
    parts = value.split(".")
    if len(parts) != 3 or parts[0] != "v1" or not parts[1].isdigit():
        return False
    if int(parts[1]) < (time.time() if now is None else now):
        return False
    want = hmac.new(_session_key(token), f"v1.{parts[1]}".encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(parts[2].encode("utf-8", "surrogateescape"), want.encode())


def _host_of(host_header: str) -> str:
    h = host_header.strip()
    if h.startswith("["):
        return h[1:h.find("]")] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


class _TooLarge(Exception):
    pass


async def _send_json(send, status: int, body: dict, headers: list | None = None) -> None:
    raw = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": raw})


class GuardMiddleware:
    def __init__(self, app, *, loopback_only_hosts: bool, allowed_origins: list[str], max_body: int,
                 upload_paths: dict[str, int], body_types: dict[tuple[str, str], str]) -> None:
        self.app = app
        self.loopback_only_hosts = loopback_only_hosts
        self.allowed_origins = {o.rstrip("/") for o in allowed_origins}
        self.max_body = max_body
        self.upload_paths = upload_paths  # path → byte limit for that path's body
        self.body_types = body_types  # (method, path) → required content type

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        if self.loopback_only_hosts and not is_loopback(_host_of(host)):
            return await _send_json(send, 400, {
                "error": "forbidden_host", "message": "This server only answers requests addressed to localhost.",
                "hint": "Use http://127.0.0.1:<port>; to serve other hosts, bind another address with a token."})
        method = scope["method"]
        origin = headers.get("origin")
        if origin and method not in ("GET", "HEAD", "OPTIONS") and not self._origin_ok(origin, host, scope):
            return await _send_json(send, 403, {
                "error": "forbidden_origin", "message": f"Requests from the web page at {origin[:200]} are not "
                                                        "allowed.",
                "hint": "Add the origin to the CORS allow-list (--cors-origin) if it should be."})
        path = scope.get("path", "")
        limit = self.upload_paths.get(path, self.max_body)
        want = self.body_types.get((method, path))
        if want is not None:
            got = headers.get("content-type", "").split(";")[0].strip().lower()
            if got != want:
                return await _send_json(send, 415, {
                    "error": "unsupported_media_type",
                    "message": f"This endpoint takes {want}, not {got or 'a body without a content type'}.",
                    "hint": f"Send Content-Type: {want}."})
        declared = headers.get("content-length")
        if declared is not None:
            try:
                too_big = int(declared) > limit
            except ValueError:
                return await _send_json(send, 400, {"error": "bad_request", "message": "Invalid Content-Length."})
            if too_big:
                return await _send_json(send, 413, _too_large(limit))
        if method in ("GET", "HEAD", "OPTIONS", "DELETE") and declared is None:
            return await self.app(scope, receive, send)
        # Read (and bound) the whole body before the app sees it; chunked bodies are counted too.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > limit:
                return await _send_json(send, 413, _too_large(limit), [(b"connection", b"close")])
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    def _origin_ok(self, origin: str, host: str, scope) -> bool:
        o = origin.rstrip("/")
        if o in self.allowed_origins:
            return True
        parts = urlsplit(o)
        scheme = scope.get("scheme", "http")
        return parts.scheme == scheme and parts.netloc.lower() == host.lower()  # same origin


def _too_large(limit: int) -> dict:
    return {"error": "too_large", "message": f"The request body is larger than {limit:,} bytes.",
            "hint": "Send less (images: downscale them)."}
