"""The managed machine's server state: one object that owns the domain services.

It never imports autobahn or twisted.web.  Transports ask it for sessions
(:meth:`Server.open_session`) and feed their text to ``server.api``; subsystems
(dispatcher, events, bridge links) attach to it in :mod:`sysadmd.tap`.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Dict, Optional

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from sysadmd.api import Api
from sysadmd.auth.blacklist import Blacklist
from sysadmd.auth.passwords import PamPasswordChecker
from sysadmd.auth.rights import Rights
from sysadmd.auth.tokens import TokenStore
from sysadmd.config import Config
from sysadmd.envelope import ApiError
from sysadmd.events.hub import EventHub
from sysadmd.logstore import LogStore
from sysadmd.rpc import basic, login
from sysadmd.session import Channel, Identity, Session, SessionRegistry
from sysadmd.shutdown import wait_until

log = Logger()

SHUTDOWN_GRACE = 2.0  # seconds clients get to answer our close frames at shutdown


class Server(service.MultiService):
    """Application state; a MultiService so subsystems with timers stop with it."""

    def __init__(self, config: Config, db: sqlite3.Connection, reactor: Any, *, passwords: Optional[Any] = None):
        super().__init__()
        self.config = config
        self.state_dir = config.state_dir
        self.db = db
        self.reactor = reactor
        self.clock = reactor
        self.tokens = TokenStore(reactor, config.token_ttl)
        self.rights = Rights(config.full_access_groups, config.limited_access_groups)
        self.passwords = passwords or PamPasswordChecker(reactor, config.pam_service)
        self.sessions = SessionRegistry()
        self.logs = LogStore(db, reactor)
        self.blacklist = Blacklist(
            db, reactor,
            limit=config.blacklist_auth_fail_limit,
            reset_minutes=config.blacklist_auth_fail_reset_minutes,
            block_minutes=config.blacklist_block_minutes,
            exempt_loopback=config.blacklist_exempt_loopback,
            on_block=lambda addr: self.logs.hostinfo(f"Blacklisting IP Temporarily: {addr}"),
        )
        self.api = Api(self.tokens)
        self.events = EventHub(self.sessions, self.logs)
        # rpc/settings actions: name -> handler(session, args) -> reply args. Filled by the
        # modules that own each action (keys, bridge links); see sysadmd.rpc.settings.
        self.settings_actions: Dict[str, Any] = {}
        self.subsystems: Dict[str, Any] = {}  # name -> object, for handlers that need each other
        basic.install(self.api)
        login.install(self)

    # --- sessions -------------------------------------------------------------------
    def open_session(self, kind: str, peer: str, channel: Channel, *, identity: Optional[Identity] = None,
                     key_auth_only: bool = False, timers: bool = True) -> Session:
        session = Session(kind, peer, channel, self.clock, key_auth_only=key_auth_only)
        if identity is not None:
            session.login(identity, None)
        self.sessions.add(session)
        if timers:
            session.start_timers(self.config.auth_timeout, self.config.idle_timeout)
        session.on_close(self._session_closed)
        return session

    def _session_closed(self, session: Session) -> None:
        if session.kind in ("wss", "unix"):
            reason = f" ({session.close_reason})" if session.close_reason else ""
            self.logs.hostinfo(f"Connection Closing: {session.peer}{reason}")

    def connection_allowed(self, peer: str) -> Optional[str]:
        """``None`` if a new connection from *peer* may proceed, else the refusal reason."""
        left = self.blacklist.blocked_for(peer)
        if left > 0:
            return f"address blocked after repeated failed logins; try again in {int(left // 60) + 1} min"
        if len(self.sessions) >= self.config.max_connections:
            return f"too many connections (MAX_CONNECTIONS={self.config.max_connections})"
        return None

    # --- login bookkeeping (used by every auth method) ------------------------------
    @defer.inlineCallbacks
    def password_identity(self, session: Session, user: str, password: str):
        """Check a password with PAM (off the reactor thread); fires with the Identity,
        or fails with a 401 ApiError after counting the failure."""
        if not self.config.allow_password_auth:
            raise ApiError("401", "password logins are disabled on this server (ALLOW_PASSWORD_AUTH=false)")
        full = self.rights.for_user(user)
        ok = yield self.passwords.check(user, password)
        if not ok or full is None:
            # Users without rights are counted too (upstream did not), and told the same
            # thing as a wrong password so user names cannot be probed.
            self.login_failed(session, user, "password")
            raise ApiError("401", "user name or password not accepted")
        return Identity(user, full, "password")

    def login_succeeded(self, session: Session, identity: Identity) -> list:
        token = self.tokens.issue(identity)
        session.login(identity, token)
        self.blacklist.success(session.peer)
        self.logs.hostinfo(
            f"User Login Attempt: {identity.user}   Success: true   IP: {session.peer}   Method: {identity.method}   Access: {identity.level}"
        )
        return [token, int(self.tokens.ttl)]

    def login_failed(self, session: Session, user: str, method: str) -> None:
        self.logs.hostinfo(f"User Login Attempt: {user or '-'}   Success: false   IP: {session.peer}   Method: {method}")
        if session.kind == "bridge":
            return  # the peer address is the bridge's; blocking it would cut off everyone
        if self.blacklist.failure(session.peer):
            log.warn("blocked {peer} after repeated failed logins", peer=session.peer)

    def stopService(self):
        d = super().stopService()
        for session in self.sessions:
            session.close("server shutting down", 1001)
        self.logs.flush()
        # Give clients a moment to answer the close frames (else they see 1006).
        waited = wait_until(self.clock, lambda: not any(s.kind in ("wss", "unix") for s in self.sessions), SHUTDOWN_GRACE)
        return defer.gatherResults([defer.maybeDeferred(lambda: d), waited])
