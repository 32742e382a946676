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

Bodies named ``response`` or ``error`` are replies, not requests, and are dropped: in
particular a client can never pass for the bridge answering our own ``auth_ssl``
(upstream signed whatever ``test_string`` a bridged client sent it).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Callable, Dict, List, Optional

from twisted.internet import defer
from twisted.logger import Logger

from sysadmd.wire import envelope
from sysadmd.auth import boundlogin
from sysadmd.wire import bound
from sysadmd.wire.envelope import EnvelopeError, Request
from sysadmd.session import Session
from sysadmd.wire.close import CLOSE_GOING_AWAY, CLOSE_POLICY

log = Logger()

BASE64 = "base64"  # Session.attributes key: bodies are base64(JSON)


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

    def __init__(self, server: Any, nickname: str, send_frame: Callable[[bytes, Optional[str]], bool]):
        self.server = server
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
        self.server.api.handle_request(session, request, len(text))

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
        body = base64.b64encode(text.encode("utf-8")).decode("ascii") if session.attributes.get(BASE64) else text
        self._send_frame(f"{client_id}\n{body}".encode("utf-8"), session.id)
