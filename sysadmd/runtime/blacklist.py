"""Failed-login counting and address blocking, kept in SQLite across restarts.

Upstream semantics: a failure within ``reset_minutes`` of the previous one adds to the
count, otherwise the count restarts at 1; at ``limit`` the address is blocked for
``block_minutes``; a success clears the count.  Loopback is exempt unless configured
otherwise.  IPv4-mapped IPv6 addresses are folded to IPv4 so one host has one entry.
Keys that are not IP addresses (``bridge:<link>/<client>`` for a client seen through a
bridge link) are counted and blocked as they are.
"""

from __future__ import annotations

import ipaddress
import sqlite3
from typing import Callable, List, Optional, Tuple

from twisted.internet.interfaces import IReactorTime

from sysadmd.runtime.db import Schema, ensure

# The blacklist's tables as the first release made them.  Both databases' first migration
# creates them (sysadmd/migrations/m0001_initial.py, bridge/migrations/m0001_initial.py):
# released, never edit; a change is a new migration in each database that has them.
BLACKLIST_STATEMENTS = """
CREATE TABLE IF NOT EXISTS auth_failures (
    address TEXT PRIMARY KEY,
    count INTEGER NOT NULL,
    last_failure REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS blacklist (
    address TEXT PRIMARY KEY,
    blocked_at REAL NOT NULL,
    until REAL NOT NULL
);
"""

UNLIMITED = 1 << 30  # remaining() of an exempt address


def normalize_address(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(normalize_address(address)).is_loopback
    except ValueError:
        return False


class Blacklist:
    def __init__(self, db: sqlite3.Connection, clock: IReactorTime, *, limit: int, reset_minutes: float,
                 block_minutes: float, exempt_loopback: bool = True,
                 on_block: Optional[Callable[[str], None]] = None, schema: Optional[Schema] = None):
        """*schema*: the schema of the database *db* belongs to (each daemon has its own);
        given, *db* is brought to it first, as every store does.  Leave it out only when
        *db* was opened with its schema."""
        self.db = db
        self.clock = clock
        self.limit = limit
        self.reset_seconds = reset_minutes * 60
        self.block_seconds = block_minutes * 60
        self.exempt_loopback = exempt_loopback
        self.on_block = on_block
        # Its tables are in both databases (sysadmd/migrations/, bridge/migrations/).
        if schema is not None:
            ensure(db, schema, shared=True)

    def _exempt(self, address: str) -> bool:
        return not address or (self.exempt_loopback and is_loopback(address))

    def failure(self, address: str) -> bool:
        """Count a failed login; ``True`` if the address is now blocked."""
        if self._exempt(address):
            return False
        address = normalize_address(address)
        now = self.clock.seconds()
        row = self.db.execute("SELECT count, last_failure FROM auth_failures WHERE address = ?", (address,)).fetchone()
        count = row["count"] + 1 if row is not None and now - row["last_failure"] <= self.reset_seconds else 1
        self.db.execute(
            "INSERT INTO auth_failures (address, count, last_failure) VALUES (?, ?, ?) "
            "ON CONFLICT(address) DO UPDATE SET count = excluded.count, last_failure = excluded.last_failure",
            (address, count, now),
        )
        if count >= self.limit:
            self.db.execute(
                "INSERT OR REPLACE INTO blacklist (address, blocked_at, until) VALUES (?, ?, ?)",
                (address, now, now + self.block_seconds),
            )
            self.db.execute("DELETE FROM auth_failures WHERE address = ?", (address,))
            if self.on_block is not None:
                self.on_block(address)
            return True
        return False

    def remaining(self, address: str) -> int:
        """Failed logins *address* may still make before it is blocked (0: blocked now)."""
        if self._exempt(address):
            return UNLIMITED
        if self.blocked_for(address) > 0:
            return 0
        address = normalize_address(address)
        row = self.db.execute("SELECT count, last_failure FROM auth_failures WHERE address = ?", (address,)).fetchone()
        if row is None or self.clock.seconds() - row["last_failure"] > self.reset_seconds:
            return self.limit
        return max(0, self.limit - row["count"])

    def success(self, address: str) -> None:
        if address:
            self.db.execute("DELETE FROM auth_failures WHERE address = ?", (normalize_address(address),))

    def blocked_for(self, address: str) -> float:
        """Seconds the address stays blocked (0 when it is not blocked)."""
        if self._exempt(address):
            return 0.0
        address = normalize_address(address)
        row = self.db.execute("SELECT until FROM blacklist WHERE address = ?", (address,)).fetchone()
        if row is None:
            return 0.0
        left = row["until"] - self.clock.seconds()
        if left <= 0:
            self.db.execute("DELETE FROM blacklist WHERE address = ?", (address,))
            return 0.0
        return left

    def entries(self) -> List[Tuple[str, float, float]]:
        rows = self.db.execute("SELECT address, blocked_at, until FROM blacklist ORDER BY address").fetchall()
        return [(r["address"], r["blocked_at"], r["until"]) for r in rows]

    def unblock(self, address: str) -> bool:
        cur = self.db.execute("DELETE FROM blacklist WHERE address = ?", (normalize_address(address),))
        return cur.rowcount > 0
