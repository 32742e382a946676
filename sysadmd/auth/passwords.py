"""Password checks through PAM, always off the reactor thread.

A failed PAM check typically sleeps about two seconds (pam_faildelay); upstream did it
on its main thread and froze every client.  Here it runs in the reactor's thread pool.
"""

from __future__ import annotations

from twisted.internet import defer, threads
from twisted.logger import Logger

log = Logger()


class PamPasswordChecker:
    def __init__(self, reactor, service: str = "login"):
        self.reactor = reactor
        self.service = service

    def check(self, user: str, password: str) -> defer.Deferred:
        """Fires with ``True`` or ``False``; never fails."""
        d = threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), self._check_blocking, user, password)

        def trap(failure):
            log.failure("PAM check for {user} raised", failure, user=user)
            return False

        d.addErrback(trap)
        return d

    def _check_blocking(self, user: str, password: str) -> bool:
        import pam  # python-pam; imported lazily so a missing libpam only breaks password logins

        checker = pam.pam()
        ok = checker.authenticate(user, password, service=self.service)
        if not ok:
            log.info("PAM refused {user}: {reason}", user=user, reason=checker.reason)
        return bool(ok)
