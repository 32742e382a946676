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
Output files are capped (``JOB_OUTPUT_FILE_MAX`` per job, ``JOB_OUTPUT_TOTAL_MAX`` for all;
the dispatcher decides what is kept): a range is ``[start, end, cut]`` where ``cut``
counts the command's bytes that are not in the file, and the row's ``cut`` the job's.
A command's output has at most one *gap*: its first bytes, then (once the file is full)
nothing until it ends, then its last bytes.  ``gaps`` (JSON, one entry per range) holds
the file offset where each command's gap is (its last bytes follow it up to the range's
end), or ``-1`` for a command with no gap.  :meth:`JobStore.read_output` serves any byte
range of a command's output from that layout (and, while it runs, from memory).
A job's ``marker`` is the value of ``SYSADMD_JOB`` its processes carry (:mod:`.procscan`).

Every dispatcher job is also a row of the general job table ``jobs``
(:mod:`sysadmd.jobs.store`): its ``seq`` here is its ``id`` there, both rows are written
in one transaction, and the job table's watcher hears of every change (events, waiters,
log followers).  :func:`dispatcher_state` turns a record into the job model's state,
outcome and error.

Every text that reaches a row or a reply can be encoded as UTF-8: lone surrogates are
refused on the way in (:func:`has_surrogate`) and replaced when an older row is read
back (:func:`clean`); a row that cannot be decoded at all is skipped with a warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, List, Optional, Sequence, Tuple

from twisted.logger import Logger

from sysadmd import migrations
from sysadmd.runtime.db import ensure
from sysadmd.dispatcher.output import _skip_continuation, _whole_prefix, render
from sysadmd.jobs import model as job_model
from sysadmd.jobs.model import Owner
from sysadmd.jobs.store import EXCERPT_BYTES, JobTable, read_tail
from sysadmd.untrusted import clean
from sysadmd.runtime.statedir import ensure_private_dir

log = Logger()

BATCH = 500  # rows per statement when many rows change at once


class BadRow(ValueError):
    """A stored row that cannot be decoded."""


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
    marker: str = ""  # SYSADMD_JOB of its processes (set when it starts)
    cut: int = 0  # bytes of its output not kept in its file
    gaps: List[int] = field(default_factory=list)  # per range: file offset of its gap, or -1
    start_error: str = ""  # why its last command could not start (not stored: the outcome says it)

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "JobRecord":
        """Decode a row, repairing texts that cannot be encoded; raises :class:`BadRow`."""
        try:
            commands = json.loads(row["commands"])
            codes = json.loads(row["return_codes"])
            ranges = json.loads(row["ranges"])
            if not isinstance(commands, list) or not all(isinstance(c, str) for c in commands):
                raise ValueError("commands is not a list of strings")
            if not isinstance(codes, list) or not all(isinstance(c, int) for c in codes):
                raise ValueError("return_codes is not a list of integers")
            if not isinstance(ranges, list) or not all(
                    isinstance(r, list) and len(r) in (2, 3) and all(isinstance(n, int) for n in r) for r in ranges):
                raise ValueError("ranges is not a list of [start, end(, cut)]")
            return cls(
                seq=row["seq"], id=clean(str(row["id"])), queue=clean(str(row["queue"])),
                commands=[clean(c) for c in commands], origin=clean(str(row["origin"])), state=row["state"],
                created=row["created"], started=row["started"], finished=row["finished"], current=row["current"],
                return_codes=codes, ranges=[r if len(r) == 3 else r + [0] for r in ranges],
                killed=bool(row["killed"]), interrupted=bool(row["interrupted"]), log_file=row["log_file"],
                marker=row["marker"], cut=int(row["cut"] or 0), gaps=_gaps(row),
            )
        except (ValueError, TypeError, KeyError, IndexError) as e:
            raise BadRow(f"dispatcher job row {row['seq']}: {e}") from None


def _gaps(row: sqlite3.Row) -> List[int]:
    """The ``gaps`` column; unreadable (or from before gaps were recorded) counts as unknown: []."""
    try:
        gaps = json.loads(row["gaps"])
    except (ValueError, TypeError, KeyError, IndexError):
        return []
    if not isinstance(gaps, list) or not all(isinstance(g, int) and not isinstance(g, bool) for g in gaps):
        return []
    return gaps


def owner_from_origin(origin: str) -> Owner:
    """The owner of a job submitted without one: ``origin`` is ``user@address``."""
    user, _, peer = origin.rpartition("@")
    return Owner(user, None, peer)


