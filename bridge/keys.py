"""The public keys registered on the bridge, kept in its own SQLite database.

As upstream, a key is registered under a nickname and one nickname holds one key
(importing again replaces it).  We store the canonical SPKI PEM, upstream's stored form
``base64(PEM)``, the pairing checksum ``base64(MD5(PEM))``, the registration time, the
key's role and the extra checksums a client key may pair on.

Roles (a key has ONE, unlike upstream where any key could act as either):

* ``server`` / ``client``: given at import (``--role``); the key authenticates only
  peers of that role.
* ``both``: given explicitly at import; either role (upstream's behaviour).
* ``unbound``: imported without a role (upstream's verbs, or ``--role`` left out).  The
  first successful login binds it, for good, to the role that peer identified as
  (:meth:`KeyStore.bind_role`); the bridge logs it.  Keys stored by older versions with
  role ``any`` are read as ``unbound``.

Pairing: a client is paired only on checksums of keys it has proved it holds.  Its own
key's checksum always counts; ``pairs`` lists the checksums of further keys the
administrator vouched for at import (``--pairs-with FILE``: upstream's Qt GUI signs the
bridge challenge with one key and logs in to servers with another).

The ``sysadm-bridge`` command edits the same table while the daemon runs; the daemon
notices through ``PRAGMA data_version`` (:meth:`KeyStore.changed`).
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from typing import Dict, FrozenSet, Iterable, List, Optional, Tuple, Union

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from sysadmd.runtime import crypto
from bridge import migrations
from sysadmd.runtime.db import data_version, ensure, open_database

SERVER, CLIENT, BOTH, UNBOUND = "server", "client", "both", "unbound"
ROLES = (SERVER, CLIENT, BOTH)  # what --role accepts
STORED_ROLES = ROLES + (UNBOUND,)
LEGACY_UNBOUND = "any"  # stored by earlier versions for keys imported without --role
MAX_PAIRS = 64


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
    pairs: Tuple[str, ...] = ()

    @property
    def bound(self) -> bool:
        return self.role != UNBOUND

    def allows(self, role: Optional[str]) -> bool:
        """Whether this key may authenticate a peer of *role* (an unbound key: any role,
        until its first login binds it)."""
        return self.role in (BOTH, UNBOUND) or self.role == role

    def pairing_checksums(self) -> FrozenSet[str]:
        """The checksums a client holding this key may be paired on."""
        return frozenset((self.md5,) + tuple(self.pairs))


def _row(r: sqlite3.Row) -> RegisteredKey:
    role = UNBOUND if r["role"] == LEGACY_UNBOUND else r["role"]
    return RegisteredKey(r["nickname"], r["pem"], r["stored"], r["md5"], role, r["registered"],
                         tuple((r["pairs"] or "").split()))


def database_path(state_dir: str) -> str:
    return os.path.join(state_dir, "bridge.sqlite")


def open_keystore(state_dir: str) -> "KeyStore":
    return KeyStore(open_database(database_path(state_dir), migrations.SCHEMA))


class KeyStore:
    def __init__(self, db: sqlite3.Connection):
        self.db = db
        ensure(db, migrations.SCHEMA)  # the table is made by bridge/migrations/
        self._public: Dict[str, rsa.RSAPublicKey] = {}
        self._version = data_version(db)

    # --- administration ---------------------------------------------------------------
    def import_key(self, nickname: str, data: Union[str, bytes], role: Optional[str] = None,
                   now: Optional[float] = None, pairs_with: Iterable[Union[str, bytes]] = ()) -> RegisteredKey:
        """Register the key in *data* (PEM public key, certificate or private key) under *nickname*.

        *role* ``None`` leaves the key unbound until its first login.  *pairs_with*: PEM
        keys whose checksums a client holding this key may also be paired on.
        """
        nickname = nickname.strip()
        if not nickname:
            raise KeyStoreError("the nickname must not be empty")
        if role is None:
            role = UNBOUND
        if role not in STORED_ROLES:
            raise KeyStoreError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        try:
            pem = crypto.login_key_pem(data)  # RSA 2048-4096 bits, e = 65537, as sysadmd
        except crypto.KeyPolicyError as e:
            raise KeyStoreError(f"the key for {nickname!r} cannot log in: {e}") from None
        except crypto.KeyFormatError as e:
            raise KeyStoreError(f"cannot read the key for {nickname!r}: {e}") from None
        pairs: List[str] = []
        for extra in pairs_with:
            try:
                md5 = crypto.md5_checksum(crypto.normalized_pem(extra))
            except crypto.KeyFormatError as e:
                raise KeyStoreError(f"cannot read a --pairs-with key for {nickname!r}: {e}") from None
            if md5 not in pairs:
                pairs.append(md5)
        if pairs and role == SERVER:
            raise KeyStoreError("--pairs-with is for client keys: a server reports the keys registered on it itself")
        if len(pairs) > MAX_PAIRS:
            raise KeyStoreError(f"at most {MAX_PAIRS} --pairs-with keys per key, got {len(pairs)}")
        key = RegisteredKey(nickname, pem, crypto.stored_form(pem), crypto.md5_checksum(pem), role,
                            time.time() if now is None else now, tuple(pairs))
        self.db.execute(
            "INSERT OR REPLACE INTO bridge_keys (nickname, pem, stored, md5, role, registered, pairs) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (key.nickname, key.pem, key.stored, key.md5, key.role, key.registered, " ".join(key.pairs)),
        )
        return key

    def bind_role(self, key: RegisteredKey, role: str) -> Optional[RegisteredKey]:
        """Bind the unbound *key* to *role* for good; the key as stored afterwards, or
        ``None`` when it was removed or replaced meanwhile.  A key bound already (by
        another process or connection) is returned unchanged: the caller checks it."""
        if role not in (SERVER, CLIENT):
            raise KeyStoreError(f"a key is bound to server or client, not {role!r}")
        self.db.execute("UPDATE bridge_keys SET role = ? WHERE nickname = ? AND md5 = ? AND role IN (?, ?)",
                        (role, key.nickname, key.md5, UNBOUND, LEGACY_UNBOUND))
        current = self.get(key.nickname)
        if current is None or current.md5 != key.md5:
            return None
        return current

    def remove(self, nickname: str) -> bool:
        cur = self.db.execute("DELETE FROM bridge_keys WHERE nickname = ?", (nickname,))
        return cur.rowcount > 0

    def all(self) -> List[RegisteredKey]:
        rows = self.db.execute("SELECT nickname, pem, stored, md5, role, registered, pairs FROM bridge_keys ORDER BY nickname").fetchall()
        return [_row(r) for r in rows]

    def get(self, nickname: str) -> Optional[RegisteredKey]:
        row = self.db.execute("SELECT nickname, pem, stored, md5, role, registered, pairs FROM bridge_keys WHERE nickname = ?",
                              (nickname,)).fetchone()
        return _row(row) if row is not None else None

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
            if public is not None and crypto.login_key_problem(public) is not None:
                continue  # imported before the key rule: never checked (a huge exponent is slow)
            if public is not None and crypto.recover_signed(public, signature_b64) == expected:
                return key
        return None

    def verify_sha256(self, message: str, signature_b64: str) -> Optional[RegisteredKey]:
        """The registered key whose RSASSA-PKCS1-v1_5 SHA-256 signature of *message* is
        *signature_b64* (the ``pkcs1-sha256`` login scheme, docs/protocol.md §8.1)."""
        signature = crypto.decode_signature(signature_b64)
        if signature is None:
            return None
        data = message.encode("utf-8")
        for key in self.all():
            public = self._public_key(key)
            if public is None or crypto.login_key_problem(public) is not None:
                continue
            if len(signature) != (public.key_size + 7) // 8:
                continue
            try:
                public.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
            except (InvalidSignature, ValueError):
                continue
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
