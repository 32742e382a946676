"""Table ``jobs``: every long-running piece of work, persistent, and a small API to keep it.

Whoever runs work that takes time (the dispatcher today; the supervisor, fleet,
system-class and transfer jobs later) records it here::

    table = JobTable(db, state_dir, clock)
    job_id = table.create("config.save", [{}], Owner.of(session), logs=True)
    table.started(job_id)
    table.set_progress(job_id, 40.0, "copying the database")
    table.append_log(job_id, b"some output\\n")           # only with logs=True
    table.finish(job_id, "succeeded", result={"size": 123})  # or "failed", error="…"
    table.get(job_id)                                       # the wire dict (model.to_wire)

Each change is committed at once and reported to the :class:`JobWatcher` (events,
waiters, log followers: :mod:`sysadmd.jobs.service`).  The dispatcher writes its rows
itself, in the same transactions as its own table (:mod:`sysadmd.dispatcher.store`),
through :meth:`JobTable.insert_dispatcher` and :meth:`JobTable.update_dispatcher`.

A job's output file lives in ``<state_dir>/jobs/`` (``logs_path``); retention deletes
it with its row (:meth:`JobTable.prune`).
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

from sysadmd import migrations
from sysadmd.runtime.db import ensure
from sysadmd.jobs import model
from sysadmd.jobs.model import Owner, dumps
from sysadmd.runtime.statedir import ensure_private_dir

EXCERPT_BYTES = 4096  # the tail of a job's output kept in logs_excerpt
ROW_OVERHEAD = 256  # bytes a row takes beyond its texts, for the size cap
BATCH = 500


class JobWatcher:
    """What the table tells about changes (the default tells nobody)."""

    def added(self, job_id: int) -> None:
        pass

    def changed(self, job_id: int) -> None:
        pass

    def finished(self, job_id: int) -> None:
        pass

    def output(self, job_id: int) -> None:
        pass


class UnknownJob(KeyError):
    pass


class JobTable:
    def __init__(self, db: sqlite3.Connection, state_dir: str, clock: Any = None):
        self.db = db
        self.jobs_dir = os.path.join(state_dir, "jobs")
        ensure_private_dir(self.jobs_dir)
        ensure(db, migrations.SCHEMA)
        self.seconds: Callable[[], float] = clock.seconds if clock is not None else time.time
        self.watcher = JobWatcher()
        self.abort_handlers: Dict[int, Callable[[], Any]] = {}  # running non-dispatcher jobs that can be aborted

    # --- the API for any producer of jobs -----------------------------------------------
    def create(self, method: str, arguments: Any, owner: Owner, *, queue: str = "", commands: Sequence[str] = (),
               logs: bool = False, abort: Optional[Callable[[], Any]] = None) -> int:
        """A new WAITING job; its id.  *logs*: give it an output file (:meth:`append_log`);
        *abort*: called by ``core/job_abort`` while the job is unfinished: it stops the
        work, which then finishes the job (outcome ``killed``).  Such a job lives in this
        process only: one found unfinished at the next start is finished ``interrupted``
        (:meth:`interrupt_leftovers`)."""
        cur = self.db.execute(
            "INSERT INTO jobs (method, arguments, state, owner_user, owner_via, owner_from, queue, commands,"
            " time_created) VALUES (?, ?, 'WAITING', ?, ?, ?, ?, ?, ?)",
            (method, dumps(arguments), owner.user, owner.via, owner.origin, queue, dumps(list(commands)),
             self.seconds()))
        job_id = cur.lastrowid
        if logs:
            path = os.path.join(self.jobs_dir, f"job-{job_id}-{secrets.token_hex(4)}.log")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
            self.db.execute("UPDATE jobs SET logs_path = ? WHERE id = ?", (path, job_id))
        if abort is not None:
            self.abort_handlers[job_id] = abort
        self.watcher.added(job_id)
        return job_id

    def started(self, job_id: int) -> None:
        self._update(job_id, "state = 'RUNNING', time_started = ?", (self.seconds(),))

    def set_progress(self, job_id: int, percent: Optional[float], description: str = "", extra: Any = None) -> None:
        self._update(job_id, "progress_percent = ?, progress_description = ?, progress_extra = ?",
                     (percent, description, None if extra is None else dumps(extra)))

    def append_log(self, job_id: int, data: bytes) -> None:
        row = self.db.execute("SELECT logs_path FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None or not row["logs_path"]:
            raise UnknownJob(f"job {job_id} has no output file (create it with logs=True)")
        with open(row["logs_path"], "ab", buffering=0) as f:
            f.write(data)
        self.watcher.output(job_id)

    def finish(self, job_id: int, outcome: str, *, result: Any = None, error: Optional[str] = None,
               exception: Optional[str] = None, exc_info: Any = None,
               return_codes: Optional[List[Optional[int]]] = None) -> None:
        """End a job: *outcome* is one of :data:`model.OUTCOMES`, which sets its state."""
        if outcome not in model.OUTCOME_STATE:
            raise ValueError(f"unknown outcome {outcome!r} (expected one of {', '.join(model.OUTCOMES)})")
        self.abort_handlers.pop(job_id, None)
        row = self.db.execute("SELECT logs_path FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise UnknownJob(f"no job {job_id}")
        excerpt = read_tail(row["logs_path"], EXCERPT_BYTES)
        sets = ("state = ?, outcome = ?, result = ?, error = ?, exception = ?, exc_info = ?, logs_excerpt = ?,"
                " time_finished = ?")
        params: List[Any] = [model.OUTCOME_STATE[outcome], outcome, None if result is None else dumps(result), error,
                             exception, None if exc_info is None else dumps(exc_info), excerpt, self.seconds()]
        if return_codes is not None:
            sets += ", return_codes = ?"
            params.append(dumps([-1 if c is None else c for c in return_codes]))
        self._update(job_id, sets, tuple(params), finished=True)

    def get(self, job_id: int) -> Optional[Dict[str, Any]]:
        row = self.db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else model.to_wire(row)

    def row(self, job_id: int) -> Optional[sqlite3.Row]:
        return self.db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()

    def _update(self, job_id: int, sets: str, params: tuple, finished: bool = False) -> None:
        cur = self.db.execute(f"UPDATE jobs SET {sets} WHERE id = ?", (*params, job_id))
        if cur.rowcount == 0:
            raise UnknownJob(f"no job {job_id}")
        if finished:
            self.watcher.finished(job_id)
        else:
            self.watcher.changed(job_id)

    def interrupt_leftovers(self) -> int:
        """Finish the non-dispatcher jobs a previous run of the daemon left unfinished (their
        work died with it) as ``interrupted``; how many.  Dispatcher jobs are the
        dispatcher's: it runs pending ones again and finishes running ones itself."""
        cur = self.db.execute(
            "UPDATE jobs SET state = 'ABORTED', outcome = 'interrupted', error = 'interrupted: the daemon stopped"
            " while it ran', time_finished = ? WHERE state IN ('WAITING', 'RUNNING') AND dispatcher_id IS NULL",
            (self.seconds(),))
        return cur.rowcount

    # --- the dispatcher's rows (written inside its own transactions) ----------------------
    def insert_dispatcher(self, dispatcher_id: str, queue: str, commands: Sequence[str], owner: Owner,
                          created: float, logs_path: str) -> int:
        cur = self.db.execute(
            "INSERT INTO jobs (method, arguments, state, owner_user, owner_via, owner_from, queue, dispatcher_id,"
            " commands, logs_path, time_created) VALUES ('dispatcher.run', ?, 'WAITING', ?, ?, ?, ?, ?, ?, ?, ?)",
            (dumps(list(commands)), owner.user, owner.via, owner.origin, queue, dispatcher_id,
             dumps(list(commands)), logs_path, created))
        return cur.lastrowid

    def update_dispatcher(self, job_id: int, state: str, outcome: Optional[str], error: Optional[str],
                          started: Optional[float], finished: Optional[float], return_codes: Sequence[int],
                          excerpt: Optional[str]) -> None:
        self.db.execute(
            "UPDATE jobs SET state = ?, outcome = ?, error = ?, time_started = ?, time_finished = ?,"
            " return_codes = ?, logs_excerpt = COALESCE(?, logs_excerpt) WHERE id = ?",
            (state, outcome, error, started, finished, dumps(list(return_codes)), excerpt, job_id))

    def _measure(self) -> None:
        """Record what each newly finished job takes (row texts and output file), for the
        size cap; done by retention, off the path that finishes jobs."""
        while True:
            rows = self.db.execute("SELECT id, logs_path FROM jobs WHERE stored_bytes = 0 AND time_finished IS NOT NULL"
                                   " AND state IN ('SUCCESS','FAILED','ABORTED') LIMIT ?", (BATCH,)).fetchall()
            if not rows:
                return
            sizes = [(file_size(r["logs_path"]), r["id"]) for r in rows]
            self.db.executemany(
                "UPDATE jobs SET stored_bytes = ? + " + str(ROW_OVERHEAD) + " + length(arguments) + length(commands)"
                " + length(return_codes) + COALESCE(length(result), 0) + COALESCE(length(error), 0)"
                " + COALESCE(length(logs_excerpt), 0) + COALESCE(length(progress_extra), 0) WHERE id = ?", sizes)

    def dispatcher_finished(self, ids: Sequence[int]) -> None:
        """The dispatcher finished these jobs (its transaction is committed)."""
        for job_id in ids:
            self.watcher.finished(job_id)

    # --- retention ------------------------------------------------------------------------
    def prune(self, finished_before: float, max_bytes: int) -> int:
        """Delete finished jobs that ended before *finished_before*, then the oldest finished
        jobs until what finished jobs take is at most *max_bytes*; rows and output files
        go together (dispatcher rows too).  How many were deleted."""
        deleted = 0
        while True:
            rows = self.db.execute(
                "SELECT id, logs_path FROM jobs WHERE time_finished < ? AND state IN ('SUCCESS','FAILED','ABORTED')"
                " ORDER BY time_finished LIMIT ?", (finished_before, BATCH)).fetchall()
            if not rows:
                break
            deleted += self._delete(rows)
        self._measure()
        total = self.db.execute("SELECT COALESCE(SUM(stored_bytes), 0) FROM jobs WHERE time_finished IS NOT NULL"
                                " AND state IN ('SUCCESS','FAILED','ABORTED')").fetchone()[0]
        while total > max_bytes:
            rows = self.db.execute(
                "SELECT id, logs_path, stored_bytes FROM jobs WHERE time_finished IS NOT NULL"
                " AND state IN ('SUCCESS','FAILED','ABORTED') ORDER BY time_finished, id LIMIT ?", (BATCH,)).fetchall()
            if not rows:
                break
            victims = []
            for row in rows:
                victims.append(row)
                total -= row["stored_bytes"]
                if total <= max_bytes:
                    break
            deleted += self._delete(victims)
        return deleted

    def _delete(self, rows: Iterable[sqlite3.Row]) -> int:
        rows = list(rows)
        ids = [r["id"] for r in rows]
        marks = ",".join("?" for _ in ids)
        self.db.execute("BEGIN")
        try:
            self.db.execute(f"DELETE FROM dispatcher_jobs WHERE seq IN ({marks})", ids)
            self.db.execute(f"DELETE FROM jobs WHERE id IN ({marks})", ids)
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")
        for row in rows:
            path = row["logs_path"]
            if path and os.path.dirname(path) == self.jobs_dir:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
        return len(ids)


def file_size(path: Optional[str]) -> int:
    if not path:
        return 0
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def read_tail(path: Optional[str], n: int) -> Optional[str]:
    """The last *n* bytes of the file at *path* as text (None: no file, or empty)."""
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return None
            f.seek(max(0, size - n))
            data = f.read(n)
    except OSError:
        return None
    skip = 0
    while skip < min(3, len(data)) and 0x80 <= data[skip] <= 0xBF and size > n:
        skip += 1
    return data[skip:].decode("utf-8", "replace")
