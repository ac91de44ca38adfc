"""Server-Sent Events for one job: the current job first, then every change, ending after a terminal state.

Each event is the whole job as JSON, ``id`` is its ``version`` (strictly increasing), ``event`` is ``state`` when
the state changed and ``progress`` otherwise. A comment line is sent every ``KEEPALIVE_S`` seconds; at that moment
the stream also re-reads the job, so even an event dropped for a very slow reader cannot leave it waiting forever.

The stream ends after the job's terminal state, and also:

* when the job is deleted (only a job that is not running can be): a last event ``deleted`` whose ``data`` is the
  job as it was last stored and whose ``id`` is one more than its version. Its state is not terminal (a deleted job
  is usually still queued), so a client that asks for the job afterwards gets 404 — what the SDKs' ``wait`` do;
* when the server shuts down: a running job's stream ends with its ``interrupted`` state
  (:meth:`~localvideo.jobs.service.JobService.begin_shutdown`); any other stream just ends (a queued job stays
  queued and runs after the restart).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from starlette.concurrency import run_in_threadpool

from ..jobs.events import Deleted
from ..jobs.models import Job
from ..jobs.service import JobService
from .schemas import JobOut

KEEPALIVE_S = 15.0


def format_event(job: Job, event: str, version: int | None = None) -> str:
    eid = job.version if version is None else version
    return f"id: {eid}\nevent: {event}\ndata: {JobOut.of(job).model_dump_json()}\n\n"


async def job_events(service: JobService, job_id: str) -> AsyncIterator[str]:
    sub = service.subscribe(job_id, asyncio.get_running_loop())
    try:
        job = await run_in_threadpool(service.get, job_id)  # after subscribing: nothing can fall in between
        yield format_event(job, "state")
        last_version, last_state = job.version, job.state
        while not job.terminal:
            try:
                event = await sub.aget(KEEPALIVE_S)
            except (TimeoutError, asyncio.TimeoutError):
                yield ": keepalive\n\n"
                event = await run_in_threadpool(service.store.get, job_id)
                if event is None:  # deleted, and its notice dropped: say so from the last job this stream saw
                    event = Deleted(job)
            if event is None:  # the service is shutting down
                return
            if isinstance(event, Deleted):
                yield format_event(event.job, "deleted", max(event.version, last_version + 1))
                return
            if event.version <= last_version:
                continue
            job = event
            yield format_event(job, "state" if job.state != last_state else "progress")
            last_version, last_state = job.version, job.state
    finally:
        sub.close()
