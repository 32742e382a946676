"""Our own log store behind ``rpc/logs``: hostinfo, dispatcher and events logs.

Entries live in SQLite (table ``logs``) with their time, so ``read_logs`` can select by
time range, and every entry is also written to the Twisted log for the operator.
Log names are upstream's: ``hostinfo`` and ``dispatcher`` are the store's own
(:data:`OWN_LOGS`); the ``events-*`` logs are registered by the event types that name them
(:meth:`sysadmd.events.hub.EventHub.register`), so an event type and its log are declared
in one place.  :class:`LogRetention` deletes entries older than ``LOG_RETENTION_DAYS`` at
start and once a day.

Appends are batched: entries wait in memory until the end of the current reactor turn
and are then written in one transaction (a busy dispatcher appends several entries per
job; one statement each was most of its per-job cost).  Every read flushes first, and
:meth:`LogStore.flush` runs at shutdown, so nothing is lost short of a crash within the
same reactor turn.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any, Iterable, List, Optional, Tuple

from twisted.application import service
from twisted.internet import task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from sysadmd import migrations
from sysadmd.runtime.db import ensure
from sysadmd.untrusted import clean, clean_value, shown

log = Logger()

HOSTINFO_LIMIT = 2048  # characters of one hostinfo entry

OWN_LOGS = ("hostinfo", "dispatcher")  # the event logs are added by EventHub.register
MAX_LOG_NAME = 64


def _entry(text: str, is_json: int) -> Any:
    """A stored entry as a value; rows written before surrogates were cleaned on the way in
    may hold ``\\ud800``-style escapes, cleaned here so one old row never breaks a reply."""
    if not is_json:
        return clean(text)
    value = json.loads(text)
    return clean_value(value) if "\\ud" in text.lower() else value


class LogStore:
    def __init__(self, db: sqlite3.Connection, clock: IReactorTime):
        self.db = db
        self.clock = clock
        self._pending: List[Tuple[float, str, str, int]] = []
        self._flush_call: Optional[Any] = None
        self.names: List[str] = list(OWN_LOGS)  # every log rpc/logs can read, in order
        ensure(db, migrations.SCHEMA)  # tables: sysadmd/migrations/

    def register_log(self, name: str) -> None:
        """Add the log *name* (an event type's log; see :meth:`EventHub.register`)."""
        if not isinstance(name, str) or not name or len(name) > MAX_LOG_NAME or not name.isprintable():
            raise ValueError(f"a log name must be 1 to {MAX_LOG_NAME} printable characters, got {name!r}")
        if name in self.names:
            raise ValueError(f"log {name!r} is registered twice (logs: {', '.join(self.names)})")
        self.names.append(name)

    def append(self, log_name: str, entry: Any) -> None:
        if log_name not in self.names:
            raise ValueError(f"unknown log {log_name!r} (logs: {', '.join(self.names)})")
        is_json = not isinstance(entry, str)
        # ensure_ascii=False, then clean: no lone surrogate can reach a row (it would fail the
        # whole batch's INSERT, or come back as text no reply can encode).
        text = clean(json.dumps(entry, separators=(",", ":"), sort_keys=True, ensure_ascii=False) if is_json else entry)
        self._pending.append((self.clock.seconds(), log_name, text, int(is_json)))
        if self._flush_call is None:
            self._flush_call = self.clock.callLater(0, self.flush)
        if log_name == "hostinfo":
            log.info("{entry}", entry=text)

    def flush(self) -> None:
        """Write the entries appended since the last flush, in one transaction."""
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        pending, self._pending = self._pending, []
        if not pending:
            return
        try:
            with self.db:
                self.db.execute("BEGIN")
                self.db.executemany("INSERT INTO logs (ts, log, entry, is_json) VALUES (?, ?, ?, ?)", pending)
        except sqlite3.Error:
            log.failure("writing {n} log entries failed", n=len(pending))

    def hostinfo(self, message: str) -> None:
        """One line for the operator: the values a peer chose inside *message* should
        already be :func:`~sysadmd.untrusted.shown`; as a last guard the whole line is
        bounded to HOSTINFO_LIMIT characters and line breaks or control characters left in
        it are escaped, so no entry can forge another or grow without bound."""
        self.append("hostinfo", shown(message, HOSTINFO_LIMIT, backslash=False))

    def read(self, names: Iterable[str], start: float, end: float) -> List[Tuple[str, float, Any]]:
        """Entries of the named logs with ``start <= ts <= end``, oldest first."""
        wanted = [n for n in names if n in self.names]
        if not wanted:
            return []
        self.flush()
        marks = ",".join("?" for _ in wanted)
        rows = self.db.execute(
            f"SELECT log, ts, entry, is_json FROM logs WHERE log IN ({marks}) AND ts >= ? AND ts <= ? ORDER BY ts, id",
            (*wanted, start, end),
        ).fetchall()
        return [(r["log"], r["ts"], _entry(r["entry"], r["is_json"])) for r in rows]

    def read_newest(self, name: str, start: float, end: float, limit: int) -> Tuple[List[Tuple[float, Any, int]], int]:
        """The newest *limit* entries of one log in ``[start, end]`` as ``(ts, entry, size in
        bytes)``, oldest first, and how many entries the range holds in all."""
        self.flush()
        total = self.db.execute("SELECT COUNT(*) FROM logs WHERE log = ? AND ts >= ? AND ts <= ?",
                                (name, start, end)).fetchone()[0]
        rows = self.db.execute(
            "SELECT ts, entry, is_json FROM logs WHERE log = ? AND ts >= ? AND ts <= ? ORDER BY ts DESC, id DESC LIMIT ?",
            (name, start, end, limit),
        ).fetchall()
        rows.reverse()
        return [(r["ts"], _entry(r["entry"], r["is_json"]), len(r["entry"])) for r in rows], total

    def prune(self, older_than: float) -> int:
        self.flush()
        cur = self.db.execute("DELETE FROM logs WHERE ts < ?", (older_than,))
        return cur.rowcount


class LogRetention(service.Service):
    """Deletes log entries older than *days* when started and then once a day."""

    name = "log-retention"

    def __init__(self, logs: LogStore, clock: IReactorTime, days: int):
        self.logs = logs
        self.clock = clock
        self.days = days
        self._loop: Optional[task.LoopingCall] = None

    def startService(self) -> None:
        super().startService()
        self._loop = task.LoopingCall(self.prune)
        self._loop.clock = self.clock
        self._loop.start(86400, now=True)

    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        self.logs.flush()

    def prune(self) -> int:
        try:
            removed = self.logs.prune(self.clock.seconds() - self.days * 86400)
        except sqlite3.Error:
            log.failure("pruning old log entries failed")
            return 0
        if removed:
            log.info("removed {n} log entries older than {days} days", n=removed, days=self.days)
        return removed
