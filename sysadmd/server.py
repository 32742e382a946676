"""The managed machine's server state: one object that owns the domain services.

It never imports autobahn or twisted.web.  Transports ask it for sessions
(:meth:`Server.open_session`) and feed their text to ``server.api``; subsystems
(dispatcher, events, bridge links) attach to it in :mod:`sysadmd.tap`.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Dict, Optional

from twisted.application import service
import dataclasses

from twisted.internet import defer, task
from twisted.logger import Logger

from sysadmd.api import Api
from sysadmd.runtime.blacklist import Blacklist, normalize_address
from sysadmd.auth.passwords import FairCheckQueue, PamPasswordChecker, credential_problem
from sysadmd.auth.rights import Rights
from sysadmd.auth.tokens import TokenStore
from sysadmd.config import Config
from sysadmd.wire.envelope import ApiError
from sysadmd.events.hub import EventHub
from sysadmd.logstore import LogStore
from sysadmd.rpc import basic, login
from sysadmd.session import Channel, Identity, Session, SessionRegistry
from sysadmd.runtime.shutdown import wait_until
from sysadmd.wire.close import CLOSE_GOING_AWAY, CLOSE_POLICY
from sysadmd.untrusted import shown

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
        self.tokens = TokenStore(reactor, config.token_ttl, config.token_max_lifetime)
        self.rights = Rights(config.full_access_groups, config.limited_access_groups,
                             clock=reactor, cache_seconds=config.rights_cache_seconds)
        self.passwords = passwords or PamPasswordChecker(reactor, config.pam_service)
        self.sessions = SessionRegistry()
        self.logs = LogStore(db, reactor)
        self.blacklist = Blacklist(
            db, reactor,
            limit=config.blacklist_auth_fail_limit,
            reset_minutes=config.blacklist_auth_fail_reset_minutes,
            block_minutes=config.blacklist_block_minutes,
            exempt_loopback=config.blacklist_exempt_loopback,
            on_block=self._blocked,
        )
        self.password_checks = FairCheckQueue(config.password_check_workers, config.password_checks_per_address,
                                              budget=self.blacklist.remaining)
        self.api = Api(self.tokens, pending_limits=(config.auth_pending_max_requests, config.auth_pending_max_bytes))
        self.api.login_gate = self._login_gate
        self.api.recheck = self.recheck_rights
        self.api.on_logout = self.end_subscriptions
        self._sweep: Optional[task.LoopingCall] = None
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
    @staticmethod
    def failure_key(session: Session) -> str:
        """What failed logins of *session* count against: its address, or for a client
        seen through a bridge link ``bridge:<link>/<client id>`` (the link's address is
        the bridge's, shared by all its clients)."""
        if session.kind == "bridge":
            return shown(session.peer, 200)
        return normalize_address(session.peer)

    def _login_gate(self, session: Session) -> Optional[str]:
        """:meth:`login_refusal`, logged (the API asks it before every ``auth*`` request)."""
        refusal = self.login_refusal(session)
        if refusal is not None:
            self._log_refusal(session, "", "any", refusal)
        return refusal

    def login_refusal(self, session: Session) -> Optional[str]:
        """``None`` if *session* may try to log in now, else why not (its address is blocked)."""
        if session.kind == "unix":
            return None
        left = self.blacklist.blocked_for(self.failure_key(session))
        if left > 0:
            return f"address blocked after repeated failed logins; try again in {int(left // 60) + 1} min"
        return None

    def _blocked(self, key: str) -> None:
        """*key* just got blocked: drop its queued password checks, close its connections."""
        reason = f"address blocked after repeated failed logins (BLACKLIST_AUTH_FAIL_LIMIT={self.blacklist.limit})"
        dropped = self.password_checks.drop(key, reason)
        victims = [s for s in self.sessions if s.kind in ("wss", "bridge") and self.failure_key(s) == key]
        self.logs.hostinfo(f"Blacklisting IP Temporarily: {key} (closing {len(victims)} connections, "
                           f"dropping {dropped} queued password checks)")
        for session in victims:
            # After the current reply (the failure that caused the block) is sent.
            self.clock.callLater(0, session.close, reason, CLOSE_POLICY)

    @defer.inlineCallbacks
    def password_identity(self, session: Session, user: str, password: str):
        """Check a password with PAM (off the reactor thread, fairly queued); fires with
        the Identity, or fails with an ApiError (401, or 429 when the address has too many
        checks outstanding) after counting the failure."""
        if not self.config.allow_password_auth:
            raise ApiError("401", "password logins are disabled on this server (ALLOW_PASSWORD_AUTH=false)")
        problem = credential_problem(user, password)
        if problem is not None:
            # Nothing of the name reaches a lookup; the log and the blacklist see a bounded form.
            self.login_failed(session, user if isinstance(user, str) else "", "password", f"implausible credentials: {problem}")
            raise ApiError("401", f"login refused: {problem}")
        refusal = self.login_refusal(session)
        if refusal is not None:
            raise ApiError("401", refusal)
        ok = yield self.password_checks.submit(self.failure_key(session), self.passwords.check, user, password)
        full = self.rights.for_user(user) if ok else None
        if session.closed:
            raise ApiError("401", "the connection closed while its password was being checked")
        refusal = self.login_refusal(session)
        if refusal is not None:
            # Blocked by other guesses while this one was checked: even a right password loses.
            self._log_refusal(session, user, "password", refusal)
            raise ApiError("401", refusal)
        if not ok:
            self.login_failed(session, user, "password", "wrong user name or password")
            raise ApiError("401", "user name or password not accepted")
        if full is None:
            # Only someone who gave the right password learns that the account lacks rights
            # (a wrong password gets the answer above whatever the groups).  Still a 401, as
            # upstream answers, and still counted by the blacklist.
            self.login_failed(session, user, "password", "no access rights (not root and in no access group)")
            raise ApiError("401", self.no_rights_message(user))
        return Identity(user, full, "password")

    def no_rights_message(self, user: str) -> str:
        """What a user with the right password but no rights is told (never before the check)."""
        full = ", ".join(sorted(self.rights.full_groups)) or "none"
        limited = ", ".join(sorted(self.rights.limited_groups)) or "none"
        return (f"user {shown(user, 64)} has no access rights on this host (not root and not in "
                f"FULL_ACCESS_GROUPS ({full}) or LIMITED_ACCESS_GROUPS ({limited}))")

    def _log_refusal(self, session: Session, user: str, method: str, refusal: str) -> None:
        """Log a login refused because the address is blocked (not counted again)."""
        self.logs.hostinfo(f"User Login Attempt: {shown(user, 64) if user else '-'}   Success: false   "
                           f"IP: {shown(session.peer)}   Method: {method}   Reason: blocked")
        log.info("login of {user} from {peer} refused: {why}", user=shown(user, 64), peer=shown(session.peer),
                 why=refusal)

    def recheck_rights(self, session: Session, identity: Identity) -> Identity:
        """*identity* with its user's current rights (cached RIGHTS_CACHE_SECONDS); a user
        who lost every right is logged out everywhere (401).

        Only token logins are looked at: tokens are what outlive a change of groups.
        Token-less identities were decided for this very request (REST Basic) or by the
        local socket's peer uid for that connection."""
        if session.token is None or identity.method == "peer-uid":
            return identity
        full = self.rights.current(identity.user)
        if full is None:
            revoked = self.tokens.revoke_where(lambda i: i.user == identity.user)
            self.logs.hostinfo(f"User Rights Lost: {shown(identity.user, 64)}   IP: {shown(session.peer)}   "
                               f"({revoked} tokens revoked)")
            for other in self.sessions:
                if other.identity is not None and other.identity.user == identity.user and other.identity.method != "peer-uid":
                    self.logout(other)
            raise ApiError("401", f"user {shown(identity.user, 64)} no longer has access rights on this host; "
                                  "logged out")
        if full != identity.full_access:
            identity = dataclasses.replace(identity, full_access=full)
            session.identity = identity
            self.tokens.replace_identity(session.token, identity)
        return identity

    def logout(self, session: Session) -> None:
        """End *session*'s login: its token, its identity and its event subscriptions."""
        self.tokens.revoke(session.token)
        session.logout()
        self.end_subscriptions(session)

    def end_subscriptions(self, session: Session) -> None:
        for name in list(session.subscriptions):
            self.events.unsubscribe(session, name)

    def sweep_logins(self) -> int:
        """Log out sessions whose token expired or whose user lost every right, so their
        event subscriptions end without waiting for their next request; returns how many."""
        ended = 0
        for session in self.sessions:
            identity = session.identity
            if identity is None or session.closed:
                continue
            if session.token is not None and not self.tokens.alive(session.token):
                session.logout()
                self.end_subscriptions(session)
                ended += 1
            elif session.token is not None and identity.method != "peer-uid" \
                    and self.rights.current(identity.user) is None:
                self.logout(session)
                ended += 1
        return ended

    def login_succeeded(self, session: Session, identity: Identity) -> list:
        token = self.tokens.issue(identity)
        session.login(identity, token)
        self.blacklist.success(self.failure_key(session))
        self.logs.hostinfo(
            f"User Login Attempt: {shown(identity.user, 64)}   Success: true   IP: {shown(session.peer)}   "
            f"Method: {identity.method}   Access: {identity.level}"
        )
        return [token, int(self.tokens.ttl)]

    def login_failed(self, session: Session, user: str, method: str, reason: str = "") -> None:
        """Log a failed login with *reason* (our own words; untrusted parts already shown())
        and count it against the session's address."""
        suffix = f"   Reason: {reason}" if reason else ""
        self.logs.hostinfo(f"User Login Attempt: {shown(user, 64) if user else '-'}   Success: false   "
                           f"IP: {shown(session.peer)}   Method: {method}{suffix}")
        log.info("login failed: user {user} from {peer} ({method}): {reason}", user=shown(user, 64) if user else "-",
                 peer=shown(session.peer), method=method, reason=reason or "refused")
        if session.kind == "unix":
            return  # the local socket already knows who is there
        key = self.failure_key(session)
        if self.blacklist.failure(key):
            log.warn("blocked {key} after repeated failed logins", key=key)

    def startService(self):
        super().startService()
        interval = max(1.0, self.config.rights_cache_seconds)
        self._sweep = task.LoopingCall(self._guarded_sweep)
        self._sweep.clock = self.clock
        self._sweep.start(interval, now=False)

    def _guarded_sweep(self) -> None:
        try:
            self.sweep_logins()
        except Exception:
            log.failure("checking live logins failed")

    def stopService(self):
        if self._sweep is not None and self._sweep.running:
            self._sweep.stop()
        self._sweep = None
        d = super().stopService()
        for session in self.sessions:
            session.close("server shutting down", CLOSE_GOING_AWAY)
        self.logs.flush()
        # Give clients a moment to answer the close frames (else they see 1006).
        waited = wait_until(self.clock, lambda: not any(s.kind in ("wss", "unix") for s in self.sessions), SHUTDOWN_GRACE)
        return defer.gatherResults([defer.maybeDeferred(lambda: d), waited])
