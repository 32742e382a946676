"""WebSocket transport: one :class:`~sysadmd.session.Session` per connection.

Wire protocol (upstream-compatible):

* any URL path but ``/websocket`` (the seed's wire: :mod:`sysadmd.transports.seedws`),
  any ``Origin``, no subprotocol; TLS on the TCP listeners, plain over the local Unix
  socket;
* every inbound message, text or binary, is read as UTF-8 text holding one request
  envelope (:mod:`sysadmd.wire.envelope`); invalid UTF-8 or JSON gets a 400 reply, the
  connection stays open;
* every reply and event is one text frame; replies may come in any order (match ``id``);
* a message larger than ``MAX_MESSAGE_BYTES`` closes the connection with 1009, and so
  does one larger than ``MAX_UNAUTH_MESSAGE_BYTES`` before the connection has logged in
  (refused when its frame header declares the length: nothing of it is buffered);
* the opening handshake's reply carries ``Server: sysadm-server``, as upstream's does;
* a blocked address, or one over ``MAX_CONNECTIONS``, is closed right after the
  handshake with 1008 (blocked) or 1013 (busy) and a reason;
* a connection not authenticated within ``AUTH_TIMEOUT`` is closed with 1008, one silent
  for ``IDLE_TIMEOUT`` with 1001;
* a client that reads too slowly: while the socket's send buffer is full, messages wait
  in a queue; past ``MAX_SESSION_BUFFER_BYTES`` the connection is closed (1008) rather
  than growing the daemon's memory; and while the send buffer is full the connection is
  not read either, so replies and pongs cannot pile up (see :mod:`sysadmd.wire.wsbase`).
"""

from __future__ import annotations

import socket
import struct
from collections import deque
from typing import Any, Callable, Deque, Optional

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from sysadmd.wire import envelope
from sysadmd.session import Session
from sysadmd.wire.close import CLOSE_INTERNAL, CLOSE_POLICY
from sysadmd.wire.wsbase import LeanServerMixin


@implementer(IPushProducer)
class WebSocketChannel:
    """A session's way out: text frames, with a bounded queue for slow readers."""

    def __init__(self, protocol: "SysadmServerProtocol", limit: int):
        self.protocol = protocol
        self.limit = limit
        self.paused = False
        self.queue: Deque[bytes] = deque()
        self.queued_bytes = 0
        self.closing = False

    def send_text(self, text: str) -> None:
        if self.closing:
            return
        # A lone surrogate that got past the envelope's checks goes out as U+FFFD.
        payload = envelope.utf8(text)
        if self.paused or self.queue:
            self.queue.append(payload)
            self.queued_bytes += len(payload)
            if self.queued_bytes > self.limit:
                session = self.protocol.session
                reason = f"client reads too slowly: {self.queued_bytes} bytes pending (limit {self.limit})"
                self.protocol._log.warn("closing {session}: {reason}", session=session.id if session else "?", reason=reason)
                self.queue.clear()
                self.queued_bytes = 0
                if session is not None:
                    session.close_reason = reason  # for the "Connection Closing" hostinfo entry
                self.close(CLOSE_POLICY, reason)
            return
        self.protocol.send_text_frame(payload)

    def close(self, code: int, reason: str) -> None:
        if self.closing:
            return
        self.closing = True
        self.protocol.close_with(code, reason)

    # IPushProducer: the transport tells us when its buffer is full or drained.
    def pauseProducing(self) -> None:
        self.paused = True
        self.protocol.output_congested()

    def resumeProducing(self) -> None:
        self.paused = False
        while self.queue and not self.paused:
            payload = self.queue.popleft()
            self.queued_bytes -= len(payload)
            self.protocol.send_text_frame(payload)
        if not self.paused:
            self.protocol.output_drained()

    def stopProducing(self) -> None:
        self.queue.clear()
        self.queued_bytes = 0


class SysadmServerProtocol(LeanServerMixin, WebSocketServerProtocol):
    _log = Logger()
    session: Optional[Session] = None
    channel: Optional[WebSocketChannel] = None

    def onOpen(self) -> None:
        try:
            self._open()
        except Exception:
            # autobahn swallows exceptions from onOpen; log and close instead.
            self._log.failure("failed to open a session")
            self.close_with(CLOSE_INTERNAL, "internal error")

    def message_limit(self) -> int:
        session = self.session
        config = self.factory.app.config
        if session is not None and session.identity is not None:
            return config.max_message_bytes
        return min(config.max_unauth_message_bytes, config.max_message_bytes)

    def _open(self) -> None:
        factory: SysadmServerFactory = self.factory
        server = factory.app
        peer, identity = factory.identify_peer(self)
        refusal = server.connection_allowed(peer)
        if refusal is not None:
            server.logs.hostinfo(f"Refused Connection: {peer} ({refusal.reason})")
            self.close_with(refusal.close_code, refusal.reason)
            return
        self.channel = WebSocketChannel(self, server.config.max_session_buffer_bytes)
        # twisted.web's HTTP channel (which handed us the connection) may still be
        # registered as the transport's producer; ours replaces it.
        if getattr(self.transport, "producer", None) is not None:
            self.transport.unregisterProducer()
        self.registerProducer(self.channel, True)
        self.session = server.open_session(factory.kind, peer, self.channel, identity=identity)
        server.logs.hostinfo(f"New Connection: {peer}" + (f" (user {identity.user})" if identity else ""))
        if factory.on_session is not None:
            factory.on_session(self.session)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        session = self.session
        if session is None or session.closed or (self.channel is not None and self.channel.closing):
            return
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as e:
            session.send(envelope.error("400", f"message is not valid UTF-8 (byte {e.start})"))
            return
        self.factory.app.api.handle_text(session, text)

    def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
        if self.channel is not None:
            self.channel.closing = True
        if self.session is not None:
            self.session.lost()


SERVER_HEADER = "sysadm-server"  # what upstream's server sends


class SysadmServerFactory(WebSocketServerFactory):
    protocol = SysadmServerProtocol

    def __init__(self, server: Any, kind: str = "wss", *, reactor: Any = None,
                 identify_peer: Optional[Callable[[SysadmServerProtocol], tuple]] = None,
                 on_session: Optional[Callable[[Session], None]] = None):
        # autobahn sends its `server` attribute as the handshake reply's Server header.
        super().__init__(url=None, server=SERVER_HEADER, reactor=reactor)
        self.noisy = False
        self.app = server
        self.kind = kind
        self.identify_peer = identify_peer or tcp_peer
        self.on_session = on_session
        limit = server.config.max_message_bytes
        self.setProtocolOptions(
            maxMessagePayloadSize=limit,
            maxFramePayloadSize=limit,
            utf8validateIncoming=False,  # we answer bad UTF-8 with a 400 instead of failing the connection
            failByDrop=False,  # send the close frame (1009 for a too large message) instead of just dropping
            openHandshakeTimeout=30,
            closeHandshakeTimeout=5,
            autoFragmentSize=0,
            perMessageCompressionAccept=lambda offers: None,
        )


def tcp_peer(protocol: SysadmServerProtocol) -> tuple:
    """``(address, None)``: TCP peers are anonymous until they log in."""
    return protocol.transport.getPeer().host, None


def unix_peer_credentials(protocol: SysadmServerProtocol) -> tuple:
    """``(pid, uid, gid)`` of the process at the other end of a Unix socket."""
    handle = protocol.transport.getHandle()
    raw = handle.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", raw)
