"""The ``/v1`` routes. Thin: parse, call :class:`~localvideo.jobs.service.JobService`, shape the answer."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Query, Request, Response, UploadFile
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from .. import __version__
from ..errors import InvalidRequest
from ..jobs.models import JobState
from ..jobs.service import MAX_PAGE, JobService
from ..media.upload import check_image
from ..request import _one_sentence as one_sentence
from .auth import SESSION_COOKIE, Unauthorized, session_valid, token_matches
from .schemas import (AnimateCreate, ErrorBody, Health, JobCreate, JobOut, JobPageOut, ModelOut, StoryCreate,
                      SystemOut)
from .sse import job_events

UPLOAD_I2V = "/v1/jobs/image-to-video"  # full path (the guard middleware bounds its body separately)
STORY = "/v1/jobs/story"
STORY_IMAGE = "/v1/jobs/story-from-image"  # full path, multipart like UPLOAD_I2V
ANIMATE = "/v1/jobs/animate"  # full path, multipart like UPLOAD_I2V


async def service(request: Request) -> JobService:
    return request.app.state.service


async def require_token(request: Request) -> None:
    token = request.app.state.token
    if token and not token_matches(request.headers.get("authorization"), token) and not _media_session(request, token):
        raise Unauthorized("A valid API token is required.", hint="Send the header Authorization: Bearer <token>.")


def _media_session(request: Request, token: str) -> bool:
    """A web-UI login (signed session cookie) may read a job's video and thumbnail — a <video> element cannot send
    a header — and nothing else: every other route still needs the bearer token."""
    if request.method not in ("GET", "HEAD"):
        return False
    parts = request.url.path.split("/")  # "", "v1", "jobs", <id>, "video"
    if len(parts) != 5 or parts[1:3] != ["v1", "jobs"] or parts[4] not in ("video", "thumbnail"):
        return False
    return session_valid(request.cookies.get(SESSION_COOKIE), token)


Svc = Annotated[JobService, Depends(service)]
E = {"model": ErrorBody}
COMMON = {401: E, 404: E, 422: E}

public = APIRouter(prefix="/v1")
router = APIRouter(prefix="/v1", dependencies=[Depends(require_token)], responses={401: E})


@public.get("/health", response_model=Health, tags=["system"])
def health() -> Health:
    """Liveness: answers without a token and says nothing about the machine."""
    return Health(status="ok", version=__version__)


@router.post("/jobs", status_code=202, response_model=JobOut, tags=["jobs"],
             responses={400: E, 409: E, 413: E, 415: E, 422: E, 503: E})
def create_job(body: JobCreate, svc: Svc) -> JobOut:  # type: ignore[valid-type]
    """Queue a text-to-video job. Planned at once: a request that can never run is refused here (422/409)."""
    return JobOut.of(svc.submit(**body.model_dump(exclude_unset=True)))  # type: ignore[attr-defined]


@router.post(STORY.removeprefix("/v1"), status_code=202, response_model=JobOut, tags=["jobs"],
             responses={400: E, 409: E, 413: E, 415: E, 422: E, 503: E})
def create_story_job(body: StoryCreate, svc: Svc) -> JobOut:  # type: ignore[valid-type]
    """Queue a story job (kind `story`): scenes generated in order (each continuing from the previous one's last
    frame on image-to-video models), joined into one MP4. Progress carries `scene` of `scenes`; cancel works as for
    any job."""
    return JobOut.of(svc.submit_story(**body.model_dump(exclude_unset=True)))  # type: ignore[attr-defined]


@router.post(STORY_IMAGE.removeprefix("/v1"), status_code=202, response_model=JobOut, tags=["jobs"],
             responses={400: E, 409: E, 413: E, 415: E, 422: E, 503: E})
async def create_story_image_job(
    request: Request,
    image: Annotated[UploadFile, File(description="The first scene's first frame: PNG, JPEG or WebP (checked by "
                                                  "content)")],
    params: Annotated[str, Form(max_length=1_000_000, description="StoryCreate fields as a JSON object (as "
                                                                  "POST /v1/jobs/story)")] = "{}",
) -> JobOut:
    """A story whose first scene starts from `image` (image-to-video; needed by models that only do image-to-video):
    the upload is checked (bytes, pixels, content) and stored by job id as for POST /v1/jobs/image-to-video, the
    story checked as for POST /v1/jobs/story, and the job (kind `story`) queued."""
    svc: JobService = request.app.state.service
    checked = await _checked_upload(image, svc.settings)
    body = _params(params, StoryCreate, "params takes the same fields as POST /v1/jobs/story.")
    job = await run_in_threadpool(lambda: svc.submit_story(uploads={"image": checked},
                                                           **body.model_dump(exclude_unset=True)))
    return JobOut.of(job)


@router.post(UPLOAD_I2V.removeprefix("/v1"), status_code=202, response_model=JobOut, tags=["jobs"],
             responses={400: E, 409: E, 413: E, 415: E, 422: E})
async def create_image_job(
    request: Request,
    image: Annotated[UploadFile, File(description="First frame: PNG, JPEG or WebP (checked by content)")],
    params: Annotated[str, Form(max_length=20000, description="Job fields as a JSON object (as POST /v1/jobs)")] = "{}",
    last_image: Annotated[UploadFile | None, File(description="Last frame, for models that support it")] = None,
) -> JobOut:
    """Image-to-video: the upload is checked (bytes, pixels, content), stored by job id, and the job queued."""
    svc: JobService = request.app.state.service
    uploads = {key: await _checked_upload(upload, svc.settings)
               for key, upload in (("image", image), ("last_image", last_image)) if upload is not None}
    body = _params(params, JobCreate, "params takes the same fields as POST /v1/jobs.")
    job = await run_in_threadpool(lambda: svc.submit(uploads=uploads, **body.model_dump(exclude_unset=True)))
    return JobOut.of(job)


@router.post(ANIMATE.removeprefix("/v1"), status_code=202, response_model=JobOut, tags=["jobs"],
             responses={400: E, 413: E, 415: E, 422: E})
async def create_animation_job(
    request: Request,
    image: Annotated[UploadFile, File(description="The photo: PNG, JPEG or WebP (checked by content)")],
    params: Annotated[str, Form(max_length=20000, description="AnimateCreate fields as a JSON object")] = "{}",
) -> JobOut:
    """Photo animation (kind `photo-animation`, no model weights): the upload is checked, stored by job id, and
    the job queued. Progress phase `rendering`, step = frames written."""
    svc: JobService = request.app.state.service
    checked = await _checked_upload(image, svc.settings)
    body = _params(params, AnimateCreate, "See AnimateCreate in /openapi.json.")
    job = await run_in_threadpool(lambda: svc.submit_animation(uploads={"image": checked},
                                                               **body.model_dump(exclude_unset=True)))
    return JobOut.of(job)


async def _checked_upload(upload: UploadFile, settings):
    """An uploaded image read (at most the limit + 1 bytes) and checked by content, size and pixels."""
    data = await upload.read(settings.api_max_upload_bytes + 1)
    return await run_in_threadpool(check_image, data, max_bytes=settings.api_max_upload_bytes,
                                   max_pixels=settings.api_max_upload_pixels, declared_type=upload.content_type)


def _params(params: str, model, hint: str):
    """A multipart route's ``params`` (a JSON object) validated as ``model``; InvalidRequest with ``hint`` if not."""
    try:
        fields = json.loads(params)
    except ValueError:
        raise InvalidRequest("params must be a JSON object of job fields.") from None
    if not isinstance(fields, dict):
        raise InvalidRequest("params must be a JSON object of job fields.")
    try:
        return model.model_validate(fields)
    except ValidationError as e:
        raise InvalidRequest(one_sentence(e), hint=hint) from None


