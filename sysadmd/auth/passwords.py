"""Password checks: plausibility first, then PAM off the reactor thread, fairly queued.

* :func:`credential_problem` rejects user names and passwords no account can have
  before anything looks them up: a 5 MiB name once reached ``getpwnam()`` and the
  systemd NSS module aborted the whole process.  Names are at most
  :data:`MAX_USER_NAME_BYTES` bytes of UTF-8 (``LOGIN_NAME_MAX`` is 256 with the
  terminating NUL on Linux and the BSDs; shadow's ``useradd`` allows 32), without NUL,
  control or format characters, whitespace, ``:`` (the passwd field separator), ``/`` or
  lone UTF-16 surrogates; passwords are at most :data:`MAX_PASSWORD_BYTES` bytes and
  hold no NUL (PAM takes C strings) and no lone surrogate (not encodable).
* A failed PAM check typically sleeps about two seconds (pam_faildelay); upstream did
  it on its main thread and froze every client.  :class:`PamPasswordChecker` runs it in
  the reactor's thread pool, and :class:`FairCheckQueue` decides which check runs next:
  at most ``workers`` at once, addresses served in turn, one address never holding every
  worker, at most ``per_key`` checks running or queued per address (more are refused at
  once) and never more running for an address than the failures it has left before the
  blacklist blocks it.  Queued checks of an address that gets blocked are dropped.
"""

from __future__ import annotations

import collections
import unicodedata
from typing import Any, Callable, Deque, Dict, Optional, Tuple

from twisted.internet import defer, threads
from twisted.logger import Logger

from sysadmd.wire.envelope import ApiError
from sysadmd.untrusted import shown

log = Logger()

MAX_USER_NAME_BYTES = 255
MAX_PASSWORD_BYTES = 4096
_FORBIDDEN_IN_NAMES = {":": "':' (the passwd field separator)", "/": "'/'"}


def credential_problem(user: Any, password: Any) -> Optional[str]:
    """``None`` if *user*/*password* are plausible, else what is wrong (never echoing them)."""
    if not isinstance(user, str) or not user:
        return "username must be a non-empty string"
    if not isinstance(password, str):
        return "password must be a string"
    # Length first, on the str (cheap), then on its UTF-8 form.
    if len(user) > MAX_USER_NAME_BYTES:
        return f"username is {len(user)} characters long; at most {MAX_USER_NAME_BYTES} bytes are accepted"
    if len(password) > MAX_PASSWORD_BYTES:
        return f"password is {len(password)} characters long; at most {MAX_PASSWORD_BYTES} bytes are accepted"
    for i, ch in enumerate(user):
        if ch in _FORBIDDEN_IN_NAMES:
            return f"username contains {_FORBIDDEN_IN_NAMES[ch]} at position {i}"
        if ch.isspace():
            return f"username contains whitespace at position {i}"
        category = unicodedata.category(ch)
        if category == "Cs":
            return f"username contains a lone UTF-16 surrogate at position {i}"
        if category in ("Cc", "Cf", "Co", "Cn"):
            return f"username contains a control or unassigned character (U+{ord(ch):04X}) at position {i}"
    if len(user.encode("utf-8")) > MAX_USER_NAME_BYTES:
        return f"username is longer than {MAX_USER_NAME_BYTES} bytes of UTF-8"
    if "\x00" in password:
        return "password contains a NUL character"
    try:
        encoded = password.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"password contains a lone UTF-16 surrogate at position {e.start}"
    if len(encoded) > MAX_PASSWORD_BYTES:
        return f"password is longer than {MAX_PASSWORD_BYTES} bytes of UTF-8"
    return None


