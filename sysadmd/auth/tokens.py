"""Session tokens: random, compared exactly, with a sliding time to live.

Upstream matched tokens by substring (so ``""`` matched anyone's session); ours are
looked up by exact key in a dict and are never empty.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

from twisted.internet.interfaces import IReactorTime

from sysadmd.crypto import random_token
from sysadmd.session import Identity

TOKEN_LENGTH = 40


class TokenStore:
    def __init__(self, clock: IReactorTime, ttl: float):
        self.clock = clock
        self.ttl = ttl
        self._tokens: Dict[str, Tuple[Identity, float]] = {}

    def issue(self, identity: Identity) -> str:
        self._purge()
        token = random_token(TOKEN_LENGTH)
        self._tokens[token] = (identity, self.clock.seconds() + self.ttl)
        return token

    def check(self, token: Optional[str]) -> Optional[Identity]:
        """The identity behind a live *token* (extending its life), else ``None``."""
        if not token:
            return None
        entry = self._tokens.get(token)
        if entry is None:
            return None
        identity, expires = entry
        now = self.clock.seconds()
        if now >= expires:
            del self._tokens[token]
            return None
        self._tokens[token] = (identity, now + self.ttl)
        return identity

    def revoke(self, token: Optional[str]) -> None:
        if token:
            self._tokens.pop(token, None)

    def revoke_where(self, predicate: Callable[[Identity], bool]) -> int:
        doomed = [t for t, (ident, _) in self._tokens.items() if predicate(ident)]
        for token in doomed:
            del self._tokens[token]
        return len(doomed)

    def __len__(self) -> int:
        return len(self._tokens)

    def _purge(self) -> None:
        now = self.clock.seconds()
        for token in [t for t, (_, exp) in self._tokens.items() if exp <= now]:
            del self._tokens[token]