@router.get("/jobs", response_model=JobPageOut, tags=["jobs"], responses=COMMON)
async def list_jobs(svc: Svc, state: Annotated[list[JobState] | None, Query(description="Filter (repeatable)")] = None,
              limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
              offset: Annotated[int, Query(ge=0, le=2**31)] = 0) -> JobPageOut:
    """Jobs, newest first. (Reads are async: one indexed SQLite query, no thread hop — what pollers hit.)"""
    page = svc.list(state, limit, offset)
    return JobPageOut(jobs=[JobOut.of(j) for j in page.jobs], total=page.total, limit=page.limit,
                      offset=page.offset, next_offset=page.next_offset)


@router.get("/jobs/{job_id}", response_model=JobOut, tags=["jobs"], responses=COMMON)
async def get_job(job_id: str, svc: Svc) -> JobOut:
    return JobOut.of(svc.get(job_id))


@router.post("/jobs/{job_id}/cancel", status_code=202, response_model=JobOut, tags=["jobs"],
             responses={**COMMON, 409: E})
def cancel_job(job_id: str, svc: Svc) -> JobOut:
    """A queued job is cancelled at once; a running one stops at its next check — each denoising step, each VAE
    decoder block, each encoded frame — and ends `cancelled` with no file (watch its events)."""
    return JobOut.of(svc.cancel(job_id))


