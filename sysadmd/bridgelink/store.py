"""Bridge links as stored in the server's SQLite database.

A link is a bridge this server dials out to: a nickname, a normalized URL, how the
bridge's TLS certificate is checked (``none``, ``pin`` or ``ca``) and, in ``pin`` mode,
the SHA-256 fingerprint trusted on first use.  The daemon and the ``sysadmd`` admin
command each open their own connection on the same file; the daemon notices the
command's edits through SQLite's ``data_version``.
"""

from __future__ import annotations

import re
import sqlite3
import time
from dataclasses import dataclass
from typing import List, Optional

from sysadmd import migrations
from sysadmd.runtime.db import ensure
from sysadmd.wire.wssurl import parse_wss

DEFAULT_PORT = 12149
VERIFY_MODES = ("none", "pin", "ca")
DEFAULT_VERIFY = "pin"


_NICKNAME = re.compile(r"^[A-Za-z0-9_.@:-]{1,64}$")


class BridgeLinkError(ValueError):
    """A link cannot be stored as given; ``str()`` names the field and what was expected."""


@dataclass(frozen=True)
class BridgeLinkRow:
    nickname: str
    url: str
    verify: str
    fingerprint: Optional[str]
    created: float

    def as_dict(self) -> dict:
        return {"nickname": self.nickname, "url": self.url, "verify": self.verify,
                "fingerprint": self.fingerprint, "created": self.created}


def normalize_url(url: str) -> str:
    """``wss://host:port[/path]``: ``wss://`` prepended and ``:12149`` appended when missing.

    Upstream does the same; unlike upstream, any other scheme is refused because the
    bridge protocol is only spoken over TLS.
    """
    try:
        address = parse_wss(url, DEFAULT_PORT)
    except ValueError as e:
        raise BridgeLinkError(f"url: {e}") from None
    path = address.path if address.path not in ("", "/") else ""
    return f"wss://{address.netloc}{path}"


def check_nickname(nickname: str) -> str:
    if not isinstance(nickname, str) or not _NICKNAME.match(nickname):
        raise BridgeLinkError("nickname: expected 1-64 characters from A-Z a-z 0-9 _ . @ : -")
    return nickname


def check_verify(verify: str) -> str:
    if not isinstance(verify, str) or verify.lower() not in VERIFY_MODES:
        raise BridgeLinkError(f"verify: expected one of {', '.join(VERIFY_MODES)}, got {verify!r}")
    return verify.lower()


class BridgeLinkStore:
    """Reads and writes ``bridge_links``; nothing is cached, so every call sees other writers."""

    def __init__(self, db: sqlite3.Connection, clock: Optional[object] = None):
        self.db = db
        self._now = clock.seconds if clock is not None else time.time
        ensure(db, migrations.SCHEMA)  # tables: sysadmd/migrations/

    def add(self, nickname: str, url: str, verify: str = DEFAULT_VERIFY) -> BridgeLinkRow:
        """Add a link, or replace the one with that nickname.

        Replacing always forgets the pinned fingerprint: adding a link again is how an
        administrator says "trust this bridge's current certificate".
        """
        row = BridgeLinkRow(check_nickname(nickname), normalize_url(url), check_verify(verify), None, self._now())
        self.db.execute(
            "INSERT OR REPLACE INTO bridge_links (nickname, url, verify, fingerprint, created) VALUES (?, ?, ?, NULL, ?)",
            (row.nickname, row.url, row.verify, row.created),
        )
        return row

    def remove(self, nickname: str) -> bool:
        cursor = self.db.execute("DELETE FROM bridge_links WHERE nickname = ?", (nickname,))
        return cursor.rowcount > 0

    def get(self, nickname: str) -> Optional[BridgeLinkRow]:
        row = self.db.execute("SELECT * FROM bridge_links WHERE nickname = ?", (nickname,)).fetchone()
        return _row(row) if row is not None else None

    def list(self) -> List[BridgeLinkRow]:
        return [_row(r) for r in self.db.execute("SELECT * FROM bridge_links ORDER BY nickname").fetchall()]

    def pin(self, nickname: str, fingerprint: str) -> None:
        """Remember the certificate fingerprint first seen for *nickname* (only if none yet)."""
        self.db.execute("UPDATE bridge_links SET fingerprint = ? WHERE nickname = ? AND fingerprint IS NULL",
                        (fingerprint, nickname))


def _row(r: sqlite3.Row) -> BridgeLinkRow:
    return BridgeLinkRow(r["nickname"], r["url"], r["verify"], r["fingerprint"], r["created"])
