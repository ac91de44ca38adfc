"""Small helpers shared by several test modules (fixtures live in conftest.py, the live server in _live.py)."""

from __future__ import annotations

import time


def wait_for(svc, job_id: str, pred, timeout: float = 120.0):
    """Poll an in-process JobService until ``pred(job)`` holds and return that job; TimeoutError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = svc.get(job_id)
        if pred(job):
            return job
        time.sleep(0.02)
    raise TimeoutError(svc.get(job_id))
