"""The job service: a persistent queue (SQLite, WAL), workers, progress events. See :mod:`.service`."""

from .models import STATES, TERMINAL, Job, JobConflict, JobError, JobNotFound, JobPage, JobProgress, JobResult, JobState
from .service import JobService

__all__ = ["JobService", "Job", "JobPage", "JobProgress", "JobResult", "JobError", "JobState", "JobNotFound",
           "JobConflict", "STATES", "TERMINAL"]