@router.post("/jobs/{job_id}/retry", status_code=202, response_model=JobOut, tags=["jobs"],
             responses={**COMMON, 409: E})
def retry_job(job_id: str, svc: Svc) -> JobOut:
    """Queue a failed, cancelled or interrupted job again (same request, same seed)."""
    return JobOut.of(svc.retry(job_id))


@router.delete("/jobs/{job_id}", status_code=204, tags=["jobs"], responses={**COMMON, 409: E})
def delete_job(job_id: str, svc: Svc) -> Response:
    """Forget a job and delete its files (cancel a running job first)."""
    svc.delete(job_id)
    return Response(status_code=204)


@router.get("/jobs/{job_id}/events", tags=["jobs"], response_class=StreamingResponse, responses={
    **COMMON, 200: {"description": "Server-Sent Events, each `data` a job", "content": {"text/event-stream": {}}}})
async def job_event_stream(job_id: str, request: Request) -> StreamingResponse:
    svc: JobService = request.app.state.service
    """The job now, then each change, until it ends (Server-Sent Events; see `localvideo.api.sse`): event `state` or
    `progress` with the whole job as `data` and its `version` as `id`; a deleted job's stream ends with event
    `deleted` (the job as it was last stored, `id` one more); when the server shuts down, a running job's stream
    ends with its `interrupted` state and any other stream just ends."""
    await run_in_threadpool(svc.get, job_id)  # 404 before the stream starts
    return StreamingResponse(job_events(svc, job_id), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.api_route("/jobs/{job_id}/video", methods=["GET", "HEAD"], tags=["jobs"], response_class=FileResponse,
                  responses={**COMMON, 409: E, 200: {"description": "The MP4 (HTTP range requests supported)",
                                             "content": {"video/mp4": {}}}, 206: {"description": "Partial content"}})
def job_video(job_id: str, svc: Svc) -> FileResponse:
    return FileResponse(svc.video_path(job_id), media_type="video/mp4", filename=f"localvideo-{job_id}.mp4",
                        content_disposition_type="inline")


@router.api_route("/jobs/{job_id}/thumbnail", methods=["GET", "HEAD"], tags=["jobs"], response_class=FileResponse,
                  responses={**COMMON, 409: E, 200: {"description": "First frame, JPEG",
                                                     "content": {"image/jpeg": {}}}})
def job_thumbnail(job_id: str, svc: Svc) -> FileResponse:
    return FileResponse(svc.thumbnail_path(job_id), media_type="image/jpeg")


@router.get("/models", response_model=list[ModelOut], tags=["system"])
def list_models(svc: Svc) -> list[ModelOut]:
    """Every model, with install state and whether it fits this machine at default settings."""
    return [ModelOut(**m) for m in svc.models()]


@router.get("/system", response_model=SystemOut, tags=["system"])
def system(request: Request, svc: Svc) -> SystemOut:
    return SystemOut(**svc.system(), auth_required=bool(request.app.state.token),
                     cors_origins=list(request.app.state.cors_origins))