def dispatcher_state(record: JobRecord) -> Tuple[str, Optional[str], Optional[str]]:
    """``(state, outcome, error)`` of a dispatcher job in the job model."""
    if record.state == "pending":
        return job_model.WAITING, None, None
    if record.state == "running":
        return job_model.RUNNING, None, None
    if record.killed:
        return job_model.ABORTED, job_model.KILLED, "killed on request"
    if record.interrupted:
        return job_model.ABORTED, job_model.INTERRUPTED, "interrupted: the daemon stopped while it ran"
    codes = record.return_codes
    if record.start_error and codes and codes[-1] == -1:
        index = len(codes) - 1
        return (job_model.FAILED, job_model.NOT_STARTED,
                f"command {index + 1} ({record.commands[index]!r}) could not start: {record.start_error}")
    if codes and len(codes) == len(record.commands) and all(c == 0 for c in codes):
        return job_model.SUCCESS, job_model.SUCCEEDED, None
    index = next((i for i, c in enumerate(codes) if c != 0), len(codes) - 1)
    if index < 0:
        return job_model.FAILED, job_model.FAILED_OUTCOME, "no command ran"
    code = codes[index]
    how = f"exited with code {code}" if code >= 0 else "was ended by a signal"
    return job_model.FAILED, job_model.FAILED_OUTCOME, f"command {index + 1} ({record.commands[index]!r}) {how}"


class _WatchedFile:
    """A job's output file that tells the job table when it grows (``core/job_log`` follow)."""

    def __init__(self, f: Any, grew: Callable[[], None]):
        self._f = f
        self._grew = grew

    def write(self, data: bytes) -> int:
        n = self._f.write(data)
        self._grew()
        return n

    def close(self) -> None:
        self._f.close()


