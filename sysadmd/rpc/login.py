"""``rpc/auth``, ``rpc/auth_token``, ``rpc/auth_clear``: logging a session in and out.

Replies on success are ``[token, ttl_seconds]`` (upstream always sent 0 as the second
element; Qt reads only the first).  Every ``auth*`` request first logs the session out,
as upstream does, so a failed re-login leaves it logged out and without event
subscriptions.  Failures are 401 and are counted by the blacklist; an address blocked
while its connection is open is refused at its next ``auth*`` and disconnected
(:meth:`sysadmd.server.Server.login_refusal`).
"""

from __future__ import annotations

from typing import Any, Optional, Protocol

from twisted.internet import defer

from sysadmd.api import NO_REPLY, Api
from sysadmd.runtime.blacklist import Blacklist
from sysadmd.auth.tokens import TokenStore
from sysadmd.wire.envelope import ApiError
from sysadmd.session import Identity, Session


class Logins(Protocol):
    """What the login routes use of the server state (:class:`sysadmd.server.Server`)."""

    tokens: TokenStore
    blacklist: Blacklist

    def logout(self, session: Session) -> None: ...
    def password_identity(self, session: Session, user: str, password: str) -> Any: ...
    def login_succeeded(self, session: Session, identity: Identity) -> list: ...
    def login_failed(self, session: Session, user: str, method: str, reason: str = "") -> None: ...
    def recheck_rights(self, session: Session, identity: Identity) -> Optional[Identity]: ...
    def failure_key(self, session: Session) -> str: ...


def route(api: Api, server: Logins) -> None:
    """Route ``rpc/auth``, ``rpc/auth_token`` and ``rpc/auth_clear`` on *api*."""

    def start(session: Session) -> None:
        # Logging out ends the session's event subscriptions too.
        server.logout(session)

    @defer.inlineCallbacks
    def auth(session: Session, request):
        start(session)
        if session.key_auth_only:
            raise ApiError("401", "only rpc/auth_ssl is accepted through a bridge")
        args = request.args
        if not isinstance(args, dict):
            raise ApiError("401", "args must be an object with 'username' and 'password'")
        user, password = args.get("username"), args.get("password")
        if not isinstance(user, str) or not user or not isinstance(password, str):
            raise ApiError("401", "args need 'username' (string) and 'password' (string)")
        # password_identity rejects implausible names and passwords before any lookup.
        identity = yield server.password_identity(session, user, password)
        return server.login_succeeded(session, identity)

    def auth_token(session: Session, request):
        start(session)
        if session.key_auth_only:
            raise ApiError("401", "only rpc/auth_ssl is accepted through a bridge")
        args = request.args
        token = args.get("token") if isinstance(args, dict) else None
        if not isinstance(token, str) or not token:
            raise ApiError("401", "args need 'token' (a non-empty string)")
        identity = server.tokens.check(token)
        if identity is None:
            server.login_failed(session, "", "token", "token unknown or expired")
            raise ApiError("401", "token unknown or expired")
        session.login(identity, token)
        # The token's rights as of now (a user may have left the access groups since).
        server.recheck_rights(session, identity)
        server.blacklist.success(server.failure_key(session))
        return [token, int(server.tokens.ttl)]

    def auth_clear(session: Session, request):
        start(session)
        return NO_REPLY

    api.add("rpc", "auth", auth, public=True, listed=False)
    api.add("rpc", "auth_token", auth_token, public=True, listed=False)
    api.add("rpc", "auth_clear", auth_clear, public=True, listed=False)
