"""The bridge's WebSocket adapter: frames in, calls on the core; the core's sends out.

Wire protocol (upstream sysadm-bridge, docs/protocol.md §8; our fixes marked *):

* TLS WebSocket, any URL path, any Origin, no subprotocol.  Every frame we send is a
  text frame; binary frames in are read as UTF-8 text.
* On open the bridge sends
  ``{"args":"","id":"sysadm_bridge_request_ident","name":"identify","namespace":"rpc"}``;
  the peer's ``response`` with that id sets its role: ``args.type == "server"`` makes a
  server, anything else a client.  (*) Only the reply to that id counts, and the role
  is locked once the peer has authenticated.
* A message is for the bridge itself if it starts with ``{`` or the peer has not yet
  authenticated; it must carry ``namespace``, ``name``, ``args`` and ``id``:

  - ``rpc/identify`` → ``{"args":{"hostname":H,"type":"bridge"},"id":…,"name":"response","namespace":"rpc"}``
  - ``rpc/auth_ssl`` without ``args.encrypted_string`` → ``{"args":{"test_string":T},…"name":"response"…}``,
    ``T`` 40 random ``[A-Za-z0-9]``.  (*) ``T`` is bound to this connection, single use,
    valid ``CHALLENGE_TTL`` seconds; a new stage 1 replaces it.
  - ``rpc/auth_ssl`` with ``args.encrypted_string`` = base64 raw PKCS#1 v1.5 signature of
    ``T`` by a registered key → ``{"args":[TOKEN,0],…"name":"response","namespace":"rpc"}``
    (40-char token, TTL 0: it lives as long as the connection), then at once
    ``{"args":{"action":"list_ssl_checksums"},"id":"bridge_request_list_keys","name":"settings","namespace":"rpc"}``,
    repeated every ``KEYS_REFRESH_INTERVAL`` (*).  (*) A key registered with a role only
    authenticates peers of that role.  Failure →
    ``{"args":"unauthorized","id":…,"name":"error","namespace":"rpc"}`` and one blacklist
    strike for the address.
  - a ``response`` with id ``bridge_request_list_keys`` and ``args.md5_keys`` (a list of
    strings) sets the peer's key checksums; (*) only from authenticated peers.
  - anything else → ``{"args":null,"id":…,"name":"response","namespace":<ns>}`` when
    authenticated, the same with ``"name":"error"`` before; ``error`` messages are
    ignored.  (*) Malformed JSON or a missing key gets a 400 error envelope saying what
    was wrong (upstream stayed silent).
* ``{"args":{"available_connections":[IDs]},"id":"","name":"bridge","namespace":"events"}``
  tells each authenticated peer its partners (servers get client IDs, clients server
  IDs; IDs are ``::{uuid4}``), always the whole sorted list, whenever it changes (*) also
  on disconnects and revocations, and once right after the first key list.
* Relay frame (authenticated, not starting with ``{``): ``"<dest>\\n<payload>"`` is
  delivered to dest as ``"<source>\\n<payload>"``, payload untouched.  (*) Only between
  paired peers; a frame for anyone else is dropped and the sender gets its
  ``available_connections`` again.
* Closes: not authenticated within ``AUTH_TIMEOUT`` → 1008; blocked address → 1008
  right after the handshake; over ``MAX_CONNECTIONS`` → 1013; message over
  ``MAX_MESSAGE_BYTES`` → 1009; a receiver too slow or stuck → 1008 (see
  :mod:`bridge.flow`); no pong within ``PING_INTERVAL`` → dropped; key revoked → 1008.
  A peer whose send buffer is full is not read until it drains (pongs included).
* Connections are counted from accept (``MAX_CONNECTIONS_PER_ADDRESS``, a
  ``HANDSHAKE_TIMEOUT`` from accept; :mod:`sysadmd.runtime.listeners`).  Any ``Origin`` is
  accepted (upstream servers send ``Origin: sysadm-server``; see
  :class:`sysadmd.wire.wsbase.LeanServerMixin`), and the handshake reply says
  ``Server: sysadm-bridge``.

Frames: autobahn does the opening handshake, the pings (every ``PING_INTERVAL``), the
close handshake (a peer that does not answer our close within 5 s is dropped) and
the ping/close bookkeeping; once open, the bytes are parsed by
:class:`sysadmd.wire.frames.FrameReader` and our text frames are written with its
header (:class:`sysadmd.wire.wsbase.LeanServerMixin`) — autobahn's per-frame path cost more
CPU than the relay itself.  Protocol errors close with 1002, an oversized message with 1009.
The commonest frames, small relay frames between partners, are relayed straight from the
reader's buffer by :meth:`BridgeServerProtocol.inline_frames` (one loop; per frame one
call of :func:`bridge.relayscan.scan_one`, in C when built, and one write per run of frames
for a receiver); every other frame takes the general path above.
"""

