"""Where jobs live: SQLite in WAL mode (``<home>/jobs.db``), so the queue and its history survive a restart.

:class:`JobStore` is the small surface the service needs; :class:`SQLiteJobStore` implements it. Every state change
is one conditional ``UPDATE … WHERE state IN (…) RETURNING *``: it either happens whole or not at all, and two
threads can never move one job two ways. A PostgreSQL store would implement the same Protocol with the same SQL.
A move to cancelled, failed or interrupted freezes the job's last progress in the same statement (``eta_s`` null,
``message`` from :data:`~localvideo.jobs.models.STOPPED_MESSAGES`), so a stopped job never looks live.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from .models import STATES, STOPPED_MESSAGES, TRANSITIONS, Job, JobError, JobProgress, JobResult

SCHEMA_VERSION = 1

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS jobs (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    id               TEXT NOT NULL UNIQUE,
    kind             TEXT NOT NULL,
    state            TEXT NOT NULL CHECK (state IN ({", ".join(repr(s) for s in STATES)})),
    request          TEXT NOT NULL,
    progress         TEXT,
    result           TEXT,
    error            TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    attempts         INTEGER NOT NULL DEFAULT 0,
    created_at       REAL NOT NULL,
    started_at       REAL,
    finished_at      REAL,
    version          INTEGER NOT NULL DEFAULT 0,
    notes            TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state_seq ON jobs (state, seq);
"""

_UNSET: Any = object()
# The last progress, frozen (one parameter: the message); NULL progress stays NULL.
_FREEZE = "progress = json_set(progress, '$.eta_s', NULL, '$.message', ?)"


class JobStore(Protocol):
    def insert(self, job: Job) -> Job: ...
    def get(self, job_id: str) -> Job | None: ...
    def list(self, states: Iterable[str] | None = None, limit: int = 50, offset: int = 0) -> tuple[list[Job], int]: ...
    def count(self, states: Iterable[str] | None = None) -> int: ...
    def transition(self, job_id: str, from_states: Iterable[str], to_state: str, **fields: Any) -> Job | None: ...
    def set_progress(self, job_id: str, progress: JobProgress) -> Job | None: ...
    def request_cancel(self, job_id: str) -> Job | None: ...
    def claim_next(self) -> Job | None: ...
    def interrupt_running(self, error: JobError) -> list[Job]: ...
    def delete(self, job_id: str, states: Iterable[str]) -> bool: ...
    def close(self) -> None: ...


def _ts(d: datetime | None) -> float | None:
    return None if d is None else d.timestamp()


def _dt(x: float | None) -> datetime | None:
    return None if x is None else datetime.fromtimestamp(x, tz=timezone.utc)


def _dump(model) -> str | None:
    return None if model is None else model.model_dump_json()


def _notes(notes: list[str] | None) -> str | None:
    return json.dumps(list(notes), ensure_ascii=False) if notes else None


