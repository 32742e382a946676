"""Registered RSA public keys: who may log in with ``rpc/auth_ssl``.

Each key belongs to one user and is kept in three forms: ``pub_key``, upstream's stored
form (``base64`` of the PEM text, exactly as the client or the admin command gave it,
and the handle ``list_ssl_certs``/``revoke_ssl_cert`` use), the canonical SPKI PEM, and
its ``md5`` checksum (``base64(MD5(PEM))``, what bridges pair peers by).  A key may be
registered once, for one user, so a checksum names exactly one login: registering it
again for the same user replaces its nickname and email (upstream's Qt GUI re-sends its
key on every connection set-up), registering it for another user is refused.

Only keys within :data:`crypto.LOGIN_KEY_RULE` (RSA 2048-4096 bits, e = 65537) are
registered, and through the API at most ``MAX_KEYS_PER_USER`` per user; keys stored
before these rules existed are skipped at login (:class:`SignatureChecker`), and
reported once each.

Verifying a signature is CPU work: :class:`SignatureChecker` does it in a small thread
pool of its own, so no login attempt ever runs RSA on the reactor thread, and it tries
a bounded number of keys (the one the client names by checksum, when it names one).

The daemon and the ``sysadmd`` admin command each open their own connection on the same
SQLite file; nothing is cached across calls, so a key added or removed by the command
counts at the daemon's next login attempt.
"""

from __future__ import annotations

import datetime
import hmac
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

from twisted.application import service
from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from sysadmd.runtime import crypto
from sysadmd import migrations
from sysadmd.runtime.db import ensure

log = Logger()


class KeyStoreError(ValueError):
    """A key operation cannot be done; ``str()`` says why."""


class DuplicateKey(KeyStoreError):
    """The key is already registered for another user (keys are unique across users)."""


