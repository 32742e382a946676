"""The public keys registered on the bridge, kept in its own SQLite database.

As upstream, a key is registered under a nickname and one nickname holds one key
(importing again replaces it).  We store the canonical SPKI PEM, upstream's stored form
``base64(PEM)``, the pairing checksum ``base64(MD5(PEM))``, the registration time and an
optional role binding: a key bound to ``server`` (or ``client``) can only authenticate
a peer of that role, ``any`` keeps upstream's behaviour.

The ``sysadm-bridge`` command edits the same table while the daemon runs; the daemon
notices through ``PRAGMA data_version`` (:meth:`KeyStore.changed`).
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Union

from cryptography.hazmat.primitives.asymmetric import rsa

from sysadmd import crypto
from sysadmd.db import data_version, ensure_schema, open_database

ROLES = ("any", "server", "client")

SCHEMA = """
CREATE TABLE IF NOT EXISTS bridge_keys (
    nickname TEXT PRIMARY KEY,
    pem TEXT NOT NULL,
    stored TEXT NOT NULL,
    md5 TEXT NOT NULL,
    role TEXT NOT NULL DEFAULT 'any',
    registered REAL NOT NULL
);
"""


class KeyStoreError(ValueError):
    """Bad input for a key operation; the message says which and why."""


@dataclass(frozen=True)
class RegisteredKey:
    nickname: str
    pem: str
    stored: str
    md5: str
    role: str
    registered: float

    def allows(self, role: Optional[str]) -> bool:
        """Whether this key may authenticate a peer of *role*."""
        return self.role == "any" or self.role == role


def database_path(state_dir: str) -> str:
    return os.path.join(state_dir, "bridge.sqlite")


def open_keystore(state_dir: str) -> "KeyStore":
    return KeyStore(open_database(database_path(state_dir)))


class KeyStore:
    def __init__(self, db: sqlite3.Connection):
        self.db = db
        ensure_schema(db, SCHEMA)
        self._public: Dict[str, rsa.RSAPublicKey] = {}
        self._version = data_version(db)

    # --- administration ---------------------------------------------------------------
    def import_key(self, nickname: str, data: Union[str, bytes], role: str = "any",
                   now: Optional[float] = None) -> RegisteredKey:
        """Register the key in *data* (PEM public key, certificate or private key) under *nickname*."""
        nickname = nickname.strip()
        if not nickname:
            raise KeyStoreError("the nickname must not be empty")
        if role not in ROLES:
            raise KeyStoreError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        try:
            pem = crypto.normalized_pem(data)
        except crypto.KeyFormatError as e:
            raise KeyStoreError(f"cannot read the key for {nickname!r}: {e}") from None
        key = RegisteredKey(nickname, pem, crypto.stored_form(pem), crypto.md5_checksum(pem), role,
                            time.time() if now is None else now)
        self.db.execute(
            "INSERT OR REPLACE INTO bridge_keys (nickname, pem, stored, md5, role, registered) VALUES (?, ?, ?, ?, ?, ?)",
            (key.nickname, key.pem, key.stored, key.md5, key.role, key.registered),
        )
        return key

    def remove(self, nickname: str) -> bool:
        cur = self.db.execute("DELETE FROM bridge_keys WHERE nickname = ?", (nickname,))
        return cur.rowcount > 0

    def all(self) -> List[RegisteredKey]:
        rows = self.db.execute("SELECT nickname, pem, stored, md5, role, registered FROM bridge_keys ORDER BY nickname").fetchall()
        return [RegisteredKey(r["nickname"], r["pem"], r["stored"], r["md5"], r["role"], r["registered"]) for r in rows]

    def get(self, nickname: str) -> Optional[RegisteredKey]:
        for key in self.all():
            if key.nickname == nickname:
                return key
        return None

    # --- daemon side ----------------------------------------------------------------------
    def changed(self) -> bool:
        """``True`` once after another process (the admin command) changed the database."""
        version = data_version(self.db)
        if version == self._version:
            return False
        self._version = version
        return True

    def verify(self, challenge: str, signature_b64: str) -> Optional[RegisteredKey]:
        """The registered key whose raw PKCS#1 signature of *challenge* is *signature_b64*."""
        expected = challenge.encode("latin-1")
        for key in self.all():
            public = self._public_key(key)
            if public is not None and crypto.recover_signed(public, signature_b64) == expected:
                return key
        return None

    def _public_key(self, key: RegisteredKey) -> Optional[rsa.RSAPublicKey]:
        public = self._public.get(key.md5)
        if public is None:
            try:
                public = crypto.load_public_key(key.pem)
            except crypto.KeyFormatError:
                return None
            self._public[key.md5] = public
        return public
