"""The request pipeline: envelope in, handler called for a session, reply out.

Every transport calls :meth:`Api.handle_text` (or :meth:`Api.handle` with a parsed
request, as REST does).  Handlers are plain callables ``handler(session, request)``
returning the reply ``args`` (or a Deferred of them), raising :class:`ApiError` for a
failure, or returning :data:`NO_REPLY`.  They are registered per ``(namespace, name)``
by each subsystem's ``route(api, …)`` function (called from :mod:`sysadmd.assembly`);
the table also yields ``rpc/query``.

Ordering: ``auth*`` requests of a session are answered in arrival order, and requests
that arrive while a login is being checked wait for it (a client may send ``auth`` and
its first request back to back).  Other requests may complete out of order.  What
may wait behind a login is bounded (``pending_limits``: requests and bytes); past it
the connection closes with 1008.

Hooks set by the server (all optional):

* ``login_gate(session) -> reason or None``: asked before every ``auth*`` request but
  ``auth_clear``; a reason refuses it with 401 and closes the connection (1008): an
  address blocked while its connection was open gets no further try.
* ``recheck(session, identity) -> identity``: asked before every authenticated call;
  returns the identity with the user's current rights or raises :class:`ApiError`
  (401 after logging the session out when the user lost every right).
* ``on_logout(session)``: a session's login ended because its token expired.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

from twisted.internet import defer
from twisted.logger import Logger

from sysadmd.wire import envelope
from sysadmd.wire.envelope import ApiError, EnvelopeError, Request
from sysadmd.session import Identity, Session
from sysadmd.wire.close import CLOSE_POLICY

log = Logger()

NO_REPLY = object()

Handler = Callable[[Session, Request], Any]


@dataclass
class Route:
    namespace: str
    name: str
    handler: Handler
    public: bool  # callable without authentication
    limited: str  # rpc/query label for limited users: "read", "read/write" (full users: read/write)
    listed: bool  # shown in rpc/query


class Api:
    def __init__(self, tokens: Any, *, pending_limits: Tuple[int, int] = (32, 1 << 20)) -> None:
        self.tokens = tokens
        self.routes: Dict[Tuple[str, str], Route] = {}
        self._availability: Dict[bool, Dict[str, str]] = {}
        self.pending_limits = pending_limits  # (requests, bytes) that may wait behind a login
        self.login_gate: Optional[Callable[[Session], Optional[str]]] = None
        self.recheck: Optional[Callable[[Session, Identity], Identity]] = None
        self.on_logout: Optional[Callable[[Session], None]] = None

    # --- registration ---------------------------------------------------------------
    def add(self, namespace: str, name: str, handler: Handler, *, public: bool = False,
            limited: str = "read", listed: bool = True) -> None:
        key = (namespace.lower(), name.lower())
        if key in self.routes:
            raise ValueError(f"route {namespace}/{name} registered twice")
        self.routes[key] = Route(namespace, name, handler, public, limited, listed)
        self._availability.clear()

    def availability(self, identity: Identity) -> Dict[str, str]:
        """The ``rpc/query`` map: every listed API and this identity's access to it."""
        full = identity.full_access
        cached = self._availability.get(full)
        if cached is None:
            cached = self._availability[full] = {
                f"{r.namespace}/{r.name}": ("read/write" if full else r.limited)
                for r in self.routes.values()
                if r.listed
            }
        return dict(cached)

    # --- identity ---------------------------------------------------------------------
    def identity(self, session: Session) -> Optional[Identity]:
        """The session's identity if still valid (token lookups slide the TTL)."""
        if session.identity is None:
            return None
        if session.token is None:
            return session.identity
        if self.tokens.check(session.token) is None:
            session.logout()
            if self.on_logout is not None:
                self.on_logout(session)
            return None
        return session.identity

    # --- handling ---------------------------------------------------------------------
    def handle_text(self, session: Session, text: str) -> Optional[defer.Deferred]:
        """Parse *text*, run it for *session*, send the reply. Never raises.

        Returns a Deferred only when the reply is not ready yet (tests may wait on it).
        """
        session.touch()
        try:
            request = envelope.parse(text)
        except EnvelopeError as e:
            session.send(envelope.error(e.code, e.detail, e.request_id))
            return None
        return self.handle_request(session, request, len(text))

    def handle_request(self, session: Session, request: Request, size: int) -> Optional[defer.Deferred]:
        """Like :meth:`handle_text` for a request already parsed from *size* characters."""
        pending = session.auth_in_flight
        if pending is not None:
            max_requests, max_bytes = self.pending_limits
            if session.parked_requests + 1 > max_requests or session.parked_bytes + size > max_bytes:
                session.close(f"more than {max_requests} requests or {max_bytes} bytes sent while the login was "
                              "being checked (AUTH_PENDING_MAX_REQUESTS/AUTH_PENDING_MAX_BYTES); wait for its reply",
                              CLOSE_POLICY)
                return None
            session.parked_requests += 1
            session.parked_bytes += size
            d = defer.Deferred()

            def resume(_):
                session.parked_requests -= 1
                session.parked_bytes -= size
                if session.closed:
                    d.callback(None)
                    return
                later = self._run_and_send(session, request)
                if isinstance(later, defer.Deferred):
                    later.chainDeferred(d)
                else:
                    d.callback(None)

            pending.addBoth(resume)
            return d
        return self._run_and_send(session, request)

    def _run_and_send(self, session: Session, request: Request) -> Optional[defer.Deferred]:
        out = self._execute(session, request)
        if not isinstance(out, defer.Deferred):
            if out is not None:
                session.send(out)
            return None
        gate: Optional[defer.Deferred] = None
        if request.name.lower().startswith("auth"):
            # Hold this session's later requests until the login is decided.
            gate = defer.Deferred()
            session.auth_in_flight = gate

        def send(message):
            if message is not None:
                session.send(message)

        out.addCallback(send)
        out.addErrback(lambda f: log.failure("sending a reply to {session} failed", f, session=session.id))
        if gate is not None:
            # Released only after the login's reply is sent, so replies keep arrival order.
            def release(result, gate=gate):
                if session.auth_in_flight is gate:
                    session.auth_in_flight = None
                gate.callback(None)
                return result

            out.addBoth(release)
        return out

    def handle(self, session: Session, request: Request) -> defer.Deferred:
        """Run *request*; fires with the reply message (or ``None`` for no reply)."""
        out = self._execute(session, request)
        return out if isinstance(out, defer.Deferred) else defer.succeed(out)

    def _execute(self, session: Session, request: Request) -> Any:
        """The reply message, ``None`` (no reply), or a Deferred of either."""
        try:
            route = self._route(session, request)
            if route.public and self.login_gate is not None and route.name.lower().startswith("auth") \
                    and route.name.lower() != "auth_clear":
                refusal = self.login_gate(session)
                if refusal is not None:
                    session.logout()
                    if session.kind != "rest":  # a REST request has no connection to close
                        reactor_later = getattr(session.clock, "callLater", None)
                        if reactor_later is not None:
                            reactor_later(0, session.close, refusal, CLOSE_POLICY)  # after the reply
                    raise ApiError("401", refusal)
            result = route.handler(session, request)
        except ApiError as e:
            return envelope.error(e.code, e.detail, request.id)
        except Exception:
            log.failure("{ns}/{name} failed for {session}", ns=request.namespace, name=request.name, session=session.id)
            return envelope.error("500", "internal error while handling the request; the server log has the details", request.id)
        if isinstance(result, defer.Deferred):
            return result.addCallbacks(lambda r: self._reply(request, r), lambda f: self._failed(session, request, f))
        return self._reply(request, result)

    @staticmethod
    def _reply(request: Request, result: Any) -> Optional[Dict[str, Any]]:
        return None if result is NO_REPLY else envelope.reply(request, result)

    @staticmethod
    def _failed(session: Session, request: Request, failure: Any) -> Dict[str, Any]:
        if failure.check(ApiError):
            return envelope.error(failure.value.code, failure.value.detail, request.id)
        log.failure("{ns}/{name} failed for {session}", failure, ns=request.namespace, name=request.name, session=session.id)
        return envelope.error("500", "internal error while handling the request; the server log has the details", request.id)

    def _route(self, session: Session, request: Request) -> Route:
        route = self.routes.get(request.route)
        if route is not None and route.public:
            return route
        identity = self.identity(session)
        if identity is None:
            raise ApiError("401", "authenticate first (rpc/auth, rpc/auth_token or rpc/auth_ssl)")
        if self.recheck is not None:
            self.recheck(session, identity)
        if route is None:
            raise ApiError("404", f"no API named {request.namespace}/{request.name} on this server (see rpc/query)")
        return route


def require_full_access(session: Session, what: str) -> Identity:
    identity = session.identity
    if identity is None or not identity.full_access:
        raise ApiError("403", f"{what} needs full access; user {identity.user if identity else '?'} has limited access")
    return identity
