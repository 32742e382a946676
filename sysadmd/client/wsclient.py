"""A Twisted WebSocket client for the sysadmd API (used by ``sysadm`` and the tests).

``connect()`` gives an :class:`ApiConnection`: ``call()`` sends one request and fires
with the whole reply envelope (matched by ``id``, so replies may come in any order);
events are handed to ``on_event`` listeners; anything else to ``on_unsolicited``.
"""

from __future__ import annotations

import itertools
import json
from typing import Any, Callable, Dict, List, Optional

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol, connectWS
from twisted.internet import defer, endpoints, ssl
from twisted.logger import Logger

from sysadmd.wire.close import CLOSE_NORMAL
from sysadmd.wire.envelope import encode
from sysadmd.runtime.tls import fingerprint_der
from sysadmd.wire.wsbase import WireMixin

log = Logger()


class ConnectionLost(Exception):
    """The connection closed before the reply arrived."""


class ApiConnection(WireMixin, WebSocketClientProtocol):
    def __init__(self) -> None:
        super().__init__()
        self.pending: Dict[str, defer.Deferred] = {}
        self.event_listeners: List[Callable[[Dict[str, Any]], None]] = []
        self.unsolicited_listeners: List[Callable[[str], None]] = []
        self.closed: defer.Deferred = defer.Deferred()
        self.close_code: Optional[int] = None
        self.close_reason: Optional[str] = None
        self._ids = itertools.count(1)

    # --- autobahn callbacks ---------------------------------------------------------
    def onOpen(self) -> None:
        self.factory.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        text = payload.decode("utf-8", "replace")
        try:
            message = json.loads(text)
        except ValueError:
            message = None
        if isinstance(message, dict):
            request_id = message.get("id")
            if isinstance(request_id, str) and request_id in self.pending:
                self.pending.pop(request_id).callback(message)
                return
            if message.get("namespace") == "events":
                for listener in list(self.event_listeners):
                    listener(message)
                return
        for listener in list(self.unsolicited_listeners):
            listener(text)

    def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
        self.close_code, self.close_reason = code, reason
        pending, self.pending = self.pending, {}
        for d in pending.values():
            d.errback(ConnectionLost(f"connection closed ({code}: {reason})"))
        if not self.factory.opened.called:
            self.factory.opened.errback(ConnectionLost(f"connection failed ({code}: {reason})"))
        if not self.closed.called:
            self.closed.callback((code, reason))

    # --- API ------------------------------------------------------------------------
    def call(self, namespace: str, name: str, args: Any = None, request_id: Optional[str] = None) -> defer.Deferred:
        """Send a request; fires with the reply envelope (success or error)."""
        if request_id is None:
            request_id = f"c{next(self._ids)}"
        d = defer.Deferred()
        self.pending[request_id] = d
        self.send_text(encode({"namespace": namespace, "name": name, "id": request_id, "args": {} if args is None else args}))
        return d

    def send_text(self, text: str) -> None:
        self.sendMessage(text.encode("utf-8"), isBinary=False)

    def peer_fingerprint(self) -> Optional[str]:
        """SHA-256 fingerprint of the server certificate (``None`` without TLS)."""
        getter = getattr(self.transport, "getPeerCertificate", None)
        cert = getter() if getter is not None else None
        if cert is None:
            return None
        from OpenSSL import crypto

        return fingerprint_der(crypto.dump_certificate(crypto.FILETYPE_ASN1, cert))

    def close(self) -> defer.Deferred:
        if not self.closed.called:
            self.sendClose(CLOSE_NORMAL)
        return self.closed


class ApiConnectionFactory(WebSocketClientFactory):
    protocol = ApiConnection

    def __init__(self, url: str, reactor: Any, max_message_bytes: int = 64 * 1024 * 1024):
        super().__init__(url, reactor=reactor)
        self.noisy = False
        self.opened: defer.Deferred = defer.Deferred()
        self.setProtocolOptions(maxMessagePayloadSize=max_message_bytes, maxFramePayloadSize=max_message_bytes,
                                autoFragmentSize=0, openHandshakeTimeout=15, closeHandshakeTimeout=3)

    def clientConnectionFailed(self, connector, reason):
        if not self.opened.called:
            self.opened.errback(reason)


def insecure_client_tls() -> ssl.CertificateOptions:
    """TLS without CA verification: callers pin the certificate fingerprint instead."""
    return ssl.CertificateOptions(verify=False, raiseMinimumTo=ssl.TLSVersion.TLSv1_2)


def connect(reactor: Any, url: str, *, timeout: float = 15) -> defer.Deferred:
    """Open ``wss://host:port`` (TLS, no CA check) or ``ws://``; fires with an ApiConnection."""
    factory = ApiConnectionFactory(url, reactor)
    context = insecure_client_tls() if url.startswith("wss://") else None
    connectWS(factory, context, timeout=timeout)
    return factory.opened


def connect_unix(reactor: Any, path: str, *, timeout: float = 15) -> defer.Deferred:
    """Open the daemon's local Unix socket; fires with an ApiConnection."""
    factory = ApiConnectionFactory("ws://localhost/", reactor)
    endpoint = endpoints.UNIXClientEndpoint(reactor, path, timeout=timeout)
    d = endpoint.connect(factory)
    d.addErrback(lambda f: factory.opened.called or factory.opened.errback(f))
    return factory.opened
