"""Fan-out of job changes to subscribers (SSE streams, SDK waits, the UI), from worker threads to any consumer.

Each subscriber has its own bounded queue. A slow subscriber loses the *oldest* queued changes, never the newest,
and every event is the whole job (with a ``version``), so the latest event always tells the full truth.
A deleted job's subscribers get a :class:`Deleted` notice last. ``None`` in a queue means "the service is shutting
down".
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections import defaultdict
from dataclasses import dataclass

from .models import Job

_SENTINEL = None


@dataclass(frozen=True)
class Deleted:
    """The last event of a deleted job: ``job`` as it was last stored. ``version`` is one more than its version (the
    deletion is one more change; SSE ids keep increasing)."""

    job: Job
    terminal = True  # nothing follows

    @property
    def id(self) -> str:
        return self.job.id

    @property
    def version(self) -> int:
        return self.job.version + 1


class Subscription:
    def __init__(self, hub: "EventHub", job_id: str | None, loop: asyncio.AbstractEventLoop | None,
                 maxsize: int) -> None:
        self._hub, self.job_id, self._loop = hub, job_id, loop
        self._q: asyncio.Queue | queue.Queue = asyncio.Queue(maxsize) if loop is not None else queue.Queue(maxsize)

    # called from any thread
    def _deliver(self, job: "Job | Deleted | None") -> None:
        if self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._put, job)
            except RuntimeError:  # the loop is closed: the subscriber is gone
                pass
        else:
            self._put(job)

    def _put(self, job: "Job | Deleted | None") -> None:
        while True:
            try:
                self._q.put_nowait(job)
                return
            except (asyncio.QueueFull, queue.Full):
                try:
                    self._q.get_nowait()  # drop the oldest; the newest event carries the whole job
                except (asyncio.QueueEmpty, queue.Empty):
                    pass

    def get(self, timeout: float) -> "Job | Deleted | None":
        """Next event (sync subscribers). Raises ``queue.Empty`` after ``timeout`` seconds."""
        return self._q.get(timeout=timeout)  # type: ignore[call-arg]

    async def aget(self, timeout: float) -> "Job | Deleted | None":
        """Next event (async subscribers). Raises ``TimeoutError`` after ``timeout`` seconds."""
        return await asyncio.wait_for(self._q.get(), timeout)  # type: ignore[misc]

    def close(self) -> None:
        self._hub.unsubscribe(self)

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class EventHub:
    def __init__(self, maxsize: int = 256) -> None:
        self._subs: dict[str | None, set[Subscription]] = defaultdict(set)
        self._lock = threading.Lock()
        self._maxsize = maxsize
        self.closed = False

    def subscribe(self, job_id: str | None = None, loop: asyncio.AbstractEventLoop | None = None) -> Subscription:
        """Changes of one job (or of all jobs with ``job_id=None``). Pass ``loop`` to consume with ``aget``."""
        sub = Subscription(self, job_id, loop, self._maxsize)
        with self._lock:
            self._subs[job_id].add(sub)
            if self.closed:
                sub._deliver(_SENTINEL)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            subs = self._subs.get(sub.job_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._subs[sub.job_id]

    def publish_deleted(self, job: Job) -> None:
        """Tell the job's subscribers that it was deleted (``job``: as it was last stored)."""
        self.publish(Deleted(job))

    def publish(self, job: "Job | Deleted") -> None:
        with self._lock:
            targets = [*self._subs.get(job.id, ()), *self._subs.get(None, ())]
        for sub in targets:
            sub._deliver(job)

    def subscriber_count(self) -> int:
        with self._lock:
            return sum(len(s) for s in self._subs.values())

    def close(self) -> None:
        with self._lock:
            self.closed = True
            targets = [s for subs in self._subs.values() for s in subs]
        for sub in targets:
            sub._deliver(_SENTINEL)
