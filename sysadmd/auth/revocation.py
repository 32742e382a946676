"""Ending the logins of revoked keys, whoever revoked them.

A key revoked through ``rpc/settings`` ends its logins at once.  A key revoked by the
``sysadmd`` admin command changes the database behind the daemon's back; the
:class:`RevokedKeyWatcher` notices that within one check interval: SQLite's
``data_version`` changes whenever another connection commits, and only then are the
live key logins compared with the registered keys.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.application import service
from twisted.internet import task
from twisted.logger import Logger

from sysadmd.runtime.db import data_version
from sysadmd.session import Identity
from sysadmd.wire.close import CLOSE_POLICY

log = Logger()


def end_key_logins(server: Any, doomed: Callable[[Identity], bool], reason: str) -> int:
    """Revoke the tokens and close the sessions of key logins for which *doomed* is true.

    Sessions are closed on the next reactor turn, so a reply already being written (the
    ``revoke_ssl_cert`` answer to the session that revoked its own key) goes out first.
    Returns the number of tokens and sessions ended.
    """

    def match(identity: Optional[Identity]) -> bool:
        return identity is not None and identity.method == "key" and doomed(identity)

    tokens = server.tokens.revoke_where(match)
    victims = [s for s in server.sessions if match(s.identity)]
    for session in victims:
        # Logged out now, so nothing more is served to it before the close goes out.
        session.logout()
    if victims:
        ids = {s.id for s in victims}
        server.reactor.callLater(0, server.sessions.close_where, lambda s: s.id in ids, reason, CLOSE_POLICY)
    if tokens or victims:
        log.info("{reason}: ended {tokens} token(s) and {sessions} session(s)", reason=reason,
                 tokens=tokens, sessions=len(victims))
    return tokens + len(victims)


class RevokedKeyWatcher(service.Service):
    """Checks every *interval* seconds whether another process removed a key in use."""

    def __init__(self, server: Any, keys: Any, clock: Any, interval: float = 1.0):
        self.server = server
        self.keys = keys
        self.clock = clock
        self.interval = interval
        self._loop: Optional[task.LoopingCall] = None
        self._version: Optional[int] = None

    def startService(self) -> None:
        super().startService()
        self._version = data_version(self.server.db)
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = self.clock
        d = self._loop.start(self.interval, now=False)
        d.addErrback(lambda f: log.failure("revoked-key watcher stopped", f))

    def stopService(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        return super().stopService()

    def _tick(self) -> None:
        try:
            self.check()
        except Exception:
            # A busy or briefly unreadable database must not stop the watcher for good.
            log.failure("checking for revoked keys failed; trying again in {interval} s", interval=self.interval)

    def check(self) -> int:
        """End key logins whose key is gone; returns how many were ended."""
        version = data_version(self.server.db)
        if version == self._version:
            return 0
        self._version = version
        registered = self.keys.owners()
        return end_key_logins(
            self.server,
            lambda identity: (identity.user, identity.key_checksum) not in registered,
            "the key used to log in was revoked",
        )
