"""The FastAPI application: ``create_app()`` wires the job service, the guards and the error mapping.

Every error answers with the same JSON body (:class:`~localvideo.api.schemas.ErrorBody`): ``error`` (a code),
``message`` (one sentence) and ``hint``. Typed errors map to status codes in :func:`status_for`; anything unexpected
is logged once, here, and answers 500 without internals.

:func:`serve` runs the app with uvicorn so that Ctrl-C or SIGTERM ends open event streams at once, each running job's
with its final ``interrupted`` state, instead of uvicorn waiting for them and then cancelling them.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import (Cancelled, DoesNotFit, GenerationFailed, InvalidRequest, LocalVideoError, ModelNotInstalled,
                      OutputError)
from ..jobs.models import JobConflict, JobNotFound, ServiceUnavailable
from ..jobs.service import SHUTDOWN_GRACE_S, JobService
from ..media.upload import UnsupportedMediaType, UploadTooLarge
from ..settings import Settings, get_settings
from .auth import GuardMiddleware, Unauthorized, check_bind, is_loopback
from .routes import ANIMATE, STORY, STORY_IMAGE, UPLOAD_I2V, public, router

log = logging.getLogger(__name__)

_STATUS: list[tuple[type, int]] = [
    (JobNotFound, 404), (JobConflict, 409), (Unauthorized, 401), (UploadTooLarge, 413),
    (UnsupportedMediaType, 415), (ModelNotInstalled, 409), (DoesNotFit, 422), (InvalidRequest, 422),
    (Cancelled, 409), (ServiceUnavailable, 503), (OutputError, 500), (GenerationFailed, 500),
]
_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 406: "not_acceptable", 413: "too_large", 415: "unsupported_media_type",
               416: "range_not_satisfiable"}


def status_for(err: LocalVideoError) -> int:
    for cls, status in _STATUS:
        if isinstance(err, cls):
            return status
    return 500


def create_app(settings: Settings | None = None, *, service: JobService | None = None, host: str = "127.0.0.1",
               token: str | None = None, cors_origins: list[str] | None = None, ui: bool = False) -> FastAPI:
    """The API for one job service. ``token`` and ``cors_origins`` default to the settings
    (``LOCALVIDEO_API_TOKEN``, ``LOCALVIDEO_API_CORS_ORIGINS``). Raises InvalidRequest for an unsafe bind.

    ``ui=True`` mounts the web UI (:mod:`localvideo.ui`, Gradio) at ``/`` on the same service, behind a token login
    when a token is set; it imports gradio, so only ``localvideo serve`` asks for it."""
    settings = settings or get_settings()
    token = token if token is not None else settings.api_token
    cors = list(cors_origins if cors_origins is not None else settings.api_cors_origins)
    check_bind(host, token)
    own = service is None
    svc = service if service is not None else JobService(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        svc.start()
        try:
            yield
        finally:
            if own:
                svc.close()

    app = FastAPI(title="localvideo", version=__version__, lifespan=lifespan,
                  description="Local-first AI video: a persistent job queue over diffusers. Every error is an "
                              "ErrorBody. Loopback by default; a bearer token is required off loopback.")
    app.state.service = svc
    app.state.token = token or None
    app.state.cors_origins = cors
    app.include_router(public)
    app.include_router(router)

    @app.exception_handler(LocalVideoError)
    async def _typed(request: Request, exc: LocalVideoError) -> JSONResponse:
        status = status_for(exc)
        if status >= 500:
            log.error("%s %s failed: %s", request.method, request.url.path, exc)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse(exc.to_dict(), status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(_validation_body(exc), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        if exc.status_code == 404 and message == "Not Found":
            message = f"There is nothing at {request.url.path[:200]}."
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:  # Starlette names only the first route's methods; list every route's
            headers["Allow"] = ", ".join(_allowed_methods(request))
        return JSONResponse({"error": code, "message": message, "hint": None}, status_code=exc.status_code,
                            headers=headers or None)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s crashed", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"error": "internal_error", "message": "Internal error; see the server log.",
                             "hint": None}, status_code=500)

    if cors:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=cors, allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Authorization", "Content-Type", "Range", "Last-Event-ID"],
                           expose_headers=["Content-Range", "Accept-Ranges", "Content-Length"], max_age=600)
    upload_paths = {UPLOAD_I2V: settings.api_max_upload_bytes + 64 * 1024,
                    ANIMATE: settings.api_max_upload_bytes + 64 * 1024,
                    STORY_IMAGE: settings.api_max_upload_bytes + settings.api_max_body_bytes}  # + a script
    if ui:
        from ..ui import mount

        upload_paths |= {p: settings.api_max_upload_bytes + 64 * 1024 for p in mount(app, svc, settings, token=token)}
    # Added last = runs first: nothing reaches the app (CORS included) without passing the guard.
    app.add_middleware(GuardMiddleware, loopback_only_hosts=is_loopback(host) and not token, allowed_origins=cors,
                       max_body=settings.api_max_body_bytes,
                       upload_paths=upload_paths,
                       body_types={("POST", "/v1/jobs"): "application/json", ("POST", STORY): "application/json",
                                   ("POST", UPLOAD_I2V): "multipart/form-data",
                                   ("POST", ANIMATE): "multipart/form-data",
                                   ("POST", STORY_IMAGE): "multipart/form-data"})
    return app


def serve(app: FastAPI, **uvicorn_options) -> None:
    """``uvicorn.run(app, **uvicorn_options)``, telling the app's job service the moment uvicorn begins to shut down
    (Ctrl-C, SIGTERM). Starlette has no hook before uvicorn waits (up to ``timeout_graceful_shutdown`` seconds) for
    open connections, and the lifespan shutdown, which stops the service, comes only after that wait: an open event
    stream would hang until uvicorn cancels it (an ERROR in the log) and would never carry the job's final state.
    Here :meth:`~localvideo.jobs.service.JobService.begin_shutdown` runs first: running jobs are cancelled and become
    ``interrupted`` (within a grace shorter than uvicorn's timeout), their streams send that state and end, every
    other stream ends, and uvicorn's wait finds nothing left open."""
    import sys

    import uvicorn

    svc: JobService = app.state.service
    graceful = uvicorn_options.get("timeout_graceful_shutdown")
    grace = SHUTDOWN_GRACE_S if graceful is None else max(0.5, min(SHUTDOWN_GRACE_S, graceful - 1.5))

    class Server(uvicorn.Server):
        async def shutdown(self, sockets=None) -> None:
            svc.begin_shutdown(grace)  # returns at once; the streams end while uvicorn waits for them
            await super().shutdown(sockets)

    server = Server(uvicorn.Config(app, **uvicorn_options))
    try:
        server.run()
    except KeyboardInterrupt:  # as uvicorn.run
        pass
    if not server.started:
        sys.exit(3)  # uvicorn's STARTUP_FAILURE, as uvicorn.run


def _allowed_methods(request: Request) -> list[str]:
    from starlette.routing import Match

    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches({**request.scope, "method": "GET"})
        if match != Match.NONE and getattr(route, "methods", None):
            methods |= set(route.methods)
    return sorted(methods)


def _validation_body(exc: RequestValidationError) -> dict:
    parts, details = [], []
    for err in exc.errors()[:10]:
        loc = [str(x) for x in err.get("loc", ()) if x not in ("body", "query", "path", "header")]
        where = ".".join(loc) or "request"
        msg = str(err.get("msg", "is invalid")).removeprefix("Value error, ")
        if err.get("type") == "extra_forbidden":
            msg = "is not a known field"
        if err.get("type") == "json_invalid":
            where, msg = "body", "is not valid JSON"
        parts.append(f"{where[:100]}: {msg[:300]}")
        details.append({"field": where[:100], "problem": msg[:300], "type": str(err.get("type", ""))[:100]})
    return {"error": "invalid_request", "message": "Invalid request: " + "; ".join(parts) + ".",
            "hint": "Check the fields against GET /openapi.json.", "details": details}
