"""Download tokens: random, bound to one job and one user, stored hashed, expiring.

A token is given out once (in ``core/download``'s reply) and kept only as its SHA-256,
so the table never holds a usable secret.  It stays valid for repeated and ranged GETs
(resume) until ``DOWNLOAD_TOKEN_TTL`` seconds after it was issued; it does not slide with
use.  One user holds at most :data:`MAX_PER_USER` live tokens.  Tokens live in this
process only: a restarted daemon knows none (and deletes the spool files they served).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any, Dict, Optional

MAX_PER_USER = 64
TOKEN_BYTES = 32  # 43 URL-safe characters


class TooManyTokens(Exception):
    pass


@dataclass
class Grant:
    job_id: int
    user: str
    expires: float


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "replace")).digest()


class DownloadTokens:
    def __init__(self, clock: Any, ttl: float):
        self.clock = clock
        self.ttl = ttl
        self._grants: Dict[bytes, Grant] = {}

    def issue(self, job_id: int, user: str) -> str:
        self.purge()
        held = sum(1 for g in self._grants.values() if g.user == user)
        if held >= MAX_PER_USER:
            raise TooManyTokens(f"user {user!r} already holds {held} live download tokens (at most {MAX_PER_USER}); "
                                f"they expire DOWNLOAD_TOKEN_TTL ({self.ttl:g} s) after core/download")
        token = secrets.token_urlsafe(TOKEN_BYTES)
        self._grants[_digest(token)] = Grant(job_id, user, self.clock.seconds() + self.ttl)
        return token

    def check(self, token: Optional[str], job_id: int) -> Optional[Grant]:
        """The live grant of *token* for *job_id*, else ``None`` (unknown, expired, other job)."""
        if not token or len(token) > 256:
            return None
        grant = self._grants.get(_digest(token))
        if grant is None or grant.expires <= self.clock.seconds():
            return None
        # Job ids are not secret, but compare without a data-dependent shortcut all the same.
        if not hmac.compare_digest(str(grant.job_id), str(job_id)):
            return None
        return grant

    def purge(self) -> None:
        now = self.clock.seconds()
        for key in [k for k, g in self._grants.items() if g.expires <= now]:
            del self._grants[key]

    def live_jobs(self) -> set:
        """Job ids some live token still serves."""
        self.purge()
        return {g.job_id for g in self._grants.values()}