from __future__ import annotations

from typing import Any, Optional

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet.interfaces import IProtocolNegotiationFactory
from twisted.logger import Logger
from zope.interface import implementer

from bridge.flow import PeerFlow
from bridge.relay import Peer, new_peer_id
from bridge.relayscan import scan_one
from sysadmd.wire.close import CLOSE_INTERNAL, CLOSE_POLICY
from sysadmd.wire.envelope import encode, error, utf8
from sysadmd.wire.wsbase import LeanServerMixin, write_through


class BridgeServerProtocol(LeanServerMixin, WebSocketServerProtocol):
    """One peer connection; also the peer's :class:`~bridge.relay.PeerLink`."""

    _log = Logger()
    relay_peer: Optional[Peer] = None  # autobahn already uses "peer" (the address string)
    flow: Optional[PeerFlow] = None
    _auth_timer: Any = None

    # --- PeerLink -------------------------------------------------------------------------
    def send_text(self, text: str) -> None:
        if self.flow is not None:
            # A lone surrogate from a peer's JSON ("\ud800" in an id we echo) goes out as
            # U+FFFD: never invalid UTF-8, and the connection stays.
            self.flow.send(utf8(text))

    def close(self, code: int, reason: str) -> None:
        self.close_with(code, reason)

    # --- autobahn callbacks ---------------------------------------------------------------
    def onOpen(self) -> None:
        try:
            self._open()
        except Exception:
            # autobahn swallows exceptions from onOpen; log and close instead.
            self._log.failure("failed to open a bridge connection")
            self.close_with(CLOSE_INTERNAL, "internal error")

    def _open(self) -> None:
        bridge = self.factory.bridge
        address = self.transport.getPeer().host
        refusal = bridge.refusal(address)
        if refusal is not None:
            code, reason = refusal
            self._log.info("refused {address}: {reason}", address=address, reason=reason)
            self.close_with(code, reason)
            return
        cfg = bridge.config
        peer = Peer(id=new_peer_id(), link=self, address=address)
        transport = self.transport
        write_through(transport)
        self.flow = PeerFlow(bridge.clock, label=peer.id, limit=cfg.max_peer_buffer_bytes,
                             stall_timeout=cfg.receiver_stall_timeout,
                             # A partner may be told about a disconnect while its own close is under
                             # way: send_text_frame writes nothing once the connection is closing.
                             write=self.send_text_frame,
                             close=self.close_with,
                             pause_reading=lambda: self.pause_input("relay"),
                             resume_reading=lambda: self.resume_input("relay"),
                             on_congested=self.output_congested, on_drained=self.output_drained)
        transport.registerProducer(self.flow, True)
        self.relay_peer = peer
        self._auth_timer = bridge.clock.callLater(cfg.auth_timeout, self._auth_expired)
        bridge.connected(peer)

    # --- the relay's hot path -------------------------------------------------------------
    def inline_frames(self, reader: Any) -> bool:
        """Relay the small relay frames at the front of the frame reader's buffer; say
        whether any were taken.  The rest, from the first frame that needs the general path,
        stays in the reader for it (:meth:`onMessage`); the frame after that comes here
        again (``_drain`` in :mod:`sysadmd.wire.wsbase`).

        The common case of :meth:`onMessage`, ``PeerDirectory.relay``,
        ``PeerFlow.relay_from`` and ``send_text_frame`` in one loop; each frame is unmasked
        and re-framed by :func:`bridge.relayscan.scan_one` (in C when built): a whole masked
        text frame under 2 KiB, ASCII, not for the bridge itself (not ``{``), from an
        authenticated peer to a partner whose connection is open and not congested.
        Anything else (a control frame, an API call, fragments, a partial frame, an unknown
        or unpaired destination, a congested receiver, non-ASCII text) stops the loop there, and the general path handles it exactly as before.  So does
        a receiver that becomes congested: the sender is held (see :mod:`bridge.flow`) and
        reads no further.  Consecutive frames for one receiver are written together (at
        most what one read brought)."""
        peer = self.relay_peer
        flow = self.flow
        if peer is None or not peer.authenticated or flow is None or flow.closing or self.failedByMe \
                or self.state != self.STATE_OPEN:
            return False
        front = reader.front()
        if front is None:
            return False
        data, start_at, n = front
        peers = self.factory.bridge.directory.peers
        partners = peer.partners
        id_bytes = peer.id_bytes
        limit = self.message_limit()
        cls = type(self)
        open_state = self.STATE_OPEN
        scan = scan_one
        pos = start_at
        run_link: Any = None  # consecutive frames for one receiver go out in one write
        run: list = []
        while True:
            taken = scan(data, pos, n, limit, id_bytes)
            if taken is None:
                break
            dest_id, frame, end = taken
            dest = peers.get(dest_id)
            if dest is None or dest.id not in partners:
                break
            link = dest.link
            if link is not run_link:
                # A new receiver (a run's receiver cannot change state before its write).
                if type(link) is not cls or link.state != open_state or link.send_queue or link.logOctets:
                    break
                dest_flow = link.flow
                if dest_flow is None or dest_flow.congested or dest_flow.queue or dest_flow.closing:
                    break
                if run:
                    held = self._relay_run(run_link, run, flow)
                    run = []
                    if held:
                        break
                run_link = link
            run.append(frame)
            pos = end
        if run:
            self._relay_run(run_link, run, flow)
        if pos == start_at:
            return False
        reader.skip(pos - start_at)
        if self.autoPingTimeoutCall and self.autoPingRestartOnAnyTraffic:
            self._cancelAutoPingTimeoutCall()
        return True

    def _relay_run(self, link: "BridgeServerProtocol", pieces: list, flow: PeerFlow) -> bool:
        """Write relayed frames (*pieces*, whole frames) to *link*; if that fills
        its buffer, hold this sender (bridge.flow).  True when this peer must stop reading."""
        link.transport.write(b"".join(pieces))
        dest_flow = link.flow
        if dest_flow.congested or dest_flow.queue:
            dest_flow.relay_held(flow)
            return bool(self._input_pauses or flow.closing)
        return False

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        peer = self.relay_peer
        flow = self.flow
        if peer is None or flow is None or flow.closing:
            return
        if peer.authenticated and payload[:1] != b"{":
            # A relay frame stays bytes: checked to be UTF-8 once (an ASCII scan, which
            # base64 bodies pass, else a decode whose text is not kept), routed on its
            # first line, sent on with the sender's ID in front.
            if not payload.isascii() and not self._utf8(payload):
                return
            routed = self.factory.bridge.directory.relay(peer, payload)
            if routed is not None:
                dest, frame = routed
                dest.link.flow.relay_from(flow, frame)
            return
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as e:
            self._not_utf8(e)
            return
        self.factory.bridge.api.handle(peer, text)

    def _utf8(self, payload: bytes) -> bool:
        """Whether *payload* is UTF-8; if not, the peer is told and the message dropped."""
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError as e:
            self._not_utf8(e)
            return False
        return True

    def _not_utf8(self, e: UnicodeDecodeError) -> None:
        self.send_text(encode(error("400", f"message is not valid UTF-8 (byte {e.start}); it was dropped")))

    def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
        if self._auth_timer is not None and self._auth_timer.active():
            self._auth_timer.cancel()
        self._auth_timer = None
        if self.flow is not None:
            self.flow.lost()
        if self.relay_peer is not None:
            peer, self.relay_peer = self.relay_peer, None
            self.factory.bridge.disconnected(peer, code, reason)

    def _auth_expired(self) -> None:
        self._auth_timer = None
        if self.relay_peer is not None and not self.relay_peer.authenticated:
            timeout = self.factory.bridge.config.auth_timeout
            self.close_with(CLOSE_POLICY, f"not authenticated within {timeout:g} s")


@implementer(IProtocolNegotiationFactory)
class BridgeServerFactory(WebSocketServerFactory):
    protocol = BridgeServerProtocol

    def acceptableProtocols(self):
        """ALPN: WebSockets run over HTTP/1.1.  Without an answer Twisted's ALPN callback
        selects nothing and OpenSSL ends the handshake of every client that offers ALPN
        (browsers, curl) with an internal-error alert."""
        return [b"http/1.1"]

    def __init__(self, bridge: Any, *, reactor: Any = None):
        super().__init__(url=None, server="sysadm-bridge", reactor=reactor)
        self.noisy = False
        self.bridge = bridge
        cfg = bridge.config
        self.setProtocolOptions(
            maxMessagePayloadSize=cfg.max_message_bytes,
            maxFramePayloadSize=cfg.max_message_bytes,
            utf8validateIncoming=False,  # decoded once in onMessage, binary frames too
            openHandshakeTimeout=30,
            closeHandshakeTimeout=5,
            failByDrop=False,  # send the close code (1009, 1002…) before dropping the connection
            autoFragmentSize=0,
            perMessageCompressionAccept=lambda offers: None,
            autoPingInterval=cfg.ping_interval,
            autoPingTimeout=cfg.ping_interval,
        )
