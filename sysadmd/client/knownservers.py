"""Servers behind bridges, pinned on first use by their key, like ssh's ``known_hosts``.

A server behind a bridge is known by its *bridge key* (the key it logs in to the bridge
with; it proves holding it in every bridged login, :mod:`sysadmd.wire.bound`), never by
the host name it claims: any bridge tenant can claim any host name.  The connection ID
changes on every reconnect, and the bridge URL says nothing about the server, so neither
is stored.

File: ``$XDG_CONFIG_HOME/sysadm/known_servers`` (default ``~/.config/sysadm/``), 0600,
one line per server::

    # NAME  SHA-256 of the key's SPKI (hex)  first seen (UTC)
    nas.lan 3af0…9c 2026-11-26T01:20:00Z

NAME is the host name the server claimed when it was pinned (or the name the user
asked for); a name holds one key.  A fourth field ``e2e`` records that the server once
logged us in over an end-to-end encrypted session (docs/protocol.md §8.6): a later
session with it that is not encrypted is refused as a downgrade.  ``sysadm known-servers forget NAME`` removes it.
"""

from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass
from typing import List, Optional

from sysadmd.wire.bound import display_fingerprint
from sysadmd.client.errors import EXIT_USAGE, ClientError
from sysadmd.client.knownhosts import read_lines
from sysadmd.runtime.statedir import ensure_private_dir, write_private_file

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9._:\[\]-]{1,253}$")
MAX_ENTRIES = 10000


def default_path() -> str:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "sysadm", "known_servers")


def valid_name(name: object) -> bool:
    """A name we can store and show safely (a host name, no spaces or control characters)."""
    return isinstance(name, str) and bool(_NAME.match(name))


@dataclass(frozen=True)
class KnownServer:
    name: str
    fingerprint: str  # hex
    first_seen: str
    e2e: bool = False  # it did an end-to-end session with us: never fall back to base64 mode

    @property
    def display(self) -> str:
        return display_fingerprint(self.fingerprint)


def _prefix_matches(fp_hex: str, text: str) -> bool:
    """*text* is a prefix of the fingerprint: hex (colons allowed) or ``SHA256:`` base64."""
    if text.upper().startswith("SHA256:"):
        shown = display_fingerprint(fp_hex)
        return len(text) >= 7 + 6 and shown.startswith("SHA256:" + text[7:])
    digits = text.replace(":", "").lower()
    return len(digits) >= 8 and bool(re.match(r"^[0-9a-f]+$", digits)) and fp_hex.startswith(digits)


class KnownServers:
    def __init__(self, path: Optional[str] = None):
        self.path = path or default_path()

    def _lines(self) -> List[str]:
        return read_lines(self.path)

    def entries(self) -> List[KnownServer]:
        found = []
        for line in self._lines():
            parts = line.split()
            if len(parts) >= 3 and not line.lstrip().startswith("#") and _HEX64.match(parts[1]):
                found.append(KnownServer(parts[0], parts[1], parts[2], "e2e" in parts[3:]))
        return found

    def by_name(self, name: str) -> Optional[KnownServer]:
        for entry in self.entries():
            if entry.name == name:
                return entry
        return None

    def by_fingerprint(self, fp_hex: str) -> List[KnownServer]:
        return [e for e in self.entries() if e.fingerprint == fp_hex]

    def matching(self, text: str) -> List[KnownServer]:
        """Entries named *text*, or whose fingerprint starts with *text* (8+ hex digits or ``SHA256:…``)."""
        return [e for e in self.entries() if e.name == text or _prefix_matches(e.fingerprint, text)]

    def pin(self, name: str, fp_hex: str, now: Optional[datetime.datetime] = None) -> KnownServer:
        if not valid_name(name):
            raise ClientError(f"cannot pin a server as {name!r}: a name is 1-253 characters of letters, digits and ._:-[]",
                              EXIT_USAGE)
        if not _HEX64.match(fp_hex):
            raise ValueError(f"not a SHA-256 hex fingerprint: {fp_hex!r}")
        lines = self._lines()
        if len(lines) >= MAX_ENTRIES:
            raise ClientError(f"{self.path} already holds {MAX_ENTRIES} lines; forget some servers first", EXIT_USAGE)
        when = (now or datetime.datetime.now(datetime.timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ")
        kept = [line for line in lines if line.split()[:1] != [name]]
        if not any(line.startswith("#") for line in kept):
            kept.insert(0, "# NAME  SHA-256(server bridge key SPKI)  first-seen  -- written by sysadm")
        kept.append(f"{name} {fp_hex} {when}")
        ensure_private_dir(os.path.dirname(self.path))
        write_private_file(self.path, ("\n".join(kept) + "\n").encode("utf-8"))
        return KnownServer(name, fp_hex, when)

    def mark_e2e(self, name: str) -> Optional[KnownServer]:
        """Record that the server pinned as *name* did an end-to-end session (kept first-seen)."""
        lines = self._lines()
        entry = self.by_name(name)
        if entry is None or entry.e2e:
            return entry
        kept = [f"{line.rstrip()} e2e" if line.split()[:2] == [name, entry.fingerprint] else line for line in lines]
        ensure_private_dir(os.path.dirname(self.path))
        write_private_file(self.path, ("\n".join(kept) + "\n").encode("utf-8"))
        return KnownServer(entry.name, entry.fingerprint, entry.first_seen, True)

    def forget(self, name: str) -> bool:
        lines = self._lines()
        kept = [line for line in lines if line.split()[:1] != [name]]
        if len(kept) == len(lines):
            return False
        ensure_private_dir(os.path.dirname(self.path))
        write_private_file(self.path, ("\n".join(kept) + "\n").encode("utf-8"))
        return True
