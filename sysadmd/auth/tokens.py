"""Session tokens: random, compared exactly, with a sliding time to live and an
absolute lifetime.

Upstream matched tokens by substring (so ``""`` matched anyone's session); ours are
looked up by exact key in a dict and are never empty.  Each use extends a token by
``ttl`` seconds, but never past ``max_lifetime`` seconds after it was issued (0: no
absolute limit), so a token that is used all the time still ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional

from twisted.internet.interfaces import IReactorTime

from sysadmd.runtime.crypto import random_token
from sysadmd.session import Identity

TOKEN_LENGTH = 40


@dataclass
class _Entry:
    identity: Identity
    expires: float  # sliding: last use + ttl
    deadline: float  # absolute: issue time + max_lifetime (inf without a limit)


class TokenStore:
    def __init__(self, clock: IReactorTime, ttl: float, max_lifetime: float = 0):
        self.clock = clock
        self.ttl = ttl
        self.max_lifetime = max_lifetime
        self._tokens: Dict[str, _Entry] = {}

    def issue(self, identity: Identity) -> str:
        self._purge()
        token = random_token(TOKEN_LENGTH)
        now = self.clock.seconds()
        deadline = now + self.max_lifetime if self.max_lifetime > 0 else float("inf")
        self._tokens[token] = _Entry(identity, min(now + self.ttl, deadline), deadline)
        return token

    def check(self, token: Optional[str]) -> Optional[Identity]:
        """The identity behind a live *token* (extending its life), else ``None``."""
        entry = self._live(token)
        if entry is None:
            return None
        entry.expires = min(self.clock.seconds() + self.ttl, entry.deadline)
        return entry.identity

    def alive(self, token: Optional[str]) -> bool:
        """Whether *token* is live, without extending it."""
        return self._live(token) is not None

    def _live(self, token: Optional[str]) -> Optional[_Entry]:
        if not token:
            return None
        entry = self._tokens.get(token)
        if entry is None:
            return None
        if self.clock.seconds() >= entry.expires:
            del self._tokens[token]
            return None
        return entry

    def replace_identity(self, token: Optional[str], identity: Identity) -> None:
        """Give a live token new rights (a user moved between access groups)."""
        entry = self._tokens.get(token) if token else None
        if entry is not None:
            entry.identity = identity

    def revoke(self, token: Optional[str]) -> None:
        if token:
            self._tokens.pop(token, None)

    def revoke_where(self, predicate: Callable[[Identity], bool]) -> int:
        doomed = [t for t, entry in self._tokens.items() if predicate(entry.identity)]
        for token in doomed:
            del self._tokens[token]
        return len(doomed)

    def __len__(self) -> int:
        return len(self._tokens)

    def _purge(self) -> None:
        now = self.clock.seconds()
        for token in [t for t, entry in self._tokens.items() if entry.expires <= now]:
            del self._tokens[token]
