"""Python SDK for the localvideo REST API: :class:`Client` (sync) and :class:`AsyncClient` (async), on httpx.

    from localvideo.client import Client

    with Client("http://127.0.0.1:8765") as lv:
        job = lv.submit("a red fox trotting through snow", model="tiny-wan", steps=4)
        job = lv.wait(job.id, on_progress=lambda j: print(j.state, j.progress))
        lv.download(job.id, "fox.mp4")
        story = lv.submit_story("[2s] a fox wakes\n[2s] it trots into the snow", model="tiny-wan")

Jobs come back as :class:`~localvideo.jobs.models.Job` values (the same fields as the server's JSON). Errors are
:class:`ApiError` with the server's ``code``, ``message``, ``hint`` and the HTTP ``status``. ``wait`` follows the
job's Server-Sent Events, so progress arrives as it happens, not by polling. Importing this module does not import
torch.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from .errors import LocalVideoError
from .jobs.models import Job, JobPage

DEFAULT_URL = "http://127.0.0.1:8765"


class ApiError(LocalVideoError):
    """An error answer from the server (or no answer at all: ``status`` 0)."""

    def __init__(self, status: int, code: str, message: str, hint: str | None = None, **details: Any) -> None:
        super().__init__(message, hint, **details)
        self.status = status
        self.code = code

    @classmethod
    def from_response(cls, r: httpx.Response) -> "ApiError":
        try:
            body = r.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return cls(r.status_code, "http_error", f"HTTP {r.status_code}: {r.text[:200]}")
        extra = {k: v for k, v in body.items() if k not in ("error", "message", "hint")}
        return cls(r.status_code, str(body.get("error", "http_error")), str(body.get("message", r.reason_phrase)),
                   body.get("hint"), **extra)


class JobFailed(ApiError):
    """``wait(..., raise_on_failure=True)`` on a job that ended failed, cancelled or interrupted."""

    def __init__(self, job: Job) -> None:
        err = job.error
        super().__init__(200, err.error if err else job.state,
                         err.message if err else f"Job {job.id} ended {job.state}.", err.hint if err else None)
        self.job = job


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _check(r: httpx.Response) -> httpx.Response:
    if r.status_code >= 400:
        raise ApiError.from_response(r)
    return r


def _submit_body(prompt: str | None, fields: dict) -> dict:
    body = {k: v for k, v in fields.items() if v is not None}
    if prompt is not None:
        body["prompt"] = prompt
    return body


def _file_part(image: str | os.PathLike | bytes, name: str) -> tuple[str, bytes, str]:
    """A multipart file; the server judges the type by content, so none is claimed here."""
    if isinstance(image, (bytes, bytearray)):
        return name, bytes(image), "application/octet-stream"
    path = Path(image)
    return path.name, path.read_bytes(), "application/octet-stream"


def _image_request(image, last_image, prompt: str | None, fields: dict) -> dict:
    files = {"image": _file_part(image, "image")}
    if last_image is not None:
        files["last_image"] = _file_part(last_image, "last_image")
    return {"files": files, "data": {"params": json.dumps(_submit_body(prompt, fields))}}


def _story_request(script: str, image, fields: dict) -> tuple[str, dict]:
    """(path, httpx arguments) of a story: JSON to /v1/jobs/story, or multipart with the image."""
    body = {k: v for k, v in fields.items() if v is not None} | {"script": script}
    if image is None:
        return "/v1/jobs/story", {"json": body}
    return "/v1/jobs/story-from-image", {"files": {"image": _file_part(image, "image")},
                                          "data": {"params": json.dumps(body, ensure_ascii=False)}}


def _list_params(state: str | list[str] | None, limit: int, offset: int) -> list[tuple[str, Any]]:
    states = [state] if isinstance(state, str) else list(state or [])
    return [*(("state", s) for s in states), ("limit", limit), ("offset", offset)]


class _SSEParser:
    """Incremental Server-Sent Events parser: feed it lines, it yields (event, data, id) per dispatched event."""

    def __init__(self) -> None:
        self.event, self.data, self.id = "message", [], None

    def feed(self, line: str):
        if line == "":
            if self.data:
                out = (self.event, "\n".join(self.data), self.id)
                self.event, self.data = "message", []
                return out
            self.event = "message"
            return None
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self.event = value
        elif name == "data":
            self.data.append(value)
        elif name == "id":
            self.id = value
        return None


def _job_from_event(data: str) -> Job:
    d = json.loads(data)
    d.pop("links", None)
    return Job.model_validate(d)


def _job(r: httpx.Response) -> Job:
    d = r.json()
    d.pop("links", None)
    return Job.model_validate(d)


def _page(r: httpx.Response) -> JobPage:
    d = r.json()
    for j in d["jobs"]:
        j.pop("links", None)
    return JobPage.model_validate(d)


class Client:
    """Synchronous client. ``base_url`` and ``token`` default to ``LOCALVIDEO_URL`` / ``LOCALVIDEO_API_TOKEN``."""

    def __init__(self, base_url: str | None = None, token: str | None = None, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        base_url = base_url or os.environ.get("LOCALVIDEO_URL") or DEFAULT_URL
        token = token if token is not None else os.environ.get("LOCALVIDEO_API_TOKEN")
        self._http = httpx.Client(base_url=base_url.rstrip("/"), headers=_headers(token), timeout=timeout,
                                  transport=transport)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _req(self, method: str, url: str, **kw) -> httpx.Response:
        try:
            return _check(self._http.request(method, url, **kw))
        except httpx.TransportError as e:
            raise ApiError(0, "unreachable", f"Could not reach the localvideo server at {self._http.base_url}: {e}",
                           "Start it with `localvideo serve`.") from e

    # -- jobs ------------------------------------------------------------------------------------------------
    def submit(self, prompt: str | None = None, **fields: Any) -> Job:
        """Queue a text-to-video job (fields as in :func:`localvideo.generate`)."""
        return _job(self._req("POST", "/v1/jobs", json=_submit_body(prompt, fields)))

    def submit_image(self, image: str | os.PathLike | bytes, prompt: str | None = None, *,
                     last_image: str | os.PathLike | bytes | None = None, **fields: Any) -> Job:
        """Queue an image-to-video job: ``image`` (a path or bytes; PNG, JPEG or WebP) is the first frame."""
        return _job(self._req("POST", "/v1/jobs/image-to-video", **_image_request(image, last_image, prompt, fields)))

    def submit_story(self, script: str, *, image: str | os.PathLike | bytes | None = None, **fields: Any) -> Job:
        """Queue a story: one scene per line of ``script`` (``"[2s] wide shot: a fox wakes"``), each generated and
        joined into one MP4 (fields as :func:`localvideo.story.make_story`'s: ``model``, ``crossfade_s``,
        ``continuity``, ``seed``, ``fps``, ``width``, ``height``, ``steps``, ``guidance``, ``negative_prompt``,
        ``duration_s``, ``from_paragraph``, ``expand_prompt``). ``image`` (a path or bytes): the first scene starts
        from it (image-to-video; required by models that only do image-to-video)."""
        path, kw = _story_request(script, image, fields)
        return _job(self._req("POST", path, **kw))

    def submit_animation(self, image: str | os.PathLike | bytes, **fields: Any) -> Job:
        """Queue a photo animation (no model weights): ``move``, ``width``, ``height``, ``fps``, ``duration_s`` or
        ``num_frames``, ``parallax``, ``strength``, ``easing``, ``seed``."""
        return _job(self._req("POST", "/v1/jobs/animate", files={"image": _file_part(image, "image")},
                              data={"params": json.dumps({k: v for k, v in fields.items() if v is not None})}))

    def get(self, job_id: str) -> Job:
        return _job(self._req("GET", f"/v1/jobs/{job_id}"))

    def list(self, state: str | list[str] | None = None, limit: int = 50, offset: int = 0) -> JobPage:
        return _page(self._req("GET", "/v1/jobs", params=_list_params(state, limit, offset)))

    def cancel(self, job_id: str) -> Job:
        return _job(self._req("POST", f"/v1/jobs/{job_id}/cancel"))

    def retry(self, job_id: str) -> Job:
        return _job(self._req("POST", f"/v1/jobs/{job_id}/retry"))

    def delete(self, job_id: str) -> None:
        self._req("DELETE", f"/v1/jobs/{job_id}")

    def events(self, job_id: str, timeout: float | None = None) -> Iterator[Job]:
        """The job now, then each change, until it ends (Server-Sent Events)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        parser = _SSEParser()
        try:
            with self._http.stream("GET", f"/v1/jobs/{job_id}/events",
                                   timeout=httpx.Timeout(self._http.timeout.connect, read=60.0)) as r:
                if r.status_code >= 400:
                    r.read()
                    raise ApiError.from_response(r)
                for line in r.iter_lines():
                    ev = parser.feed(line)
                    if ev is not None:
                        job = _job_from_event(ev[1])
                        yield job
                        if job.terminal:
                            return
                    if deadline is not None and time.monotonic() > deadline:
                        raise TimeoutError(f"Job {job_id} did not finish within {timeout} s.")
        except httpx.TransportError as e:
            raise ApiError(0, "unreachable", f"The event stream of job {job_id} broke: {e}") from e

    def wait(self, job_id: str, on_progress: Callable[[Job], None] | None = None, timeout: float | None = None,
             raise_on_failure: bool = False) -> Job:
        """Follow the job until it ends; returns the final job (``raise_on_failure``: raise :class:`JobFailed`)."""
        job = None
        for job in self.events(job_id, timeout=timeout):
            if on_progress is not None:
                on_progress(job)
        if job is None or not job.terminal:  # stream closed early (server shutting down): ask once more
            job = self.get(job_id)
        if raise_on_failure and job.state != "succeeded":
            raise JobFailed(job)
        return job

    def download(self, job_id: str, dest: str | os.PathLike, thumbnail: bool = False) -> Path:
        """Save the MP4 (or the JPEG thumbnail) to ``dest``; written to a temp file and renamed."""
        dest = Path(dest)
        tmp = dest.with_name(f".{dest.name}.partial")
        what = "thumbnail" if thumbnail else "video"
        try:
            with self._http.stream("GET", f"/v1/jobs/{job_id}/{what}") as r:
                if r.status_code >= 400:
                    r.read()
                    raise ApiError.from_response(r)
                with open(tmp, "wb") as f:
                    for chunk in r.iter_bytes():
                        f.write(chunk)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        return dest

    # -- system ----------------------------------------------------------------------------------------------
    def models(self) -> list[dict]:
        """``GET /v1/models``: one dict per catalog model (id, tasks, installed, pull_command, supports_last_image,
        requires_last_image, fits at default settings with strategy, peak_gb or the reason it does not)."""
        return self._req("GET", "/v1/models").json()

    def system(self) -> dict:
        return self._req("GET", "/v1/system").json()

    def health(self) -> dict:
        return self._req("GET", "/v1/health").json()


