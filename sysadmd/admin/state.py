"""What admin verbs share: the state directory's database, opened beside the daemon."""

from __future__ import annotations

import datetime
import sqlite3
import time
from typing import List, Sequence

from sysadmd import migrations
from sysadmd.runtime.db import SchemaError, database_path, open_database
from sysadmd.runtime.statedir import ensure_private_dir


class VerbFailed(Exception):
    """A verb could not do its work; ``main`` prints the message and exits with 1."""


def open_state_db(state_dir: str) -> sqlite3.Connection:
    """The daemon's database (created with safe modes if missing); WAL lets both write."""
    ensure_private_dir(state_dir)
    try:
        return open_database(database_path(state_dir), migrations.SCHEMA)
    except SchemaError as e:
        raise VerbFailed(str(e)) from None


def local_time(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts).isoformat(sep=" ", timespec="seconds")


def table(header: Sequence[str], rows: List[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces, header first."""
    widths = [len(h) for h in header]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in [header, *rows]]
    return "\n".join(lines) + "\n"


class WallClock:
    """``seconds()`` for domain objects used outside the reactor."""

    @staticmethod
    def seconds() -> float:
        return time.time()
