"""The clients seen through one bridge link: one :class:`Session` per client ID.

A relay frame from the bridge is ``<clientID>\\n<body>``.  Each client ID gets its own
session (created when the bridge announces it in ``available_connections``, or lazily
on its first frame, since the bridge may relay before it announces), limited to key
logins (``rpc/auth_ssl``).  Bodies run through the same request pipeline as any other
transport; replies and events go back as ``<clientID>\\n<body>``.

Payload modes (docs/protocol.md §8.3): a session starts in plain JSON.  When a
client logs in with the ``md5_key`` variant of ``auth_ssl``, the stage-1 reply is sent
plain and from then on bodies in both directions are ``base64(JSON)``.  A body that
begins with ``{`` can never be base64, so it is read as plain JSON in any mode and puts
the session back into plain mode: the client has started over without its key.

Our client adds ``client_nonce`` to that stage 1; the reply then also carries the
server's bridge key and a proof signed with it, and only a login signature bound to that
key is accepted afterwards (:mod:`sysadmd.wire.bound`).  Upstream clients see upstream's
reply.

End-to-end sessions (docs/protocol.md §8.6; :mod:`sysadmd.wire.e2e`): a plain ``rpc/e2e``
hello (the named key must be registered) is answered with the server's signed ephemeral
key; from then on every payload both ways is a ``"!"`` frame.  The first encrypted frame
must be the client's ``finish``; it is checked like a key login (the key checker's threads
and limits, the blacklist, rights) and logs the session in.  An encrypted frame that does
not open ends the session (a plain error, then the session closes); a plain frame inside
an encrypted session is refused and drops the session's encryption and login, unless it
is a new hello, which starts over.

Bodies named ``response`` or ``error`` are replies, not requests, and are dropped: in
particular a client can never pass for the bridge answering our own ``auth_ssl``
(upstream signed whatever ``test_string`` a bridged client sent it).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Callable, Dict, List, Optional

from twisted.internet import defer, threads
from twisted.logger import Logger

from sysadmd.wire import envelope
from sysadmd.runtime import crypto
from sysadmd.auth import boundlogin
from sysadmd.auth.keys import CheckerBusy, CheckResult
from sysadmd.wire import bound, e2e
from sysadmd.session import Identity
from sysadmd.wire.envelope import EnvelopeError, Request
from sysadmd.session import Session
from sysadmd.wire.close import CLOSE_GOING_AWAY, CLOSE_POLICY

log = Logger()

BASE64 = "base64"  # Session.attributes key: bodies are base64(JSON)
E2E = "e2e"  # Session.attributes key: the session's E2EState (end-to-end encrypted)
E2E_HELLO = "e2e_hello"  # Session.attributes key: the ServerHandshake whose accept is being signed
E2E_ROUTE = ("rpc", "e2e")


class E2EState:
    """One bridged session's end-to-end encryption: its handshake, frame keys and stage
    (``finish`` awaited, ``checking`` it, ``open`` once logged in by it)."""

    def __init__(self, handshake: e2e.ServerHandshake, channel: e2e.Session, key: Any):
        self.handshake = handshake
        self.channel = channel
        self.key = key  # the RegisteredKey the hello named
        self.stage = "finish"


def _request_id(body: str) -> str:
    """The id of a plain request, for a refusal that must not leave its sender waiting."""
    try:
        return envelope.parse(body).id if body.startswith("{") else ""
    except EnvelopeError:
        return ""


def e2e_error(code: str, detail: str, request_id: str = "") -> Dict[str, Any]:
    """An error about the end-to-end session itself; ``"e2e": 1`` tells our client that the
    server knows ``rpc/e2e`` (an upstream server's error for an unknown call has no such field)."""
    message = envelope.error(code, detail, request_id)
    message["args"]["e2e"] = e2e.VERSION
    return message


class BridgedChannel:
    """A bridged session's way out: frames on the link's shared socket."""

    def __init__(self, clients: "BridgedClients", client_id: str):
        self.clients = clients
        self.client_id = client_id
        self.session: Optional[Session] = None
        self.closing = False

    def send_text(self, text: str) -> None:
        if not self.closing and self.session is not None:
            self.clients.send(self.session, self.client_id, text)

    def close(self, code: int, reason: str) -> None:
        # Nothing to close on the bridge: the client ID just stops having a session
        # here; a later frame from it starts a new, unauthenticated one.
        if self.closing:
            return
        self.closing = True
        if self.session is not None:
            self.session.lost()


def is_md5_stage1(request: Request) -> bool:
    args = request.args
    return (request.route == ("rpc", "auth_ssl") and isinstance(args, dict)
            and "md5_key" in args and "encrypted_string" not in args)


class BridgedClients:
    """Sessions of one link by client ID; *send_frame(bytes, session_id)* writes a frame."""

    def __init__(self, server: Any, nickname: str, send_frame: Callable[[bytes, Optional[str]], bool],
                 key_login: Optional[Any] = None):
        self.server = server
        self.key_login = key_login  # the KeyLogin (keys, checker): end-to-end sessions log in through it
        self._signing = 0  # hello accepts being signed in the key checker's threads
        self.nickname = nickname
        self._send_frame = send_frame
        self._sessions: Dict[str, Session] = {}
        self._announced: List[str] = []  # the bridge's latest available_connections
        self.own_id: Optional[str] = None  # our connection ID on the bridge, when it tells us

    def ids(self) -> List[str]:
        """Client IDs the bridge announced or that have a session here."""
        return sorted(set(self._announced) | set(self._sessions))

    def get(self, client_id: str) -> Optional[Session]:
        return self._sessions.get(client_id)

    def __len__(self) -> int:
        return len(self._sessions)

    # --- the bridge's view of who is there ------------------------------------------
    def update(self, client_ids: List[str]) -> None:
        """``available_connections``: open sessions for new IDs, close the others."""
        self._announced = list(client_ids)
        wanted = set(client_ids)
        for client_id in list(self._sessions):
            if client_id not in wanted:
                self._sessions[client_id].close("the client left the bridge", CLOSE_GOING_AWAY)
        for client_id in client_ids:
            if client_id not in self._sessions:
                self.open(client_id)

    def open(self, client_id: str) -> Optional[Session]:
        server = self.server
        refusal = server.capacity_refusal()  # blocks are per client, at its login
        if refusal is not None:
            log.warn("bridge {nick}: not serving client {client}: {why}", nick=self.nickname, client=client_id,
                     why=refusal.reason)
            return None
        channel = BridgedChannel(self, client_id)
        peer = f"bridge:{self.nickname}/{client_id}"
        session = server.open_session("bridge", peer, channel, key_auth_only=True)
        channel.session = session
        self._sessions[client_id] = session
        session.on_close(lambda s: self._closed(client_id, s))
        server.logs.hostinfo(f"New Connection: {peer}")
        return session

    def _closed(self, client_id: str, session: Session) -> None:
        # A bridged client's token must not outlive its session: unlike a direct
        # client it cannot resume it elsewhere (auth_token is refused through bridges).
        self.server.tokens.revoke(session.token)
        if self._sessions.get(client_id) is session:
            del self._sessions[client_id]

    def close_all(self, reason: str) -> None:
        self._announced = []
        for session in list(self._sessions.values()):
            session.close(reason, CLOSE_GOING_AWAY)

    def overflow(self, session_id: str, waiting: int) -> None:
        for session in list(self._sessions.values()):
            if session.id == session_id:
                reason = f"client reads too slowly: {waiting} bytes pending on the bridge link"
                log.warn("bridge {nick}: closing {session}: {reason}", nick=self.nickname, session=session.id, reason=reason)
                session.close(reason, CLOSE_POLICY)

    # --- frames ---------------------------------------------------------------------
    def deliver(self, frame: str) -> None:
        """Handle one relay frame ``<clientID>\\n<body>`` from the bridge."""
        client_id, newline, body = frame.partition("\n")
        if not newline or not client_id:
            log.warn("bridge {nick}: dropped a frame without a client ID line ({size} bytes)",
                     nick=self.nickname, size=len(frame))
            return
        session = self._sessions.get(client_id) or self.open(client_id)
        if session is None:
            busy = envelope.encode(envelope.error("503", "the server has too many connections; try again later"))
            self._send_frame(f"{client_id}\n{busy}".encode("utf-8"), None)
            return
        self.handle(session, body)

    def handle(self, session: Session, body: str) -> None:
        state: Optional[E2EState] = session.attributes.get(E2E)
        if e2e.is_frame(body):
            self._encrypted(session, state, body)
            return
        if state is not None and state.stage == "finish":
            # A handshake nobody finished (the client gave up on it, or this client ID is a
            # relay that a new client now uses): nothing was logged in, so the frame is read
            # as if the hello had never come.
            self._drop_e2e(session)
            state = None
        if state is not None and not self._is_hello(body):
            # The client never sends plain frames once its login is encrypted: someone else
            # did.  Nothing of it runs, and nothing more runs as the client's login until it
            # starts over.
            session.touch()
            self._drop_e2e(session)
            session.send(e2e_error("400", "a plain frame inside an end-to-end encrypted session is refused; the "
                                          "session's encryption and login were dropped: start over with an rpc/e2e hello",
                                   _request_id(body)))
            return
        if body.startswith("{"):
            session.attributes[BASE64] = False
            text = body
        elif session.attributes.get(BASE64):
            try:
                text = base64.b64decode(body.strip(), validate=False).decode("utf-8")
            except (binascii.Error, ValueError):
                session.touch()
                session.send(envelope.error("400", "the body is neither JSON nor base64 of UTF-8 JSON"))
                return
        else:
            text = body
        session.touch()
        try:
            request = envelope.parse(text)
        except EnvelopeError as e:
            session.send(envelope.error(e.code, e.detail, e.request_id))
            return
        if request.name.lower() in ("response", "error"):
            log.debug("bridge {nick}: ignored a {name} from {session}", nick=self.nickname, name=request.name, session=session.id)
            return
        if is_md5_stage1(request):
            self._md5_stage1(session, request)
            return
        if request.route == E2E_ROUTE:
            self._e2e_hello(session, request)
            return
        self.server.api.handle_request(session, request, len(text))

    # --- end-to-end sessions ------------------------------------------------------------
    @staticmethod
    def _is_hello(body: str) -> bool:
        if not body.startswith("{") or '"e2e"' not in body:
            return False
        try:
            request = envelope.parse(body)
        except EnvelopeError:
            return False
        return request.route == E2E_ROUTE and isinstance(request.args, dict) and request.args.get("step") == "hello"

    def _drop_e2e(self, session: Session) -> None:
        """End *session*'s encryption and the login it brought (back to plain mode)."""
        session.attributes.pop(E2E_HELLO, None)
        if session.attributes.pop(E2E, None) is not None:
            self.server.logout(session)
            session.challenge = None

    def _end_session(self, session: Session, why: str) -> None:
        """A frame that breaks the encrypted stream: say so (plain) and close the session."""
        session.attributes.pop(E2E, None)
        log.warn("bridge {nick}: ending end-to-end session {session}: {why}", nick=self.nickname, session=session.id, why=why)
        session.send(e2e_error("400", f"end-to-end session ended: {why}"))
        session.close(f"end-to-end session ended: {why}", CLOSE_POLICY)

    def _e2e_hello(self, session: Session, request: Request) -> None:
        """``rpc/e2e`` step hello (plain): start an encrypted session, logged out until finish."""
        session.touch()
        self._drop_e2e(session)
        self.server.logout(session)
        session.attributes[BASE64] = False
        session.challenge = None
        if self.key_login is None:
            session.send(e2e_error("501", "end-to-end sessions are not available on this link", request.id))
            return
        refusal = self.server.login_gate(session)
        if refusal is not None:
            session.send(e2e_error("401", refusal, request.id))
            self.server.clock.callLater(0, session.close, refusal, CLOSE_POLICY)
            return
        args = request.args
        if not isinstance(args, dict) or args.get("step") != "hello":
            session.send(e2e_error("400", "step: a plain rpc/e2e must be the hello (the finish comes encrypted)", request.id))
            return
        md5 = args.get("key")
        if not isinstance(md5, str) or not crypto.is_md5_checksum(md5):
            session.send(e2e_error("400", "key: expected the md5 checksum of a registered key (24 base64 characters)",
                                   request.id))
            return
        key = self.key_login.keys.find_by_md5(md5)
        if key is None:
            detail = f"key: no key with checksum {md5} is registered on this server"
            self.server.login_failed(session, "", "key", detail)
            session.send(e2e_error("401", detail, request.id))
            return
        handshake = e2e.ServerHandshake(boundlogin.server_identity(self.server))
        checker = self.key_login.checker
        if self._signing >= checker.max_pending:
            session.send(e2e_error("503", "the server is busy with other logins; send the hello again in a few seconds",
                                   request.id))
            return
        # The accept is signed with the server's RSA key (milliseconds): in the key checker's
        # threads, as login signatures are checked, never on the reactor thread.
        session.attributes[E2E_HELLO] = handshake
        self._signing += 1
        d = threads.deferToThreadPool(checker.reactor, checker.pool, handshake.accept, args, self.own_id or "")

        def current() -> bool:
            if session.closed or session.attributes.get(E2E_HELLO) is not handshake:
                return False  # closed, or superseded by a later hello or plain frame
            del session.attributes[E2E_HELLO]
            return True

        def accepted(result: Any) -> None:
            if current():
                channel, reply = result
                session.send(envelope.reply(request, reply))  # plain: the client has no keys yet
                session.attributes[E2E] = E2EState(handshake, channel, key)

        def refused(failure: Any) -> None:
            failure.trap(e2e.E2EError)
            if current():
                session.send(e2e_error("400", str(failure.value), request.id))

        def done(result: Any) -> Any:
            self._signing -= 1
            return result

        d.addCallbacks(accepted, refused)
        d.addErrback(lambda f: log.failure("end-to-end hello of {session} failed", f, session=session.id))
        d.addBoth(done)

    def _encrypted(self, session: Session, state: Optional[E2EState], body: str) -> None:
        session.touch()
        if state is None:
            session.send(e2e_error("400", "an encrypted frame, but this session has no end-to-end keys: send an "
                                          "rpc/e2e hello first"))
            return
        try:
            text = state.channel.open(body).decode("utf-8")
        except e2e.E2EError as e:
            self._end_session(session, str(e))
            return
        except UnicodeDecodeError:
            self._end_session(session, "an encrypted frame that is not UTF-8 text")
            return
        if state.stage == "finish":
            self._e2e_finish(session, state, text)
            return
        try:
            request = envelope.parse(text)
        except EnvelopeError as e:
            session.send(envelope.error(e.code, e.detail, e.request_id))
            return
        if request.name.lower() in ("response", "error"):
            return
        if request.route == E2E_ROUTE:
            session.send(e2e_error("400", "rpc/e2e inside an encrypted session: start over with a plain hello", request.id))
            return
        self._run(session, request, text)

    def _run(self, session: Session, request: Request, text: str) -> None:
        """Run a decrypted request (already parsed as *request*) through the API pipeline."""
        self.server.api.handle_request(session, request, len(text))

    def _e2e_finish(self, session: Session, state: E2EState, text: str) -> None:
        """The first encrypted frame: the client's signature of the handshake, a key login."""
        try:
            request = envelope.parse(text)
        except EnvelopeError as e:
            self._end_session(session, f"the first encrypted frame must be the rpc/e2e finish ({e.detail})")
            return
        if request.route != E2E_ROUTE:
            self._end_session(session, f"the first encrypted frame must be the rpc/e2e finish, not "
                                       f"{request.namespace}/{request.name}"[:300])
            return
        key = state.key
        try:
            state.handshake.finish_signature(request.args)
        except e2e.E2EError as e:
            self._finish_failed(session, state, request, key.user, str(e))
            return
        refusal = self.server.login_gate(session)
        if refusal is not None:
            self._drop_e2e(session)
            session.send(e2e_error("401", refusal, request.id))
            self.server.clock.callLater(0, session.close, refusal, CLOSE_POLICY)
            return
        state.stage = "checking"
        gate: defer.Deferred = defer.Deferred()
        session.auth_in_flight = gate  # later requests wait for the login, as after auth_ssl
        handshake = state.handshake
        d = self.key_login.checker.find_signer([key], request.args["sig"], handshake.finish_matches, peer=session.peer)

        def checked(result: CheckResult) -> None:
            if session.closed or session.attributes.get(E2E) is not state:
                return
            if result.key is None:
                self._finish_failed(session, state, request, key.user,
                                    "the finish signature does not match the key the hello named")
                return
            current = self.key_login.keys.find_by_md5(key.md5)
            if current is None or current.user != key.user:
                self._finish_failed(session, state, request, key.user, "the key the hello named is no longer registered")
                return
            full = self.server.rights.for_user(key.user)
            if full is None:
                self._finish_failed(session, state, request, key.user, self.server.no_rights_message(key.user))
                return
            state.stage = "open"
            token = self.server.login_succeeded(session, Identity(key.user, full, "key", key_checksum=key.md5))
            session.send(envelope.reply(request, token))

        def busy(failure: Any) -> None:
            failure.trap(CheckerBusy)
            if session.attributes.get(E2E) is state:
                session.send(e2e_error("503", "the server is busy checking other key logins; start over in a few "
                                              "seconds", request.id))
                self._drop_e2e(session)

        def release(result: Any) -> Any:
            if session.auth_in_flight is gate:
                session.auth_in_flight = None
            gate.callback(None)
            return result

        d.addCallbacks(checked, busy)
        d.addErrback(lambda f: log.failure("end-to-end login of {session} failed", f, session=session.id))
        d.addBoth(release)

    def _finish_failed(self, session: Session, state: E2EState, request: Request, user: str, why: str) -> None:
        """A finish that does not log in: counted like a failed key login; the refusal goes
        out encrypted, then the session is back in plain mode (start over with a hello)."""
        self.server.login_failed(session, user, "key", f"end-to-end finish refused: {why}")
        session.send(e2e_error("401", why, request.id))
        self._drop_e2e(session)

    def _md5_stage1(self, session: Session, request: Request) -> Optional[defer.Deferred]:
        """Stage 1 of the md5_key login: reply plain, then switch to base64 on success.

        With ``client_nonce`` (our client), the reply also proves this server's identity
        (:mod:`sysadmd.wire.bound`) and the session then accepts only a bound stage 2.
        """
        nonce = request.args.get("client_nonce")
        if "client_nonce" in request.args and not bound.valid_nonce(nonce):
            session.touch()
            session.send(envelope.error("400", "client_nonce must be 64 lower-case hex digits (32 random bytes)",
                                        request.id))
            return None

        def run(_: Any = None) -> defer.Deferred:
            return self.server.api.handle(session, request)

        def reply(message: Optional[dict]) -> None:
            if message is None:
                return
            session.attributes[BASE64] = False
            if nonce is not None and message.get("name") == "response" and isinstance(message.get("args"), dict) \
                    and session.challenge is not None:
                own_id = self.own_id or ""
                session.attributes[boundlogin.BOUND_REQUIRED] = True
                session.attributes[boundlogin.SERVER_CONNECTION_ID] = own_id
                message["args"].update(bound.server_proof(boundlogin.server_identity(self.server), nonce,
                                                          session.challenge.text, request.args["md5_key"], own_id))
            session.send(message)
            if message.get("name") == "response":
                session.attributes[BASE64] = True

        pending = session.auth_in_flight
        d = run() if pending is None else pending.addBoth(run)
        d.addCallback(reply)
        d.addErrback(lambda f: log.failure("md5_key login for {session} failed", f, session=session.id))
        return d

    def send(self, session: Session, client_id: str, text: str) -> None:
        state: Optional[E2EState] = session.attributes.get(E2E)
        if state is not None:
            body = state.channel.seal(text.encode("utf-8"))
        elif session.attributes.get(BASE64):
            body = base64.b64encode(text.encode("utf-8")).decode("ascii")
        else:
            body = text
        self._send_frame(f"{client_id}\n{body}".encode("utf-8"), session.id)
