"""The WebSocket this server keeps open to a bridge (we are the client).

Wire protocol, as upstream's bridge expects it (docs/protocol.md §8.1, §8.4).
Messages that begin with ``{`` are between the bridge and us; anything else is a relay
frame ``<clientID>\\n<body>`` from a client, handled by :mod:`.clients`::

    us     → bridge  {"args":"","id":"server_to_bridge_auth","name":"auth_ssl","namespace":"rpc"}   (at once)
    bridge → us      {"args":"","id":"sysadm_bridge_request_ident","name":"identify","namespace":"rpc"}
    us     → bridge  {"args":{"hostname":H,"type":"server"},"id":"sysadm_bridge_request_ident","name":"response","namespace":"rpc"}
    bridge → us      {"args":{"test_string":T},"id":"server_to_bridge_auth","name":"response","namespace":"rpc"}
    us     → bridge  {"args":{"encrypted_string":base64(raw PKCS#1 v1.5 signature of T)},"id":"server_to_bridge_auth",…}
    bridge → us      {"args":[TOKEN,…],"id":"server_to_bridge_auth","name":"response",…}    authenticated
                  or {"args":"unauthorized","id":"server_to_bridge_auth","name":"error",…}    we close
    bridge → us      {"args":{"action":"list_ssl_checksums"},"id":"bridge_request_list_keys","name":"settings","namespace":"rpc"}
    us     → bridge  {"args":{"md5_keys":[…]},"id":"bridge_request_list_keys","name":"response","namespace":"rpc"}
    bridge → us      {"args":{"available_connections":[IDs]},"id":"","name":"bridge","namespace":"events"}
    us     → bridge  {"args":"","id":"sysadm_server_own_id","name":"identify","namespace":"rpc"}     (ours, after auth)
    bridge → us      {"args":{"connection_id":ID,…},…}   our own ID, for identity proofs (absent upstream)

A bridge that neither accepts nor refuses our key within ``AUTH_TIMEOUT`` seconds is
disconnected (and dialed again later).  ``list_ssl_checksums`` is answered only once the bridge has accepted our key (a 401
error before that), as upstream does; relay frames and ``available_connections`` are
ignored until then.  Other requests from the bridge get a 404 error; replies and
errors from it are never answered (no reply loops).  WebSocket pings every
``BRIDGE_PING_INTERVAL`` seconds detect a dead bridge behind NAT.
"""

from __future__ import annotations

import socket
from typing import Any, Dict, Optional

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from OpenSSL import SSL
from twisted.internet import error as neterror
from twisted.logger import Logger
from twisted.python.failure import Failure

from sysadmd.runtime import crypto
from sysadmd.wire import envelope
from sysadmd.wire.close import CLOSE_NORMAL
from sysadmd.bridgelink.outbox import LinkOutbox
from sysadmd.wire.envelope import EnvelopeError
from sysadmd.wire.wsbase import LeanClientMixin

AUTH_ID = "server_to_bridge_auth"
KEYS_ID = "bridge_request_list_keys"
OWN_ID = "sysadm_server_own_id"  # our identify request to the bridge, after auth


def describe_failure(reason: Failure) -> str:
    """A short sentence for why a connection ended."""
    if reason.check(SSL.Error):
        details = []
        for item in (reason.value.args[0] if reason.value.args else []):
            details.append(item[-1] if isinstance(item, tuple) else str(item))
        return f"TLS handshake failed ({'; '.join(d for d in details if d) or 'no detail'})"
    if reason.check(neterror.ConnectionDone):
        return "the bridge closed the connection"
    return reason.getErrorMessage() or reason.type.__name__