class KeyLimitReached(KeyStoreError):
    """The user already has the most keys allowed (``MAX_KEYS_PER_USER``)."""


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
        ensure(db, migrations.SCHEMA)  # tables: sysadmd/migrations/

    # --- changes ----------------------------------------------------------------------
    def register(self, user: str, pem: str, nickname: str = "", email: str = "",
                 pub_key: Optional[str] = None) -> RegisteredKey:
        """Register *pem* (any accepted key text) for *user*; see :meth:`save`."""
        return self.save(user, pem, nickname, email, pub_key)[0]

    def save(self, user: str, pem: str, nickname: str = "", email: str = "",
             pub_key: Optional[str] = None, cap: Optional[int] = None) -> Tuple[RegisteredKey, bool]:
        """Register *pem* for *user*, or replace the nickname and email of *user*'s
        registration of the same key; returns ``(key, replaced)``.

        *pub_key* is the stored form to keep for a new key (the text a client sent); by
        default ``base64`` of the canonical PEM.  A replaced key keeps its stored form,
        so the handle ``list_ssl_certs`` showed stays valid.  Raises
        :class:`crypto.KeyPolicyError` / :class:`crypto.KeyFormatError` for an unusable
        key, :class:`DuplicateKey` if another user has it, :class:`KeyLimitReached` if
        *user* already has *cap* keys (``None``: no cap, for the admin command).
        """
        if not user:
            raise KeyStoreError("a user name is required")
        canonical = crypto.login_key_pem(pem)
        md5 = crypto.md5_checksum(canonical)
        nickname, email = nickname or "", email or ""
        now = self._now()
        # One write transaction: the check, the cap and the change see the same rows even
        # when the admin command writes at the same time.
        self.db.execute("BEGIN IMMEDIATE")
        try:
            row = self.db.execute("SELECT * FROM registered_keys WHERE md5 = ?", (md5,)).fetchone()
            if row is not None:
                existing = _row(row)
                if existing.user != user:
                    label = f" ({existing.nickname})" if existing.nickname else ""
                    raise DuplicateKey(f"this key is already registered for user {existing.user}{label}; "
                                       "a key can log in as one user only (that user must revoke it first)")
                self.db.execute("UPDATE registered_keys SET nickname = ?, email = ?, registered = ? WHERE id = ?",
                                (nickname, email, now, row["id"]))
                key = RegisteredKey(user, existing.pub_key, existing.pem, md5, nickname, email, now)
                replaced = True
            else:
                if cap is not None:
                    count = self.db.execute("SELECT COUNT(*) FROM registered_keys WHERE user = ?", (user,)).fetchone()[0]
                    if count >= cap:
                        raise KeyLimitReached(f"user {user} already has {count} registered keys, the most allowed "
                                              f"(MAX_KEYS_PER_USER={cap}); revoke one first")
                stored = pub_key if pub_key else crypto.stored_form(canonical)
                key = RegisteredKey(user, stored, canonical, md5, nickname, email, now)
                self.db.execute(
                    "INSERT INTO registered_keys (user, pub_key, pem, md5, nickname, email, registered) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (key.user, key.pub_key, key.pem, key.md5, key.nickname, key.email, key.registered),
                )
                replaced = False
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")
        return key, replaced

    def revoke(self, user: str, pub_key: str) -> Optional[RegisteredKey]:
        """Remove *user*'s key stored as *pub_key*; the removed key or ``None``.

        *pub_key* is matched as stored (exact text), else as any encoding of the same
        key (a client that re-registered with other line breaks can still revoke).
        """
        row = self.db.execute("SELECT * FROM registered_keys WHERE user = ? AND pub_key = ?", (user, pub_key)).fetchone()
        if row is None:
            if len(pub_key) > 65536:
                return None  # far longer than any key or certificate: not worth parsing
            try:
                md5 = crypto.md5_checksum(crypto.pem_from_stored(pub_key))
            except crypto.KeyFormatError:
                return None
            row = self.db.execute("SELECT * FROM registered_keys WHERE user = ? AND md5 = ?", (user, md5)).fetchone()
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

    def checksums(self, user: Optional[str] = None) -> Dict[str, List[str]]:
        """``{"md5_keys": [...]}``, the ``list_ssl_checksums`` reply: every user's keys,
        or only *user*'s."""
        return {"md5_keys": [k.md5 for k in self.list(user)]}

    def owners(self) -> Set[Tuple[str, str]]:
        """Every registered ``(user, md5)`` pair."""
        return {(r["user"], r["md5"]) for r in self.db.execute("SELECT user, md5 FROM registered_keys")}

    def find_by_md5(self, md5: str) -> Optional[RegisteredKey]:
        row = self.db.execute("SELECT * FROM registered_keys WHERE md5 = ?", (md5,)).fetchone()
        return _row(row) if row is not None else None

    def find(self, user: str, handle: str) -> List[RegisteredKey]:
        """*user*'s keys whose nickname, checksum or stored form is *handle*."""
        return [k for k in self.list(user) if handle in (k.nickname, k.md5, k.pub_key)]

    def login_candidates(self, md5: Optional[str], limit: int) -> Tuple[List[RegisteredKey], int]:
        """The keys a login answer may come from: the key with checksum *md5* when the
        client named one (none if unknown), else the *limit* oldest keys (a flood of new
        keys cannot push the established ones out).  Returns ``(keys, total)``, *total*
        being how many keys there were to choose from.
        """
        if md5 is not None:
            found = self.find_by_md5(md5)
            return ([found], 1) if found is not None else ([], 0)
        total = self.db.execute("SELECT COUNT(*) FROM registered_keys").fetchone()[0]
        rows = self.db.execute("SELECT * FROM registered_keys ORDER BY id LIMIT ?", (limit,)).fetchall()
        return [_row(r) for r in rows], total


# --- verifying answers, off the reactor thread ---------------------------------------------
Matcher = Callable[[Any, bytes], bool]  # (RSAPublicKey, signature bytes) -> signed what we expect


def raw_signature_of(message: bytes) -> Matcher:
    """A matcher for upstream's answer: a raw PKCS#1 v1.5 signature carrying *message*."""

    def matches(public: Any, signature: bytes) -> bool:
        recovered = crypto.recover_raw(public, signature)
        return recovered is not None and hmac.compare_digest(recovered, message)

    return matches


@dataclass(frozen=True)
class CheckResult:
    key: Optional[RegisteredKey]  # the key that signed, or None
    tried: int  # keys whose signature check ran
    skipped: Tuple[Tuple[RegisteredKey, str], ...]  # (key, why) for keys outside the rules


class CheckerBusy(Exception):
    """Too many signature checks are waiting; ``str()`` says how many."""


