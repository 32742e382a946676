"""Our own log store behind ``rpc/logs``: hostinfo, dispatcher and events logs.

Entries live in SQLite (table ``logs``) with their time, so ``read_logs`` can select by
time range, and every entry is also written to the Twisted log for the operator.
Log names are upstream's: ``hostinfo``, ``dispatcher``, ``events-dispatcher``,
``events-lifepreserver``, ``events-state``.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any, Dict, Iterable, List, Optional, Tuple

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from sysadmd.db import ensure_schema

log = Logger()

LOG_NAMES = ("hostinfo", "dispatcher", "events-dispatcher", "events-lifepreserver", "events-state")

SCHEMA = """
CREATE TABLE IF NOT EXISTS logs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    log TEXT NOT NULL,
    entry TEXT NOT NULL,
    is_json INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS logs_by_time ON logs (log, ts);
"""


class LogStore:
    def __init__(self, db: sqlite3.Connection, clock: IReactorTime):
        self.db = db
        self.clock = clock
        ensure_schema(db, SCHEMA)

    def append(self, log_name: str, entry: Any) -> None:
        if log_name not in LOG_NAMES:
            raise ValueError(f"unknown log {log_name!r}")
        is_json = not isinstance(entry, str)
        text = json.dumps(entry, separators=(",", ":"), sort_keys=True) if is_json else entry
        self.db.execute(
            "INSERT INTO logs (ts, log, entry, is_json) VALUES (?, ?, ?, ?)",
            (self.clock.seconds(), log_name, text, int(is_json)),
        )
        if log_name == "hostinfo":
            log.info("{entry}", entry=text)

    def hostinfo(self, message: str) -> None:
        self.append("hostinfo", message)

    def read(self, names: Iterable[str], start: float, end: float) -> List[Tuple[str, float, Any]]:
        """Entries of the named logs with ``start <= ts <= end``, oldest first."""
        wanted = [n for n in names if n in LOG_NAMES]
        if not wanted:
            return []
        marks = ",".join("?" for _ in wanted)
        rows = self.db.execute(
            f"SELECT log, ts, entry, is_json FROM logs WHERE log IN ({marks}) AND ts >= ? AND ts <= ? ORDER BY ts, id",
            (*wanted, start, end),
        ).fetchall()
        return [(r["log"], r["ts"], json.loads(r["entry"]) if r["is_json"] else r["entry"]) for r in rows]

    def prune(self, older_than: float) -> int:
        cur = self.db.execute("DELETE FROM logs WHERE ts < ?", (older_than,))
        return cur.rowcount
