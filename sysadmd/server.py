"""The managed machine's server state: sessions, logins and the stores they use.

It never imports autobahn or twisted.web, and it builds nothing: :mod:`sysadmd.assembly`
constructs its collaborators (token store, rights, blacklist, log store, event hub, API
router…), passes them in, registers the routes and attaches the subsystems (dispatcher,
event producers, key logins, bridge links) as child services, so they stop with it.
Transports ask it for sessions (:meth:`Server.open_session`) and feed their text to
``server.api``; before opening one they ask :meth:`Server.connection_allowed`, which
answers with a :class:`Refusal` value or ``None``.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from typing import Any, Optional

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from sysadmd.api import Api
from sysadmd.runtime.blacklist import Blacklist, normalize_address
from sysadmd.auth.passwords import FairCheckQueue, credential_problem
from sysadmd.auth.rights import Rights
from sysadmd.auth.tokens import TokenStore
from sysadmd.config import Config
from sysadmd.wire.envelope import ApiError
from sysadmd.events.hub import EventHub
from sysadmd.logstore import LogStore
from sysadmd.session import Channel, Identity, Session, SessionRegistry
from sysadmd.wire.close import CLOSE_GOING_AWAY, CLOSE_POLICY, CLOSE_TRY_AGAIN
from sysadmd.runtime.shutdown import wait_until
from sysadmd.untrusted import shown

log = Logger()

SHUTDOWN_GRACE = 2.0  # seconds clients get to answer our close frames at shutdown


@dataclasses.dataclass(frozen=True)
class Refusal:
    """Why a new connection is turned away, in the terms of each transport."""

    close_code: int  # WebSocket close code, sent right after the handshake
    http_status: str  # REST error code ("403", "503")
    reason: str  # our own sentence, for the peer and the log
    retry_after: Optional[int] = None  # seconds, for REST's Retry-After (a busy server)


class Server(service.MultiService):
    """Application state; a MultiService so subsystems with timers stop with it.

    Every collaborator is passed in (see :func:`sysadmd.assembly.build_server`);
    the blacklist's ``on_block`` and the API's hooks point back at :meth:`blocked`,
    :meth:`login_gate`, :meth:`recheck_rights` and :meth:`end_subscriptions`.
    """

    def __init__(self, config: Config, db: sqlite3.Connection, reactor: Any, *, tokens: TokenStore, rights: Rights,
                 passwords: Any, sessions: SessionRegistry, logs: LogStore, blacklist: Blacklist,
                 password_checks: FairCheckQueue, api: Api, events: EventHub):
        super().__init__()
        self.config = config
        self.state_dir = config.state_dir
        self.db = db
        self.reactor = reactor
        self.clock = reactor
        self.tokens = tokens
        self.rights = rights
        self.passwords = passwords
        self.sessions = sessions
        self.logs = logs
        self.blacklist = blacklist
        self.password_checks = password_checks
        self.api = api
        self.events = events
        self.bridge_identity: Optional[Any] = None  # the bridge key, loaded on first use (auth/bound.py)
        self._sweep: Optional[task.LoopingCall] = None

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

    def connection_allowed(self, peer: str) -> Optional[Refusal]:
        """``None`` if a new connection from *peer* may proceed, else the :class:`Refusal`."""
        return self.address_refusal(peer) or self.capacity_refusal()

    def address_refusal(self, peer: str) -> Optional[Refusal]:
        """A :class:`Refusal` (1008 / 403) while *peer*'s address is blocked, else ``None``."""
        left = self.blacklist.blocked_for(peer)
        if left > 0:
            return Refusal(CLOSE_POLICY, "403", f"address blocked after repeated failed logins; "
                                                f"try again in {int(left // 60) + 1} min")
        return None

    def capacity_refusal(self) -> Optional[Refusal]:
        """A :class:`Refusal` (1013 / 503) while ``MAX_CONNECTIONS`` sessions are open, else ``None``."""
        if len(self.sessions) >= self.config.max_connections:
            return Refusal(CLOSE_TRY_AGAIN, "503", f"too many connections (MAX_CONNECTIONS={self.config.max_connections})",
                           retry_after=5)
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

    def login_gate(self, session: Session) -> Optional[str]:
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

    def blocked(self, key: str) -> None:
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
