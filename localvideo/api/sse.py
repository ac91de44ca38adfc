"""Server-Sent Events for one job: the current job first, then every change, ending after a terminal state.

Each event is the whole job as JSON, ``id`` is its ``version`` (strictly increasing), ``event`` is ``state`` when
the state changed and ``progress`` otherwise. A comment line is sent every ``KEEPALIVE_S`` seconds; at that moment
the stream also re-reads the job, so even an event dropped for a very slow reader cannot leave it waiting forever.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from starlette.concurrency import run_in_threadpool

from ..jobs.models import Job
from ..jobs.service import JobService
from .schemas import JobOut

KEEPALIVE_S = 15.0


def format_event(job: Job, event: str) -> str:
    return f"id: {job.version}\nevent: {event}\ndata: {JobOut.of(job).model_dump_json()}\n\n"


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
                if event is None:  # deleted meanwhile
                    return
            if event is None:  # the service is shutting down
                return
            if event.version <= last_version:
                continue
            job = event
            yield format_event(job, "state" if job.state != last_state else "progress")
            last_version, last_state = job.version, job.state
    finally:
        sub.close()
