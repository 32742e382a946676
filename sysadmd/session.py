"""Sessions: who is asking, with which rights, which events it wants, how to reach it.

Every transport (TLS WebSocket, local Unix socket, REST request, a client seen through
a bridge link) creates one :class:`Session` per conversation and hands it a
:class:`Channel` — the only thing that knows about frames and sockets.  The request
pipeline (:mod:`sysadmd.api`), the dispatcher and the event hub talk to sessions only.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Protocol, Set

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from sysadmd.wire.close import CLOSE_GOING_AWAY, CLOSE_NORMAL, CLOSE_POLICY
from sysadmd.wire.envelope import encode, event

log = Logger()


class Channel(Protocol):
    """What a transport gives a session."""

    def send_text(self, text: str) -> None:
        """Queue one message (a text frame) for the peer."""

    def close(self, code: int, reason: str) -> None:
        """Close the conversation with a WebSocket close code and reason."""


@dataclass(frozen=True)
class Identity:
    """An authenticated principal."""

    user: str
    full_access: bool
    method: str  # "password", "token", "key", "peer-uid"
    key_checksum: Optional[str] = None  # md5 checksum of the key used (key logins)

    @property
    def level(self) -> str:
        return "full" if self.full_access else "limited"


@dataclass
class Challenge:
    text: str
    expires: float
    md5_key: Optional[str] = None  # set by the bridged md5_key variant of stage 1


_ids = itertools.count(1)


class Session:
    """One client conversation, independent of its transport."""

    def __init__(self, kind: str, peer: str, channel: Channel, clock: IReactorTime, *, key_auth_only: bool = False):
        self.id = f"{kind}-{next(_ids)}"
        self.kind = kind  # "wss", "unix", "rest", "bridge"
        self.peer = peer  # address (or "uid:N", "bridge:<link>/<id>") for logs and the blacklist
        self.channel = channel
        self.clock = clock
        self.key_auth_only = key_auth_only  # bridged clients may only use auth_ssl
        self.identity: Optional[Identity] = None
        self.token: Optional[str] = None  # None with a token-less identity (peer uid)
        self.challenge: Optional[Challenge] = None
        self.subscriptions: Set[str] = set()
        self.closed = False
        self.close_reason = ""
        self._close_callbacks: List[Callable[["Session"], None]] = []
        self._auth_deadline: Optional[IDelayedCall] = None
        self._idle: Optional[IDelayedCall] = None
        self._idle_timeout = 0.0
        self._last_activity = 0.0
        self.auth_in_flight = None  # Deferred while an auth request is being checked
        self.parked_requests = 0  # requests waiting for auth_in_flight, and their size
        self.parked_bytes = 0
        self.attributes: Dict[str, Any] = {}  # per-transport extras (e.g. bridge base64 mode)

    def __repr__(self) -> str:
        who = self.identity.user if self.identity else "-"
        return f"<Session {self.id} {self.peer} user={who}>"

    # --- sending --------------------------------------------------------------------
    def send(self, message: Dict[str, Any]) -> None:
        if self.closed:
            return
        self.channel.send_text(encode(message))

    def send_text(self, text: str) -> None:
        if not self.closed:
            self.channel.send_text(text)

    def send_event(self, name: str, args: Any) -> None:
        self.send(event(name, args))

    def close(self, reason: str, code: int = CLOSE_NORMAL) -> None:
        if self.closed:
            return
        log.info("closing session {session}: {reason}", session=self.id, reason=reason)
        self.close_reason = reason
        self.channel.close(code, reason)

    # --- authentication state -------------------------------------------------------
    def login(self, identity: Identity, token: Optional[str]) -> None:
        self.identity = identity
        self.token = token
        self.challenge = None
        if self._auth_deadline is not None and self._auth_deadline.active():
            self._auth_deadline.cancel()
        self._auth_deadline = None

    def logout(self) -> None:
        self.identity = None
        self.token = None

    # --- timers -----------------------------------------------------------------------
    def start_timers(self, auth_timeout: float, idle_timeout: float) -> None:
        """Close if not authenticated within *auth_timeout*, or silent for *idle_timeout*."""
        if self.identity is None and auth_timeout > 0:
            self._auth_deadline = self.clock.callLater(auth_timeout, self._auth_expired, auth_timeout)
        if idle_timeout > 0:
            self._idle_timeout = idle_timeout
            self._last_activity = self.clock.seconds()
            self._idle = self.clock.callLater(idle_timeout, self._idle_expired)

    def touch(self) -> None:
        """A message arrived: the idle timer counts from now (checked when it fires)."""
        self._last_activity = self.clock.seconds()

    def _auth_expired(self, seconds: float) -> None:
        self._auth_deadline = None
        if self.identity is None:
            self.close(f"not authenticated within {seconds:g} s", CLOSE_POLICY)

    def _idle_expired(self) -> None:
        left = self._last_activity + self._idle_timeout - self.clock.seconds()
        if left > 0:
            self._idle = self.clock.callLater(left, self._idle_expired)
            return
        self._idle = None
        self.close(f"idle for {self._idle_timeout:g} s", CLOSE_GOING_AWAY)

    # --- end of life ----------------------------------------------------------------
    def on_close(self, callback: Callable[["Session"], None]) -> None:
        self._close_callbacks.append(callback)

    def lost(self) -> None:
        """The transport is gone: stop timers and tell everyone who asked."""
        if self.closed:
            return
        self.closed = True
        for timer in (self._auth_deadline, self._idle):
            if timer is not None and timer.active():
                timer.cancel()
        self._auth_deadline = self._idle = None
        callbacks, self._close_callbacks = self._close_callbacks, []
        for callback in callbacks:
            try:
                callback(self)
            except Exception:
                log.failure("session close callback failed for {session}", session=self.id)


class SessionRegistry:
    """Every live session, for broadcasts, revocation and connection limits."""

    def __init__(self) -> None:
        self._sessions: Dict[str, Session] = {}

    def add(self, session: Session) -> None:
        self._sessions[session.id] = session
        session.on_close(lambda s: self._sessions.pop(s.id, None))

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self):
        return iter(list(self._sessions.values()))

    def close_where(self, predicate: Callable[[Session], bool], reason: str, code: int = CLOSE_POLICY) -> int:
        victims = [s for s in self._sessions.values() if predicate(s)]
        for session in victims:
            session.close(reason, code)
        return len(victims)