class AsyncClient:
    """Asynchronous client with the same surface as :class:`Client`."""

    def __init__(self, base_url: str | None = None, token: str | None = None, timeout: float = 30.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        base_url = base_url or os.environ.get("LOCALVIDEO_URL") or DEFAULT_URL
        token = token if token is not None else os.environ.get("LOCALVIDEO_API_TOKEN")
        self._http = httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=_headers(token), timeout=timeout,
                                       transport=transport)

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _req(self, method: str, url: str, **kw) -> httpx.Response:
        try:
            return _check(await self._http.request(method, url, **kw))
        except httpx.TransportError as e:
            raise ApiError(0, "unreachable", f"Could not reach the localvideo server at {self._http.base_url}: {e}",
                           "Start it with `localvideo serve`.") from e

    async def submit(self, prompt: str | None = None, **fields: Any) -> Job:
        return _job(await self._req("POST", "/v1/jobs", json=_submit_body(prompt, fields)))

    async def submit_image(self, image: str | os.PathLike | bytes, prompt: str | None = None, *,
                           last_image: str | os.PathLike | bytes | None = None, **fields: Any) -> Job:
        return _job(await self._req("POST", "/v1/jobs/image-to-video",
                                    **_image_request(image, last_image, prompt, fields)))

    async def submit_story(self, script: str, *, image: str | os.PathLike | bytes | None = None,
                           **fields: Any) -> Job:
        """As :meth:`Client.submit_story`."""
        path, kw = _story_request(script, image, fields)
        return _job(await self._req("POST", path, **kw))

    async def submit_animation(self, image: str | os.PathLike | bytes, **fields: Any) -> Job:
        return _job(await self._req("POST", "/v1/jobs/animate", files={"image": _file_part(image, "image")},
                                    data={"params": json.dumps({k: v for k, v in fields.items() if v is not None})}))

    async def get(self, job_id: str) -> Job:
        return _job(await self._req("GET", f"/v1/jobs/{job_id}"))

    async def list(self, state: str | list[str] | None = None, limit: int = 50, offset: int = 0) -> JobPage:
        return _page(await self._req("GET", "/v1/jobs", params=_list_params(state, limit, offset)))

    async def cancel(self, job_id: str) -> Job:
        return _job(await self._req("POST", f"/v1/jobs/{job_id}/cancel"))

    async def retry(self, job_id: str) -> Job:
        return _job(await self._req("POST", f"/v1/jobs/{job_id}/retry"))

    async def delete(self, job_id: str) -> None:
        await self._req("DELETE", f"/v1/jobs/{job_id}")

    async def events(self, job_id: str, timeout: float | None = None) -> AsyncIterator[Job]:
        deadline = None if timeout is None else time.monotonic() + timeout
        parser = _SSEParser()
        try:
            async with self._http.stream("GET", f"/v1/jobs/{job_id}/events",
                                         timeout=httpx.Timeout(self._http.timeout.connect, read=60.0)) as r:
                if r.status_code >= 400:
                    await r.aread()
                    raise ApiError.from_response(r)
                async for line in r.aiter_lines():
                    ev = parser.feed(line)
                    if ev is not None:
                        job = _job_from_event(ev[1])
                        yield job
                        if job.terminal:
                            return
                    if deadline is not None and time.monotonic() > deadline:
                        raise TimeoutError(f"Job {job_id} did not finish within {timeout} s.")
        except httpx.TransportError as e:
            raise ApiError(0, "unreachable", f"The event stream of job {job_id} broke: {e}") from e

    async def wait(self, job_id: str, on_progress: Callable[[Job], Any] | None = None, timeout: float | None = None,
                   raise_on_failure: bool = False) -> Job:
        job = None
        async for job in self.events(job_id, timeout=timeout):
            if on_progress is not None:
                res = on_progress(job)
                if hasattr(res, "__await__"):
                    await res
        if job is None or not job.terminal:
            job = await self.get(job_id)
        if raise_on_failure and job.state != "succeeded":
            raise JobFailed(job)
        return job

    async def download(self, job_id: str, dest: str | os.PathLike, thumbnail: bool = False) -> Path:
        dest = Path(dest)
        tmp = dest.with_name(f".{dest.name}.partial")
        what = "thumbnail" if thumbnail else "video"
        try:
            async with self._http.stream("GET", f"/v1/jobs/{job_id}/{what}") as r:
                if r.status_code >= 400:
                    await r.aread()
                    raise ApiError.from_response(r)
                with open(tmp, "wb") as f:
                    async for chunk in r.aiter_bytes():
                        f.write(chunk)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        return dest

    async def models(self) -> list[dict]:
        """``GET /v1/models``: as :meth:`Client.models`."""
        return (await self._req("GET", "/v1/models")).json()

    async def system(self) -> dict:
        return (await self._req("GET", "/v1/system")).json()

    async def health(self) -> dict:
        return (await self._req("GET", "/v1/health")).json()
