"""The SQLite database in the state directory.

One connection, used on the reactor thread for small, fast statements (WAL mode, so the
``sysadmd`` admin command can write while the daemon runs).  Each subsystem keeps its
own tables and creates them with ``CREATE TABLE IF NOT EXISTS`` through
:func:`ensure_schema`; nothing else in the daemon writes SQL outside its own module.
"""

from __future__ import annotations

import os
import sqlite3


def open_database(path: str) -> sqlite3.Connection:
    existed = os.path.exists(path)
    if not existed:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        os.close(fd)
    conn = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=5000")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def ensure_schema(conn: sqlite3.Connection, statements: str) -> None:
    conn.executescript(statements)


def data_version(conn: sqlite3.Connection) -> int:
    """Changes whenever *another* connection commits (used to notice CLI edits)."""
    return conn.execute("PRAGMA data_version").fetchone()[0]


def database_path(state_dir: str) -> str:
    return os.path.join(state_dir, "sysadmd.sqlite")