class SQLiteJobStore:
    """A :class:`JobStore` on one SQLite file (WAL). Thread-safe: one connection behind a lock."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=10.0)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise RuntimeError(f"SQLite refused WAL mode for {self.path} (got {mode})")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=10000")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(f"{self.path} was written by a newer localvideo (schema {version}).")
            self._db.executescript(_SCHEMA)
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(jobs)")}
            if "notes" not in columns:  # added later; additive, so older versions still read this database
                self._db.execute("ALTER TABLE jobs ADD COLUMN notes TEXT")
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    # -- reading --------------------------------------------------------------------------------------------
    @staticmethod
    def _job(row: sqlite3.Row) -> Job:
        return Job(
            id=row["id"], kind=row["kind"], state=row["state"], request=json.loads(row["request"]),
            progress=JobProgress.model_validate_json(row["progress"]) if row["progress"] else None,
            result=JobResult.model_validate_json(row["result"]) if row["result"] else None,
            error=JobError.model_validate_json(row["error"]) if row["error"] else None,
            cancel_requested=bool(row["cancel_requested"]), attempts=row["attempts"],
            notes=json.loads(row["notes"]) if row["notes"] else [], created_at=_dt(row["created_at"]),
            started_at=_dt(row["started_at"]), finished_at=_dt(row["finished_at"]), version=row["version"],
        )

    def _one(self, sql: str, params: tuple | list) -> Job | None:
        with self._lock:
            row = self._db.execute(sql, params).fetchone()
        return self._job(row) if row is not None else None

    def get(self, job_id: str) -> Job | None:
        return self._one("SELECT * FROM jobs WHERE id = ?", (job_id,))

    @staticmethod
    def _where(states: Iterable[str] | None) -> tuple[str, list]:
        if not states:
            return "", []
        states = list(states)
        return f" WHERE state IN ({', '.join('?' * len(states))})", states

    def list(self, states: Iterable[str] | None = None, limit: int = 50, offset: int = 0) -> tuple[list[Job], int]:
        """Newest first."""
        where, params = self._where(states)
        with self._lock:
            total = self._db.execute(f"SELECT COUNT(*) FROM jobs{where}", params).fetchone()[0]
            rows = self._db.execute(f"SELECT * FROM jobs{where} ORDER BY seq DESC LIMIT ? OFFSET ?",
                                    [*params, int(limit), int(offset)]).fetchall()
        return [self._job(r) for r in rows], total

    def count(self, states: Iterable[str] | None = None) -> int:
        where, params = self._where(states)
        with self._lock:
            return self._db.execute(f"SELECT COUNT(*) FROM jobs{where}", params).fetchone()[0]

    # -- writing --------------------------------------------------------------------------------------------
    def insert(self, job: Job) -> Job:
        """Store a new job and return it as stored, read back by the INSERT itself (``RETURNING``): once it commits
        a worker may claim the job at any moment, and a separate read could already see it ``running``."""
        return self._one(  # type: ignore[return-value]
            "INSERT INTO jobs (id, kind, state, request, progress, result, error, cancel_requested, attempts,"
            " created_at, started_at, finished_at, version, notes) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?) RETURNING *",
            (job.id, job.kind, job.state, json.dumps(job.request, ensure_ascii=False), _dump(job.progress),
             _dump(job.result), _dump(job.error), int(job.cancel_requested), job.attempts,
             _ts(job.created_at), _ts(job.started_at), _ts(job.finished_at), job.version, _notes(job.notes)))

    def transition(self, job_id: str, from_states: Iterable[str], to_state: str, *, progress: Any = _UNSET,
                   result: Any = _UNSET, error: Any = _UNSET, started_at: Any = _UNSET, finished_at: Any = _UNSET,
                   cancel_requested: Any = _UNSET, request: Any = _UNSET, notes: Any = _UNSET) -> Job | None:
        """Move the job to ``to_state`` if it is in one of ``from_states`` (each an allowed transition). Unless
        ``progress`` is given, a move to cancelled, failed or interrupted freezes the last progress.

        Returns the updated job, or None when it was not in those states (or does not exist). ``request`` replaces
        the stored request (a retry migrating an old row); ``notes`` replaces the job's notes."""
        from_states = list(from_states)
        for s in from_states:
            if to_state not in TRANSITIONS[s]:
                raise ValueError(f"{s} → {to_state} is not a job transition")
        sets, params = ["state = ?", "version = version + 1"], [to_state]
        if progress is _UNSET and to_state in STOPPED_MESSAGES:
            sets.append(_FREEZE)
            params.append(STOPPED_MESSAGES[to_state])
        for col, value, conv in (("progress", progress, _dump), ("result", result, _dump), ("error", error, _dump),
                                 ("started_at", started_at, _ts), ("finished_at", finished_at, _ts),
                                 ("cancel_requested", cancel_requested, int),
                                 ("request", request, lambda r: json.dumps(r, ensure_ascii=False)),
                                 ("notes", notes, _notes)):
            if value is not _UNSET:
                sets.append(f"{col} = ?")
                params.append(conv(value))
        sql = (f"UPDATE jobs SET {', '.join(sets)} WHERE id = ? AND state IN ({', '.join('?' * len(from_states))})"
               " RETURNING *")
        return self._one(sql, [*params, job_id, *from_states])

    def set_progress(self, job_id: str, progress: JobProgress) -> Job | None:
        return self._one("UPDATE jobs SET progress = ?, version = version + 1 WHERE id = ? AND state = 'running'"
                         " RETURNING *", (_dump(progress), job_id))

    def request_cancel(self, job_id: str) -> Job | None:
        return self._one("UPDATE jobs SET cancel_requested = 1, version = version + 1"
                         " WHERE id = ? AND state = 'running' RETURNING *", (job_id,))

    def claim_next(self) -> Job | None:
        """Atomically take the oldest queued job and mark it running."""
        from .models import utcnow

        return self._one(
            "UPDATE jobs SET state = 'running', started_at = ?, finished_at = NULL, cancel_requested = 0,"
            " progress = ?, attempts = attempts + 1, version = version + 1 WHERE id = (SELECT id FROM jobs WHERE state = 'queued'"
            " ORDER BY seq LIMIT 1) AND state = 'queued' RETURNING *",
            (_ts(utcnow()), JobProgress(phase="loading").model_dump_json()))

    def interrupt_running(self, error: JobError) -> list[Job]:
        """Jobs left ``running`` by a process that is gone become ``interrupted`` (then retryable)."""
        from .models import utcnow

        with self._lock:
            rows = self._db.execute(
                f"UPDATE jobs SET state = 'interrupted', error = ?, finished_at = ?, version = version + 1, {_FREEZE}"
                " WHERE state = 'running' RETURNING *",
                (_dump(error), _ts(utcnow()), STOPPED_MESSAGES["interrupted"])).fetchall()
        return [self._job(r) for r in rows]

    def delete(self, job_id: str, states: Iterable[str]) -> bool:
        states = list(states)
        with self._lock:
            cur = self._db.execute(f"DELETE FROM jobs WHERE id = ? AND state IN ({', '.join('?' * len(states))})",
                                   [job_id, *states])
            return cur.rowcount > 0

    def integrity_ok(self) -> bool:
        with self._lock:
            return self._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    def close(self) -> None:
        with self._lock:
            self._db.close()