def safe_file_name(job_id: str) -> str:
    """A file name for *job_id* that is unique, short, and still readable."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", job_id)[:40].strip("._") or "job"
    digest = hashlib.sha256(job_id.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"{readable}-{digest}-{secrets.token_hex(4)}.log"


class JobStore:
    def __init__(self, db: sqlite3.Connection, state_dir: str, jobs: Optional[JobTable] = None):
        self.db = db
        self.jobs_dir = os.path.join(state_dir, "jobs")
        ensure_private_dir(self.jobs_dir)
        ensure(db, migrations.SCHEMA)  # the table is made by sysadmd/migrations/
        self.jobs = jobs if jobs is not None else JobTable(db, state_dir)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Several statements as one commit (the connection is in autocommit mode); inside
        another such block, simply part of it."""
        if self.db.in_transaction:
            yield
            return
        self.db.execute("BEGIN")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def _records(self, rows: Iterable[sqlite3.Row]) -> List[JobRecord]:
        records = []
        for row in rows:
            try:
                records.append(JobRecord.from_row(row))
            except BadRow as e:
                log.warn("skipping an unreadable row: {error}", error=e)
        return records

    # --- rows ---------------------------------------------------------------------------
    def add(self, job_id: str, queue: str, commands: Sequence[str], origin: str, created: float,
            owner: Optional[Owner] = None) -> JobRecord:
        """Insert a pending job; its texts must be encodable (see :func:`has_surrogate`)."""
        return self.add_many([(job_id, queue, commands, origin, created, owner)])[0]

    def _insert(self, job_id: str, queue: str, commands: Sequence[str], origin: str, created: float,
                owner: Optional[Owner] = None) -> JobRecord:
        log_file = safe_file_name(job_id)
        origin = clean(origin)
        owner = owner if owner is not None else owner_from_origin(origin)
        # The job table hands out the number: a dispatcher job's seq is its job id.
        seq = self.jobs.insert_dispatcher(job_id, queue, commands, owner, created, os.path.join(self.jobs_dir, log_file))
        self.db.execute(
            "INSERT INTO dispatcher_jobs (seq, id, queue, commands, origin, state, created, log_file)"
            " VALUES (?, ?, ?, ?, ?, 'pending', ?, ?)",
            (seq, job_id, queue, json.dumps(list(commands)), origin, created, log_file),
        )
        return JobRecord(seq, job_id, queue, list(commands), origin, "pending", created, log_file=log_file)

    def add_many(self, jobs: Sequence[Tuple[Any, ...]]) -> List[JobRecord]:
        """:meth:`add` for several jobs in one transaction (tuples of its arguments)."""
        with self.transaction():
            records = [self._insert(*job) for job in jobs]
        for record in records:
            self.jobs.watcher.added(record.seq)
        return records

    def save(self, record: JobRecord) -> None:
        """Write the record's changing fields (state, times, codes, ranges, gaps, flags, marker,
        cut), here and in the job table, in one transaction."""
        state, outcome, error = dispatcher_state(record)
        done = record.state == "finished"
        excerpt = read_tail(self.log_path(record), EXCERPT_BYTES) if done and record.log_file else None
        codes = json.dumps(record.return_codes)
        with self.transaction():
            self.db.execute(
                "UPDATE dispatcher_jobs SET state = ?, started = ?, finished = ?, current = ?, return_codes = ?,"
                " ranges = ?, killed = ?, interrupted = ?, marker = ?, cut = ?, gaps = ? WHERE seq = ?",
                (record.state, record.started, record.finished, record.current, codes,
                 json.dumps(record.ranges), int(record.killed), int(record.interrupted), record.marker, record.cut,
                 json.dumps(record.gaps), record.seq),
            )
            self.jobs.update_dispatcher(record.seq, state, outcome, error, record.started, record.finished,
                                        record.return_codes, excerpt)
        if done:
            self.jobs.dispatcher_finished([record.seq])
        else:
            self.jobs.watcher.changed(record.seq)

    def save_killed_pending(self, records: Sequence[JobRecord], finished: float) -> None:
        """Store pending jobs as finished and killed: a few statements for any number of them."""
        with self.transaction():
            for at in range(0, len(records), BATCH):
                chunk = [r.seq for r in records[at:at + BATCH]]
                marks = ",".join("?" for _ in chunk)
                self.db.execute(
                    f"UPDATE dispatcher_jobs SET state = 'finished', finished = ?, current = -1, killed = 1"
                    f" WHERE seq IN ({marks})", (finished, *chunk))
            # Their job rows in one statement: the waiting dispatcher jobs just finished.
            self.db.execute(
                "UPDATE jobs SET state = 'ABORTED', outcome = 'killed', error = 'killed on request', time_finished = ?"
                " WHERE state = 'WAITING' AND EXISTS (SELECT 1 FROM dispatcher_jobs d WHERE d.seq = jobs.id"
                " AND d.state = 'finished')", (finished,))
        self.jobs.dispatcher_finished([r.seq for r in records])

    def unfinished(self) -> List[JobRecord]:
        """Pending and running jobs in submission order (unreadable rows are closed)."""
        rows = self.db.execute("SELECT * FROM dispatcher_jobs WHERE state != 'finished' ORDER BY seq").fetchall()
        records = self._records(rows)
        readable = {r.seq for r in records}
        bad = [row["seq"] for row in rows if row["seq"] not in readable]
        if bad:
            marks = ",".join("?" for _ in bad)
            self.db.execute(f"UPDATE dispatcher_jobs SET state = 'finished', interrupted = 1 WHERE seq IN ({marks})", bad)
            self.db.execute(f"UPDATE jobs SET state = 'ABORTED', outcome = 'interrupted', error = 'the stored job"
                            f" could not be read' WHERE id IN ({marks})", bad)
        return records

    def leftover_markers(self) -> dict:
        """Markers of jobs whose processes may have outlived the daemon: running or interrupted."""
        rows = self.db.execute(
            "SELECT id, marker FROM dispatcher_jobs WHERE marker != '' AND (state = 'running' OR interrupted = 1)"
        ).fetchall()
        return {row["marker"]: clean(str(row["id"])) for row in rows}

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
        return self._records(rows)

    def prune(self, finished_before: float) -> int:
        """Forget finished jobs older than *finished_before* and delete their files."""
        rows = self.db.execute(
            "SELECT seq, log_file FROM dispatcher_jobs WHERE state = 'finished' AND finished < ?", (finished_before,)
        ).fetchall()
        for row in rows:
            self._unlink(row["log_file"])
        with self.transaction():
            for at in range(0, len(rows), BATCH):
                chunk = [row["seq"] for row in rows[at:at + BATCH]]
                marks = ",".join("?" for _ in chunk)
                self.db.execute(f"DELETE FROM jobs WHERE id IN ({marks})", chunk)
            self.db.execute("DELETE FROM dispatcher_jobs WHERE state = 'finished' AND finished < ?", (finished_before,))
        return len(rows)

    # --- output files -------------------------------------------------------------------
    def log_path(self, record: JobRecord) -> str:
        return os.path.join(self.jobs_dir, record.log_file or "-")

    def total_output_bytes(self) -> int:
        """Bytes all job output files take now."""
        total = 0
        try:
            with os.scandir(self.jobs_dir) as entries:
                for entry in entries:
                    try:
                        if entry.is_file(follow_symlinks=False):
                            total += entry.stat(follow_symlinks=False).st_size
                    except OSError:
                        continue
        except OSError:
            return 0
        return total

    def free_oldest(self, need: int) -> int:
        """Delete the output files of the oldest finished jobs until *need* bytes are freed.

        Each such job's row keeps its ranges, loses its file name and counts its output
        as cut.  Returns the bytes freed."""
        freed = 0
        while freed < need:
            rows = self.db.execute(
                "SELECT seq, log_file FROM dispatcher_jobs WHERE state = 'finished' AND log_file != ''"
                " ORDER BY finished, seq LIMIT ?", (BATCH,)
            ).fetchall()
            if not rows:
                break
            done: List[Tuple[int, int]] = []
            for row in rows:
                path = os.path.join(self.jobs_dir, row["log_file"])
                try:
                    size = os.path.getsize(path)
                except OSError:
                    size = 0
                self._unlink(row["log_file"])
                done.append((size, row["seq"]))
                freed += size
                if freed >= need:
                    break
            with self.transaction():
                self.db.executemany("UPDATE dispatcher_jobs SET log_file = '', cut = cut + ? WHERE seq = ?", done)
                # Measured again by the job table's retention (sysadmd.jobs.store).
                self.db.executemany("UPDATE jobs SET logs_path = NULL, stored_bytes = 0 WHERE id = ?",
                                    [(seq,) for _, seq in done])
        return freed

    def open_output(self, record: JobRecord):
        """The job's output file, opened for appending without user-space buffering."""
        fd = os.open(self.log_path(record), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        seq, jobs = record.seq, self.jobs
        return _WatchedFile(os.fdopen(fd, "ab", buffering=0), lambda: jobs.watcher.output(seq))

    def output_size(self, record: JobRecord) -> int:
        try:
            return os.path.getsize(self.log_path(record))
        except OSError:
            return 0

    def command_logs(self, record: JobRecord, cap: int) -> List[str]:
        """Each started command's output (capped tail), from the recorded byte ranges."""
        logs: List[str] = []
        try:
            f = open(self.log_path(record), "rb") if record.log_file else None
        except OSError:
            f = None
        if f is None:  # never written, or deleted to stay under JOB_OUTPUT_TOTAL_MAX
            for start, end, cut in map(_range, record.ranges):
                total = max(0, end - start) + cut
                logs.append(render(b"", total, cap, lost=total))
            return logs
        with f:
            for start, end, cut in map(_range, record.ranges):
                total = max(0, end - start) + cut
                begin = max(start, end - cap)
                f.seek(begin)
                logs.append(render(f.read(max(0, end - begin)), total, cap, lost=cut))
        return logs

    def read_output(self, record: JobRecord, index: int, offset: int, length: int,
                    live: Optional["LiveOutput"] = None) -> "OutputSlice":
        """Bytes from *offset* (counted in command *index*'s whole output) on, at most *length*.

        *live* describes the command while it runs (it has then no end in its range).
        The reply holds one contiguous piece of what is kept; bytes before it that are
        kept nowhere are counted in ``missing``.  It never ends inside a character that
        may still be completed (``next_offset`` is then on the character's first byte),
        and holds at least one whole character when there is one to hold.
        Raises :class:`UnknownLayout` for a cut command stored before gaps were recorded."""
        start, end, cut = _range(record.ranges[index])
        gap = record.gaps[index] if index < len(record.gaps) else -1
        if live is not None:
            end, total = live.size, live.total
        else:
            end = max(start, end)
            total = end - start + cut
        if cut > 0 and gap < 0 and live is None and record.log_file:
            raise UnknownLayout(f"command {index} of job {record.id!r} was cut before this server recorded where: "
                                f"only its tail is known (`history` shows it)")
        gap = min(max(gap, start), end) if gap >= 0 else -1
        # Where the kept bytes are: (output offset, bytes, file offset or None for memory).
        pieces: List[Tuple[int, int, Optional[int]]] = []
        if record.log_file:
            if gap < 0:
                pieces.append((0, end - start, start))
            else:
                pieces.append((0, gap - start, start))
                pieces.append((total - (end - gap), end - gap, gap))
        if live is not None and gap >= 0:
            # Past its gap, a running command's last bytes are only in memory (for now).
            kept = pieces[0][1] if pieces else 0
            mem_start = max(total - len(live.tail), kept)
            pieces.append((mem_start, total - mem_start, None))
        pieces = [p for p in pieces if p[1] > 0]
        if offset > total:
            raise ValueError(f"offset {offset} is past the end of the output ({total} bytes so far)")
        # Pieces that follow each other without lost bytes between them form one run.
        runs: List[List[Tuple[int, int, Optional[int]]]] = []
        for piece in pieces:
            if runs and runs[-1][-1][0] + runs[-1][-1][1] == piece[0]:
                runs[-1].append(piece)
            else:
                runs.append([piece])
        for run in runs:
            run_at, run_end = run[0][0], run[-1][0] + run[-1][1]
            if run_end < total and run_end > offset:
                # Before a gap: a character whose last bytes are lost is lost too.
                last = self._read_run(record, run, max(run_at, run_end - 3), min(3, run_end - run_at), live) or b""
                run_end -= len(last) - _whole_prefix(last)
            if run_end <= offset:
                continue
            missing = max(0, run_at - offset)
            begin = offset + missing
            want = min(run_end - begin, length + 3)  # a character may straddle *length*
            buf = self._read_run(record, run, begin, want, live)
            if buf is None:  # the file went away (JOB_OUTPUT_TOTAL_MAX): nothing is kept
                break
            if missing:  # past a gap: a character whose first bytes are lost is lost too
                skip = _skip_continuation(buf)
                missing, begin, buf = missing + skip, begin + skip, buf[skip:]
            # Only the end of a running command's output may still be completed.
            wait = live is not None and run_end == total and begin + len(buf) == total
            keep = _cut_point(buf, length, wait)
            return OutputSlice(missing, buf[:keep].decode("utf-8", "replace"), begin + keep, total, cut)
        if live is not None:  # nothing kept from *offset* on yet, but the command goes on
            return OutputSlice(0, "", offset, total, cut)
        return OutputSlice(total - offset, "", total, total, cut)

    def _read_run(self, record: JobRecord, run: List[Tuple[int, int, Optional[int]]], begin: int, want: int,
                  live: Optional["LiveOutput"]) -> Optional[bytes]:
        """*want* bytes from output offset *begin* of a run of pieces (None: the file is gone)."""
        parts: List[bytes] = []
        for at, size, where in run:
            lo, hi = max(begin, at), min(begin + want, at + size)
            if lo >= hi:
                continue
            if where is None:
                mem_at = len(live.tail) - (live.total - lo)
                parts.append(live.tail[mem_at:mem_at + (hi - lo)])
            else:
                data = self._read_file(record, where + (lo - at), hi - lo)
                if data is None:
                    return None
                parts.append(data)
                if len(data) < hi - lo:  # shorter than recorded: stop at what is there
                    break
        return b"".join(parts)

    def _read_file(self, record: JobRecord, where: int, n: int) -> Optional[bytes]:
        if not record.log_file:
            return None
        try:
            with open(self.log_path(record), "rb") as f:
                f.seek(where)
                return f.read(n)
        except OSError:
            return None

    def _unlink(self, name: str) -> None:
        if not name:
            return
        try:
            os.unlink(os.path.join(self.jobs_dir, name))
        except FileNotFoundError:
            pass


def ranges_closed(ranges: List[List[int]], size: int) -> List[List[int]]:
    """*ranges* with a still-open last range (end -1) closed at *size*."""
    return [[start, size if end < 0 else end, cut] for start, end, cut in map(_range, ranges)]


def _range(r: List[int]) -> Tuple[int, int, int]:
    """``(start, end, cut)`` of a stored range (rows written before output caps have no cut)."""
    return r[0], r[1], (r[2] if len(r) > 2 else 0)


class UnknownLayout(ValueError):
    """A cut command's output stored without the position of its gap (older servers)."""


@dataclass
class LiveOutput:
    """A running command as :meth:`JobStore.read_output` needs it."""

    size: int  # the job's file size now (the command's range ends there)
    total: int  # bytes the command printed so far
    tail: bytes  # its last bytes, kept in memory


@dataclass
class OutputSlice:
    """One reply of :meth:`JobStore.read_output`: *data* starts *missing* bytes after the
    offset asked for and ends at *next_offset*; *size* and *cut* are the command's."""

    missing: int
    data: str
    next_offset: int
    size: int
    cut: int


def _cut_point(buf: bytes, length: int, wait: bool) -> int:
    """How many bytes of *buf* (read from a character start, up to *length* + 3) to send.

    At most *length*, ending on a character boundary, unless a single character is longer
    than *length*; *wait*: *buf* ends where more output may still complete a character."""
    if len(buf) <= length:
        return _whole_prefix(buf) if wait else len(buf)
    keep = _whole_prefix(buf[:length])
    if keep:
        return keep
    lead = buf[0]
    need = 2 if 0xC0 <= lead < 0xE0 else 3 if 0xE0 <= lead < 0xF0 else 4 if lead >= 0xF0 else 1
    if need <= len(buf):
        return need
    return 0 if wait else len(buf)
