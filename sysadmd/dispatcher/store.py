"""Dispatcher jobs on disk: one SQLite row per job and one output file per job.

Everything is written as it happens, so a crash loses nothing that was reported:

* table ``dispatcher_jobs`` (in the daemon's database): id, queue, commands (JSON),
  state, the order of submission (``seq``), times, the index of the current command,
  return codes (JSON), the byte range of each command's output in the job file (JSON),
  and the ``killed``/``interrupted`` flags.  State changes are committed at once.
* ``<state_dir>/jobs/<readable id>-<hash of id>-<random>.log``: the merged stdout/stderr
  of every command of the job, appended as it arrives (created with the first output).
  Job ids are arbitrary strings and may be reused once a job has finished, hence the
  hash and the random part.

Per-command logs are rebuilt from the recorded byte ranges (:meth:`JobStore.command_logs`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import sqlite3
from dataclasses import dataclass, field
from typing import Iterable, List, Optional, Sequence

from sysadmd.db import ensure_schema
from sysadmd.dispatcher.output import render
from sysadmd.statedir import ensure_private_dir

SCHEMA = """
CREATE TABLE IF NOT EXISTS dispatcher_jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    queue TEXT NOT NULL,
    commands TEXT NOT NULL,
    origin TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    current INTEGER NOT NULL DEFAULT -1,
    return_codes TEXT NOT NULL DEFAULT '[]',
    ranges TEXT NOT NULL DEFAULT '[]',
    killed INTEGER NOT NULL DEFAULT 0,
    interrupted INTEGER NOT NULL DEFAULT 0,
    log_file TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS dispatcher_jobs_by_state ON dispatcher_jobs (state, seq);
CREATE INDEX IF NOT EXISTS dispatcher_jobs_by_id ON dispatcher_jobs (id, seq);
"""


@dataclass
class JobRecord:
    """One row of ``dispatcher_jobs``, decoded."""

    seq: int
    id: str
    queue: str
    commands: List[str]
    origin: str
    state: str
    created: float
    started: Optional[float] = None
    finished: Optional[float] = None
    current: int = -1
    return_codes: List[int] = field(default_factory=list)
    ranges: List[List[int]] = field(default_factory=list)  # [start, end] per command that ran
    killed: bool = False
    interrupted: bool = False
    log_file: str = ""

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "JobRecord":
        return cls(
            seq=row["seq"], id=row["id"], queue=row["queue"], commands=json.loads(row["commands"]),
            origin=row["origin"], state=row["state"], created=row["created"], started=row["started"],
            finished=row["finished"], current=row["current"], return_codes=json.loads(row["return_codes"]),
            ranges=json.loads(row["ranges"]), killed=bool(row["killed"]), interrupted=bool(row["interrupted"]),
            log_file=row["log_file"],
        )


def safe_file_name(job_id: str) -> str:
    """A file name for *job_id* that is unique, short, and still readable."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", job_id)[:40].strip("._") or "job"
    digest = hashlib.sha256(job_id.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"{readable}-{digest}-{secrets.token_hex(4)}.log"


class JobStore:
    def __init__(self, db: sqlite3.Connection, state_dir: str):
        self.db = db
        self.jobs_dir = os.path.join(state_dir, "jobs")
        ensure_private_dir(self.jobs_dir)
        ensure_schema(db, SCHEMA)

    # --- rows ---------------------------------------------------------------------------
    def add(self, job_id: str, queue: str, commands: Sequence[str], origin: str, created: float) -> JobRecord:
        log_file = safe_file_name(job_id)
        cur = self.db.execute(
            "INSERT INTO dispatcher_jobs (id, queue, commands, origin, state, created, log_file)"
            " VALUES (?, ?, ?, ?, 'pending', ?, ?)",
            (job_id, queue, json.dumps(list(commands)), origin, created, log_file),
        )
        return JobRecord(cur.lastrowid, job_id, queue, list(commands), origin, "pending", created, log_file=log_file)

    def save(self, record: JobRecord) -> None:
        """Write the record's changing fields (state, times, codes, ranges, flags)."""
        self.db.execute(
            "UPDATE dispatcher_jobs SET state = ?, started = ?, finished = ?, current = ?, return_codes = ?,"
            " ranges = ?, killed = ?, interrupted = ? WHERE seq = ?",
            (record.state, record.started, record.finished, record.current, json.dumps(record.return_codes),
             json.dumps(record.ranges), int(record.killed), int(record.interrupted), record.seq),
        )

    def unfinished(self) -> List[JobRecord]:
        """Pending and running jobs in submission order."""
        rows = self.db.execute("SELECT * FROM dispatcher_jobs WHERE state != 'finished' ORDER BY seq").fetchall()
        return [JobRecord.from_row(r) for r in rows]

    def finished(self, job_ids: Optional[Iterable[str]] = None, limit: int = 100) -> List[JobRecord]:
        """Finished jobs, newest first, optionally only those with the given ids."""
        if job_ids is None:
            rows = self.db.execute(
                "SELECT * FROM dispatcher_jobs WHERE state = 'finished' ORDER BY seq DESC LIMIT ?", (limit,)
            ).fetchall()
        else:
            ids = list(job_ids)
            marks = ",".join("?" for _ in ids) or "NULL"
            rows = self.db.execute(
                f"SELECT * FROM dispatcher_jobs WHERE state = 'finished' AND id IN ({marks}) ORDER BY seq DESC LIMIT ?",
                (*ids, limit),
            ).fetchall()
        return [JobRecord.from_row(r) for r in rows]

    def prune(self, finished_before: float) -> int:
        """Forget finished jobs older than *finished_before* and delete their files."""
        rows = self.db.execute(
            "SELECT seq, log_file FROM dispatcher_jobs WHERE state = 'finished' AND finished < ?", (finished_before,)
        ).fetchall()
        for row in rows:
            self._unlink(row["log_file"])
        self.db.execute("DELETE FROM dispatcher_jobs WHERE state = 'finished' AND finished < ?", (finished_before,))
        return len(rows)

    # --- output files -------------------------------------------------------------------
    def log_path(self, record: JobRecord) -> str:
        return os.path.join(self.jobs_dir, record.log_file)

    def open_output(self, record: JobRecord):
        """The job's output file, opened for appending without user-space buffering."""
        fd = os.open(self.log_path(record), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        return os.fdopen(fd, "ab", buffering=0)

    def output_size(self, record: JobRecord) -> int:
        try:
            return os.path.getsize(self.log_path(record))
        except OSError:
            return 0

    def command_logs(self, record: JobRecord, cap: int) -> List[str]:
        """Each started command's output (capped tail), from the recorded byte ranges."""
        logs: List[str] = []
        try:
            f = open(self.log_path(record), "rb")
        except OSError:
            return ["" for _ in record.ranges]
        with f:
            for start, end in record.ranges:
                total = max(0, end - start)
                begin = max(start, end - cap)
                f.seek(begin)
                logs.append(render(f.read(end - begin), total, cap))
        return logs

    def _unlink(self, name: str) -> None:
        if not name:
            return
        try:
            os.unlink(os.path.join(self.jobs_dir, name))
        except FileNotFoundError:
            pass


def ranges_closed(ranges: List[List[int]], size: int) -> List[List[int]]:
    """*ranges* with a still-open last range (end -1) closed at *size*."""
    return [[start, size if end < 0 else end] for start, end in ranges]