class BridgeLinkProtocol(LeanClientMixin, WebSocketClientProtocol):
    _log = Logger()
    outbox: Optional[LinkOutbox] = None
    authenticated = False
    sent_checksums: Optional[Dict[str, Any]] = None  # the key list the bridge last got from us
    _close_info: Optional[str] = None
    _producing = False
    _auth_deadline = None

    @property
    def link(self) -> Any:
        return self.factory.link

    # --- autobahn callbacks ---------------------------------------------------------
    def onOpen(self) -> None:
        try:
            self.outbox = LinkOutbox(self._write, self.link.server.config.max_session_buffer_bytes, self._overflow)
            self.registerProducer(self.outbox, True)
            self._producing = True
            self.link.attached(self)
            self.send_json({"args": "", "id": AUTH_ID, "name": "auth_ssl", "namespace": "rpc"})
            timeout = self.link.server.config.auth_timeout
            self._auth_deadline = self.link.reactor.callLater(timeout, self._auth_expired, timeout)
        except Exception:
            # autobahn swallows exceptions from onOpen; log and drop instead.
            self._log.failure("bridge link {url}: setting up the connection failed", url=self.factory.url)
            self.dropConnection(abort=True)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            self._log.warn("bridge link {url}: dropped a message that is not UTF-8", url=self.factory.url)
            return
        if text.startswith("{"):
            self._from_bridge(text)
        elif self.authenticated and self.link.clients is not None:
            self.link.clients.deliver(text)
        else:
            self._log.debug("bridge link {url}: relay frame before authentication dropped", url=self.factory.url)

    def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
        if wasClean and code is not None:
            self._close_info = f"closed by the bridge ({code}{': ' + reason if reason else ''})"

    def _auth_expired(self, seconds: float) -> None:
        # Something that is not a working bridge (or a stuck one): try again later.
        self._auth_deadline = None
        self.link.refused_silently(seconds)
        self.close_link("no answer to auth_ssl")

    def _cancel_deadline(self) -> None:
        if self._auth_deadline is not None and self._auth_deadline.active():
            self._auth_deadline.cancel()
        self._auth_deadline = None

    def connectionLost(self, reason: Failure) -> None:
        self._cancel_deadline()
        if self.outbox is not None:
            self.outbox.stopProducing()
        try:
            super().connectionLost(reason)
        finally:
            self.link.detached(self, self._close_info or describe_failure(reason))

    # --- sending --------------------------------------------------------------------
    def send_json(self, message: dict) -> None:
        if self.outbox is not None:
            self.outbox.send(envelope.encode(message).encode("utf-8"))

    def send_frame(self, frame: bytes, session_id: Optional[str]) -> bool:
        return self.outbox is not None and self.outbox.send(frame, session_id)

    def _write(self, payload: bytes) -> None:
        self.send_text_frame(payload)

    def _overflow(self, session_id: Optional[str], waiting: int) -> None:
        if session_id is not None:
            if self.link.clients is not None:
                self.link.clients.overflow(session_id, waiting)
            return
        self._log.warn("bridge link {url}: the bridge reads too slowly ({waiting} bytes pending); dropping the link",
                       url=self.factory.url, waiting=waiting)
        self._close_info = f"the bridge read too slowly ({waiting} bytes pending)"
        self._release_producer()
        self.dropConnection(abort=True)

    def close_link(self, reason: str) -> None:
        """Close the WebSocket politely (the bridge then drops the TCP connection)."""
        self._release_producer()
        self.sendClose(CLOSE_NORMAL, reason[:120])

    def shutdown(self, reason: str) -> None:
        """Close now: the link is being stopped, the TLS connection must go."""
        self.close_link(reason)
        self.transport.loseConnection()

    def _release_producer(self) -> None:
        # The TLS transport will not shut down while a producer is registered.
        if self._producing:
            self._producing = False
            self.transport.unregisterProducer()

    # --- messages from the bridge itself --------------------------------------------
    def _from_bridge(self, text: str) -> None:
        try:
            request = envelope.parse(text)
        except EnvelopeError as e:
            self._log.warn("bridge link {url}: unreadable message from the bridge: {detail}", url=self.factory.url, detail=e.detail)
            return
        namespace, name = request.route
        if request.id == AUTH_ID and name in ("response", "error"):
            self._auth_reply(request)
        elif request.id == OWN_ID and name == "response":
            self._own_id(request.args)
        elif namespace == "fleet" and name not in ("response", "error"):
            fleet = self.link.fleet
            if self.authenticated and fleet is not None:
                fleet.from_bridge(self, name, request.args)
        elif name in ("response", "error"):
            self._log.debug("bridge link {url}: ignored a {name} for {id!r}", url=self.factory.url, name=name, id=request.id)
        elif (namespace, name) == ("rpc", "identify"):
            self.send_json(envelope.reply(request, {"hostname": socket.gethostname(), "type": "server"}))
        elif (namespace, name) == ("rpc", "settings") and _action(request) == "list_ssl_checksums":
            self._list_checksums(request)
        elif (namespace, name) == ("events", "bridge"):
            self._available(request.args)
        else:
            self.send_json(envelope.error("404", f"a bridge link answers only rpc/identify and rpc/settings "
                                                 f"list_ssl_checksums, not {request.namespace}/{request.name}", request.id))

    def _auth_reply(self, request: envelope.Request) -> None:
        args = request.args
        if request.route[1] == "response" and isinstance(args, dict) and isinstance(args.get("test_string"), str):
            signed = crypto.sign_challenge(self.link.bridge_key, args["test_string"])
            self.send_json({"args": {"encrypted_string": signed}, "id": AUTH_ID, "name": "auth_ssl", "namespace": "rpc"})
        elif request.route[1] == "response" and isinstance(args, list) and args and isinstance(args[0], str):
            self.authenticated = True
            self._cancel_deadline()
            self.link.authenticated_ok()
            # Ask our own connection ID (our bridge tells it; upstream's answers without it).
            self.send_json({"args": "", "id": OWN_ID, "name": "identify", "namespace": "rpc"})
        else:
            self._cancel_deadline()
            self.link.refused(args)
            self.close_link("key refused")

    def _own_id(self, args: Any) -> None:
        own = args.get("connection_id") if isinstance(args, dict) else None
        clients = self.link.clients
        if not self.authenticated or clients is None:
            return
        if isinstance(own, str) and 0 < len(own) <= 200 and "\n" not in own:
            clients.own_id = own
        else:
            self._log.info("bridge link {url}: the bridge does not tell our connection ID (an upstream bridge?); "
                           "our clients will see unbound identity proofs", url=self.factory.url)

    def _list_checksums(self, request: envelope.Request) -> None:
        if not self.authenticated:
            self.send_json(envelope.error("401", "authenticate first: the bridge has not accepted our key yet", request.id))
            return
        first = self.sent_checksums is None
        self.sent_checksums = self.link.checksums()
        self.send_json(envelope.reply(request, self.sent_checksums))
        if first and self.link.fleet is not None:
            self.link.fleet.hello(self)  # after our key list: the bridge pairs us on it

    def offer_checksums(self, checksums: Dict[str, Any]) -> None:
        """Tell the bridge our key list if it changed since it last heard it.

        Upstream bridges ask only once (ours every KEYS_REFRESH_INTERVAL); both accept an
        unsolicited list reply, so a key registered here pairs its client within seconds.
        """
        if self.authenticated and self.sent_checksums is not None and checksums != self.sent_checksums:
            self.sent_checksums = checksums
            self.send_json({"args": checksums, "id": KEYS_ID, "name": "response", "namespace": "rpc"})

    def _available(self, args: Any) -> None:
        if not self.authenticated or self.link.clients is None:
            return
        ids = args.get("available_connections") if isinstance(args, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, str) and i for i in ids):
            self._log.warn("bridge link {url}: bridge event without a list of connection IDs ignored", url=self.factory.url)
            return
        self.link.clients.update(ids)


def _action(request: envelope.Request) -> Optional[str]:
    args = request.args
    action = args.get("action") if isinstance(args, dict) else None
    return action if isinstance(action, str) else None


class BridgeLinkFactory(WebSocketClientFactory):
    protocol = BridgeLinkProtocol

    def __init__(self, link: Any, url: str, reactor: Any, *, max_message_bytes: int, ping_interval: float):
        super().__init__(url=url, reactor=reactor)
        self.noisy = False
        self.link = link
        options = dict(
            maxMessagePayloadSize=max_message_bytes,
            maxFramePayloadSize=max_message_bytes,
            utf8validateIncoming=False,
            openHandshakeTimeout=30,
            closeHandshakeTimeout=5,
            autoFragmentSize=0,
        )
        if ping_interval > 0:
            options.update(autoPingInterval=ping_interval, autoPingTimeout=max(5.0, min(ping_interval, 30.0)))
        self.setProtocolOptions(**options)
