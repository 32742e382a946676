"""Registered RSA public keys: who may log in with ``rpc/auth_ssl``.

Each key belongs to one user and is kept in three forms: ``pub_key``, upstream's stored
form (``base64`` of the PEM text, exactly as the client or the admin command gave it,
and the handle ``list_ssl_certs``/``revoke_ssl_cert`` use), the canonical SPKI PEM, and
its ``md5`` checksum (``base64(MD5(PEM))``, what bridges pair peers by).  A key may be
registered once, for one user, so a checksum names exactly one login.

The daemon and the ``sysadmd`` admin command each open their own connection on the same
SQLite file; nothing is cached across calls, so a key added or removed by the command
counts at the daemon's next login attempt.
"""

from __future__ import annotations

import datetime
import hmac
import sqlite3
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Set, Tuple

from sysadmd import crypto
from sysadmd.db import ensure_schema

SCHEMA = """
CREATE TABLE IF NOT EXISTS registered_keys (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user TEXT NOT NULL,
    pub_key TEXT NOT NULL,
    pem TEXT NOT NULL,
    md5 TEXT NOT NULL UNIQUE,
    nickname TEXT NOT NULL DEFAULT '',
    email TEXT NOT NULL DEFAULT '',
    registered REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS registered_keys_by_user ON registered_keys (user, pub_key);
"""


class KeyStoreError(ValueError):
    """A key operation cannot be done; ``str()`` says why."""


class DuplicateKey(KeyStoreError):
    """The key is already registered (keys are unique across users)."""


@dataclass(frozen=True)
class RegisteredKey:
    user: str
    pub_key: str  # base64(PEM), upstream's stored form
    pem: str  # canonical SPKI PEM
    md5: str  # base64(MD5(pem))
    nickname: str
    email: str
    registered: float  # Unix time

    @property
    def registered_iso(self) -> str:
        """Local time as Qt's ``ISODate`` writes it (upstream's ``Date Registered``)."""
        return datetime.datetime.fromtimestamp(self.registered).isoformat(timespec="seconds")

    def description(self) -> str:
        """The text upstream stores beside each key and ``list_ssl_certs`` returns."""
        return f"Nickname: {self.nickname}\nEmail: {self.email}\nDate Registered: {self.registered_iso}"


def _row(r: sqlite3.Row) -> RegisteredKey:
    return RegisteredKey(r["user"], r["pub_key"], r["pem"], r["md5"], r["nickname"], r["email"], r["registered"])


class KeyStore:
    def __init__(self, db: sqlite3.Connection, clock: Optional[Any] = None):
        self.db = db
        self._now = clock.seconds if clock is not None else time.time
        ensure_schema(db, SCHEMA)
        # Parsed public keys by PEM text: parsing is the costly part of a verification.
        self._parsed: Dict[str, Any] = {}

    # --- changes ----------------------------------------------------------------------
    def register(self, user: str, pem: str, nickname: str = "", email: str = "",
                 pub_key: Optional[str] = None) -> RegisteredKey:
        """Register *pem* (any accepted key text) for *user*.

        *pub_key* is the stored form to keep (the text a client sent); by default
        ``base64`` of the canonical PEM.  Raises :class:`DuplicateKey` if the key is
        already registered, and :class:`crypto.KeyFormatError` for an unusable key.
        """
        if not user:
            raise KeyStoreError("a user name is required")
        canonical = crypto.normalized_pem(pem)
        md5 = crypto.md5_checksum(canonical)
        existing = self.find_by_md5(md5)
        if existing is not None:
            label = f" ({existing.nickname})" if existing.nickname else ""
            raise DuplicateKey(f"this key is already registered for user {existing.user}{label}; revoke it first")
        stored = pub_key if pub_key else crypto.stored_form(canonical)
        key = RegisteredKey(user, stored, canonical, md5, nickname or "", email or "", self._now())
        try:
            self.db.execute(
                "INSERT INTO registered_keys (user, pub_key, pem, md5, nickname, email, registered) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key.user, key.pub_key, key.pem, key.md5, key.nickname, key.email, key.registered),
            )
        except sqlite3.IntegrityError:
            # Another process registered it between our check and the insert.
            raise DuplicateKey("this key is already registered; revoke it first") from None
        return key

    def revoke(self, user: str, pub_key: str) -> Optional[RegisteredKey]:
        """Remove *user*'s key stored as *pub_key* (exact text); the removed key or ``None``."""
        row = self.db.execute("SELECT * FROM registered_keys WHERE user = ? AND pub_key = ?", (user, pub_key)).fetchone()
        if row is None:
            return None
        self.db.execute("DELETE FROM registered_keys WHERE id = ?", (row["id"],))
        return _row(row)

    # --- queries ----------------------------------------------------------------------
    def list(self, user: Optional[str] = None) -> List[RegisteredKey]:
        """Keys ordered as upstream's settings file orders them (user, then stored form)."""
        if user is None:
            rows = self.db.execute("SELECT * FROM registered_keys ORDER BY user, pub_key").fetchall()
        else:
            rows = self.db.execute("SELECT * FROM registered_keys WHERE user = ? ORDER BY pub_key", (user,)).fetchall()
        return [_row(r) for r in rows]

    def checksums(self) -> Dict[str, List[str]]:
        """``{"md5_keys": [...]}`` over every user's keys, the ``list_ssl_checksums`` reply."""
        return {"md5_keys": [k.md5 for k in self.list()]}

    def owners(self) -> Set[Tuple[str, str]]:
        """Every registered ``(user, md5)`` pair."""
        return {(r["user"], r["md5"]) for r in self.db.execute("SELECT user, md5 FROM registered_keys")}

    def find_by_md5(self, md5: str) -> Optional[RegisteredKey]:
        row = self.db.execute("SELECT * FROM registered_keys WHERE md5 = ?", (md5,)).fetchone()
        return _row(row) if row is not None else None

    def find(self, user: str, handle: str) -> List[RegisteredKey]:
        """*user*'s keys whose nickname, checksum or stored form is *handle*."""
        return [k for k in self.list(user) if handle in (k.nickname, k.md5, k.pub_key)]

    # --- challenge answers ------------------------------------------------------------
    def verify(self, challenge: str, encrypted_b64: str, md5: Optional[str] = None) -> Optional[RegisteredKey]:
        """The registered key whose raw PKCS#1 signature *encrypted_b64* carries *challenge*.

        Every key is tried (upstream does the same), or only the key with checksum *md5*.
        """
        if md5 is not None:
            found = self.find_by_md5(md5)
            candidates = [found] if found is not None else []
        else:
            candidates = self.list()
        expected = challenge.encode("latin-1")
        for key in candidates:
            public = self._public_key(key.pem)
            if public is None:
                continue
            recovered = crypto.recover_signed(public, encrypted_b64)
            if recovered is not None and hmac.compare_digest(recovered, expected):
                return key
        return None

    def _public_key(self, pem: str) -> Any:
        public = self._parsed.get(pem)
        if public is None:
            try:
                public = crypto.load_public_key(pem)
            except crypto.KeyFormatError:
                return None
            if len(self._parsed) > 1024:
                self._parsed.clear()
            self._parsed[pem] = public
        return public