class SignatureChecker(service.Service):
    """Signature checks in a small thread pool of its own.

    At most *threads* checks run at once, each over a bounded list of keys; at most
    *max_pending* may be queued or running, and at most *max_pending_per_peer* from one
    address, so one address cannot fill the queue.  Beyond that :meth:`find_signer` fails
    at once with :class:`CheckerBusy`.  Parsed keys are cached by PEM text.  Results come
    back on the reactor thread.
    """

    def __init__(self, reactor: Any, threads: int = 2, max_pending: int = 64, max_pending_per_peer: int = 4,
                 cache_size: int = 4096):
        self.reactor = reactor
        self.max_pending = max_pending
        self.max_pending_per_peer = max_pending_per_peer
        self.cache_size = cache_size
        self.threads = threads
        self.pool = self._new_pool()
        self.pending = 0
        self._by_peer: Dict[str, int] = {}
        self._cache: Dict[str, Tuple[Any, Optional[str]]] = {}  # pem -> (public key | None, problem)
        self._lock = threading.Lock()
        self._warned: Set[str] = set()  # checksums of out-of-rule keys already logged

    def _new_pool(self) -> ThreadPool:
        return ThreadPool(minthreads=0, maxthreads=self.threads, name="sysadmd-key-checks")

    def startService(self) -> None:
        super().startService()
        if self.pool.joined:  # started again after a stop: a stopped pool cannot restart
            self.pool = self._new_pool()
        self.pool.start()

    def stopService(self) -> Any:
        super().stopService()
        # Running checks are short (bounded key lists); stopping waits for them.
        if self.pool.started and not self.pool.joined:
            self.pool.stop()

    def find_signer(self, candidates: Sequence[RegisteredKey], signature_b64: str, matches: Matcher,
                    peer: str = "") -> defer.Deferred:
        """Fires with a :class:`CheckResult`: the first of *candidates* (that keeps to the
        key rules and whose size fits the signature) for which ``matches`` holds.

        Only an answer no permitted key could have given is settled here; anything else,
        even with no candidate at all, goes through the pool, so the reply's timing does
        not tell whether a checksum is registered.
        """
        signature = crypto.decode_signature(signature_b64)
        if signature is None:
            return defer.succeed(CheckResult(None, 0, ()))
        if self.pending >= self.max_pending:
            return defer.fail(CheckerBusy(f"{self.pending} key logins are being checked already"))
        mine = self._by_peer.get(peer, 0)
        if mine >= self.max_pending_per_peer:
            return defer.fail(CheckerBusy(f"{mine} key logins from {peer or 'this address'} are being checked already"))
        self.pending += 1
        self._by_peer[peer] = mine + 1
        d = threads.deferToThreadPool(self.reactor, self.pool, self._check, list(candidates), signature, matches)

        def done(result: Any) -> Any:
            self.pending -= 1
            left = self._by_peer.pop(peer, 1) - 1
            if left > 0:
                self._by_peer[peer] = left
            if isinstance(result, CheckResult):
                self._warn(result.skipped)
            return result

        return d.addBoth(done)

    # --- in a pool thread ---------------------------------------------------------------
    def _check(self, candidates: List[RegisteredKey], signature: bytes, matches: Matcher) -> CheckResult:
        skipped: List[Tuple[RegisteredKey, str]] = []
        tried = 0
        found: Optional[RegisteredKey] = None
        for key in candidates:
            public, problem = self._parsed(key.pem)
            if public is None:
                skipped.append((key, problem or "unreadable"))
                continue
            if len(signature) != (public.key_size + 7) // 8:
                continue  # a signature is exactly as long as its key's modulus
            tried += 1
            if matches(public, signature):
                found = key
                break
        return CheckResult(found, tried, tuple(skipped))

    def _parsed(self, pem: str) -> Tuple[Any, Optional[str]]:
        with self._lock:
            cached = self._cache.get(pem)
        if cached is not None:
            return cached
        try:
            public = crypto.load_public_key(pem)
        except crypto.KeyFormatError as e:
            entry: Tuple[Any, Optional[str]] = (None, str(e))
        else:
            problem = crypto.login_key_problem(public)
            entry = (None, problem) if problem is not None else (public, None)
        with self._lock:
            if len(self._cache) >= self.cache_size:
                self._cache.clear()
            self._cache[pem] = entry
        return entry

    # --- back on the reactor thread -----------------------------------------------------
    def _warn(self, skipped: Sequence[Tuple[RegisteredKey, str]]) -> None:
        """One warning naming the out-of-rule keys not reported before (each key once)."""
        new = [(key, why) for key, why in skipped if key.md5 not in self._warned]
        if not new:
            return
        if len(self._warned) < 100000:
            self._warned.update(key.md5 for key, _ in new)
        shown = "; ".join(f"{key.md5} of user {key.user} ({why})" for key, why in new[:5])
        more = f"; and {len(new) - 5} more" if len(new) > 5 else ""
        log.warn("{count} registered key(s) cannot log in and are skipped: {shown}{more}. Remove them "
                 "(sysadmd revoke_key USER MD5) and register keys within the rules",
                 count=len(new), shown=shown, more=more)