class PamPasswordChecker:
    def __init__(self, reactor, service: str = "login"):
        self.reactor = reactor
        self.service = service

    def check(self, user: str, password: str) -> defer.Deferred:
        """Fires with ``True`` or ``False``; never fails."""
        d = threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), self._check_blocking, user, password)

        def trap(failure):
            log.failure("PAM check for {user} raised", failure, user=shown(user))
            return False

        d.addErrback(trap)
        return d

    def _check_blocking(self, user: str, password: str) -> bool:
        import pam  # python-pam; imported lazily so a missing libpam only breaks password logins

        checker = pam.pam()
        ok = checker.authenticate(user, password, service=self.service)
        if not ok:
            log.info("PAM refused {user}: {reason}", user=shown(user), reason=shown(checker.reason))
        return bool(ok)


class CheckRefused(ApiError):
    """A check that was not run: too many from its address, or the address got blocked."""


class FairCheckQueue:
    """Runs ``check(*args) -> Deferred`` calls with bounded, per-key fair concurrency.

    *budget(key)* (optional) says how many checks of *key* may run at once at most (the
    failures it has left before a block); 0 holds its checks in the queue.
    """

    def __init__(self, workers: int, per_key: int, budget: Optional[Callable[[str], int]] = None):
        self.workers = workers
        self.per_key = per_key
        self.budget = budget
        self.running: Dict[str, int] = collections.Counter()
        self._queues: "collections.OrderedDict[str, Deque[Tuple[defer.Deferred, Callable[..., Any], tuple]]]" = collections.OrderedDict()
        self.started = 0  # checks started in all (for tests and stats)
        self._served: Dict[str, int] = {}  # key -> value of `started` when it last got a worker

    @property
    def busy(self) -> int:
        return sum(self.running.values())

    def queued(self, key: str) -> int:
        return len(self._queues.get(key, ()))

    def submit(self, key: str, check: Callable[..., defer.Deferred], *args: Any) -> defer.Deferred:
        outstanding = self.running.get(key, 0) + self.queued(key)
        if outstanding >= self.per_key:
            return defer.fail(CheckRefused(
                "429", f"{outstanding} password checks from your address are already running or queued "
                       f"(PASSWORD_CHECKS_PER_ADDRESS={self.per_key}); wait for their replies"))
        d = defer.Deferred()
        self._queues.setdefault(key, collections.deque()).append((d, check, args))
        self._pump()
        return d

    def drop(self, key: str, reason: str) -> int:
        """Fail every queued (not yet running) check of *key* with a 401 *reason*."""
        queue = self._queues.pop(key, None)
        if key not in self.running:
            self._served.pop(key, None)
        if not queue:
            return 0
        for d, _, _ in queue:
            d.errback(CheckRefused("401", reason))
        return len(queue)

    def _limit(self, key: str) -> int:
        # One address may use every worker but one, so another address always gets one.
        limit = max(1, self.workers - 1)
        if self.budget is not None:
            limit = min(limit, self.budget(key))
        return limit

    def _pump(self) -> None:
        while self.busy < self.workers and self._queues:
            # The least recently served address with room goes next; one never served
            # (a newcomer) first of all.
            chosen = None
            for key in self._queues:
                if self.running.get(key, 0) < self._limit(key):
                    if chosen is None or self._served.get(key, -1) < self._served.get(chosen, -1):
                        chosen = key
            if chosen is None:
                return
            queue = self._queues[chosen]
            d, check, args = queue.popleft()
            if not queue:
                del self._queues[chosen]
            self._start(chosen, d, check, args)

    def _start(self, key: str, d: defer.Deferred, check: Callable[..., Any], args: tuple) -> None:
        self.running[key] += 1
        self._served[key] = self.started
        self.started += 1

        def done(result):
            self.running[key] -= 1
            if self.running[key] <= 0:
                del self.running[key]
                if key not in self._queues:
                    self._served.pop(key, None)
            # The caller hears the answer (and counts a failure) before the next check
            # starts, so the next one sees the address's new budget.
            d.callback(result)
            self._pump()

        defer.maybeDeferred(check, *args).addBoth(done)
