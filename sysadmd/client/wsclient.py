"""A Twisted WebSocket client for the sysadmd API (used by ``sysadm`` and the tests).

``connect()`` gives an :class:`ApiConnection`: ``call()`` sends one request and fires
with the whole reply envelope (matched by ``id``, so replies may come in any order);
events are handed to ``on_event`` listeners; anything else to ``on_unsolicited``.

The WebSocket itself (RFC 6455) is done here, without autobahn: importing
``autobahn.twisted.websocket`` took about 0.25 s, the whole of ``sysadm``'s start-up
budget.  The opening handshake is a plain HTTP/1.1 exchange (:func:`handshake_request`,
:func:`check_handshake_reply`); frames are read and written with the codec the servers
use (:mod:`sysadmd.wire.frames`, in client mode: our frames masked, the server's unmasked).

Bounds: the handshake reply may take ``handshake_timeout`` seconds and
:data:`MAX_HANDSHAKE_BYTES` bytes; a message (and so a frame) at most
``max_message_bytes``, in at most ``frames.MAX_FRAGMENTS`` frames (1009 closes the
connection otherwise); the close handshake ``close_timeout`` seconds before the socket is
dropped.  Pings are answered with pongs.  Messages we send are split into frames of
:data:`FRAGMENT_BYTES`.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple
from urllib.parse import urlsplit

from twisted.internet import defer
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.logger import Logger

from sysadmd import __version__
from sysadmd.wire import frames
from sysadmd.wire.close import CLOSE_ABNORMAL, CLOSE_NORMAL, CLOSE_PROTOCOL_ERROR
from sysadmd.wire.envelope import encode

log = Logger()

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3
MAX_HANDSHAKE_BYTES = 16 * 1024  # the reply head (status line and headers); ours are ~200 bytes
DEFAULT_MAX_MESSAGE = 64 * 1024 * 1024
FRAGMENT_BYTES = 512 * 1024  # frame size of the messages we send (Qt's clients split there too)
HANDSHAKE_TIMEOUT = 15.0
CLOSE_TIMEOUT = 3.0


class ConnectionLost(Exception):
    """The connection closed before the reply arrived."""


class HandshakeError(Exception):
    """The server did not complete a valid WebSocket opening handshake."""


def accept_value(key: str) -> str:
    """The ``Sec-WebSocket-Accept`` a server must answer to ``Sec-WebSocket-Key: key``."""
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + GUID).digest()).decode("ascii")


def new_key() -> str:
    return base64.b64encode(os.urandom(16)).decode("ascii")


def handshake_request(host: str, path: str, key: str, origin: Optional[str] = None,
                      protocols: Sequence[str] = ()) -> bytes:
    """The opening handshake request (RFC 6455 §4.1)."""
    for name, value, banned in (("host", host, " \r\n\0"), ("path", path, " \r\n\0"), ("origin", origin or "", "\r\n\0"),
                                *(("sub-protocol", p, " ,\r\n\0") for p in protocols)):
        if any(c in value for c in banned):
            raise ValueError(f"the WebSocket {name} {value[:40]!r} contains a character it cannot hold")
    lines = [f"GET {path or '/'} HTTP/1.1", f"Host: {host}", f"User-Agent: sysadm/{__version__}",
             "Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    if origin:
        lines.append(f"Origin: {origin}")
    if protocols:
        lines.append(f"Sec-WebSocket-Protocol: {', '.join(protocols)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


def check_handshake_reply(head: bytes, key: str, protocols: Sequence[str] = ()) -> Tuple[Dict[str, str], Optional[str]]:
    """Check the reply head (without its blank line); its headers (lower-case names,
    repeated ones joined with ", ") and the sub-protocol the server chose.  Raises
    :class:`HandshakeError` saying what is wrong."""
    try:
        text = head.decode("iso-8859-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        raise HandshakeError("the handshake reply is not HTTP") from None
    lines = text.split("\r\n")
    status = lines[0]
    parts = status.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise HandshakeError(f"the server's reply is not HTTP (it starts {status[:60]!r})")
    if parts[1] != "101":
        raise HandshakeError(f"the server refused the WebSocket upgrade: {status[:200]}")
    headers: Dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or line[:1] in (" ", "\t"):
            raise HandshakeError(f"malformed header line in the handshake reply: {line[:80]!r}")
        name = name.lower()
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    if headers.get("upgrade", "").lower() != "websocket":
        raise HandshakeError(f"the handshake reply has Upgrade: {headers.get('upgrade', '(none)')[:60]!r}, "
                             "expected websocket")
    if "upgrade" not in [t.strip().lower() for t in headers.get("connection", "").split(",")]:
        raise HandshakeError(f"the handshake reply has Connection: {headers.get('connection', '(none)')[:60]!r}, "
                             "expected Upgrade")
    accept = headers.get("sec-websocket-accept")
    if accept != accept_value(key):
        raise HandshakeError("the handshake reply's Sec-WebSocket-Accept "
                             f"{'is missing' if accept is None else repr(accept[:60]) + ' is wrong'} "
                             f"(expected {accept_value(key)!r} for our key)")
    if headers.get("sec-websocket-extensions"):
        raise HandshakeError(f"the server chose extensions {headers['sec-websocket-extensions'][:80]!r} "
                             "that were not offered")
    chosen = headers.get("sec-websocket-protocol") or None
    if chosen is not None and chosen not in protocols:
        raise HandshakeError(f"the server chose sub-protocol {chosen[:80]!r}, which was not offered"
                             + (f" (offered: {', '.join(protocols)})" if protocols else ""))
    return headers, chosen


class ApiConnection(Protocol):
    """One WebSocket connection to a sysadmd server or bridge (see the module docstring)."""

    def __init__(self, factory: "ApiConnectionFactory") -> None:
        self.factory = factory
        self.pending: Dict[str, defer.Deferred] = {}
        self.event_listeners: List[Callable[[Dict[str, Any]], None]] = []
        self.unsolicited_listeners: List[Callable[[str], None]] = []
        self.closed: defer.Deferred = defer.Deferred()
        self.close_code: Optional[int] = None
        self.close_reason: Optional[str] = None
        self.http_headers: Dict[str, str] = {}  # the handshake reply's (lower-case names)
        self.websocket_protocol_in_use: Optional[str] = None
        self._ids = itertools.count(1)
        self._key = new_key()
        self._head = b""
        self._reader: Optional[frames.FrameReader] = None  # once open
        self._close_sent = False
        self._close_received = False
        self._timer: Any = None  # the handshake or close deadline

    # --- opening ---------------------------------------------------------------------
    def connectionMade(self) -> None:
        setter = getattr(self.transport, "setTcpNoDelay", None)
        if setter is not None:  # small request/reply frames: no Nagle delay
            try:
                setter(True)
            except OSError:
                pass
        f = self.factory
        self.transport.write(handshake_request(f.host_header, f.path, self._key, f.origin, f.protocols))
        self._timer = f.reactor.callLater(f.handshake_timeout, self._handshake_timed_out)

    def dataReceived(self, data: bytes) -> None:
        if self._reader is None:
            data = self._read_handshake(data)
            if not data:
                return
        reader = self._reader
        reader.feed(data)
        while not self._close_received:
            try:
                frame = reader.pop()
            except frames.FrameError as e:
                self._fail(e.code, e.reason)
                return
            if frame is None:
                return
            self._frame(*frame)

    def _read_handshake(self, data: bytes) -> bytes:
        """Collect the handshake reply; the bytes after it once it is complete and valid."""
        if self._timer is None:  # already failed
            return b""
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > MAX_HANDSHAKE_BYTES:
                self._refuse(HandshakeError(f"the handshake reply is larger than {MAX_HANDSHAKE_BYTES} bytes"))
            return b""
        if end > MAX_HANDSHAKE_BYTES:
            self._refuse(HandshakeError(f"the handshake reply is larger than {MAX_HANDSHAKE_BYTES} bytes"))
            return b""
        head, rest = self._head[:end], self._head[end + 4:]
        self._head = b""
        try:
            self.http_headers, self.websocket_protocol_in_use = check_handshake_reply(head, self._key,
                                                                                      self.factory.protocols)
        except HandshakeError as e:
            self._refuse(e)
            return b""
        self._cancel_timer()
        self._reader = frames.FrameReader(self.factory.max_message_bytes, masked=False)
        if not self.factory.opened.called:
            self.factory.opened.callback(self)
        return rest

    def _handshake_timed_out(self) -> None:
        self._timer = None
        f = self.factory
        self._refuse(HandshakeError(f"no WebSocket handshake reply within {f.handshake_timeout:g} s"),
                     timer_done=True)

    def _refuse(self, why: HandshakeError, timer_done: bool = False) -> None:
        if not timer_done:
            self._cancel_timer()
        self._timer = None
        if not self.factory.opened.called:
            self.factory.opened.errback(why)
        self.close_code, self.close_reason = CLOSE_ABNORMAL, str(why)
        self.transport.abortConnection()

    # --- frames ----------------------------------------------------------------------
    def _frame(self, opcode: int, payload: bytes) -> None:
        if opcode in (frames.TEXT, frames.BINARY):
            if not self._close_sent:
                self.onMessage(payload, opcode == frames.BINARY)
        elif opcode == frames.PING:
            if not self._close_sent:
                self._send_frame(frames.PONG, payload)
        elif opcode == frames.CLOSE:
            self._close_received = True
            try:
                code, reason = frames.parse_close(payload)
            except frames.FrameError:
                code, reason = CLOSE_PROTOCOL_ERROR, b"malformed close frame"
            self.close_code = code if code is not None else 1005
            self.close_reason = reason.decode("utf-8", "replace") if reason else ""
            if not self._close_sent:  # the server closes: answer with its code, then it drops the socket
                self._send_close(code)
            self._cancel_timer()
            # The server drops the TCP connection first (RFC 6455 §7.1.1); not for long.
            self._timer = self.factory.reactor.callLater(self.factory.close_timeout, self._drop)
        # pongs answer pings we never send: ignored

    def _fail(self, code: int, reason: str) -> None:
        """The server broke the protocol or sent too much: close with *code*."""
        log.info("closing the connection to {target}: {reason}", target=self.factory.target, reason=reason)
        self.close_code, self.close_reason = code, reason
        self._send_close(code, reason)

    def _send_frame(self, opcode: int, payload: bytes, fin: bool = True) -> None:
        mask = os.urandom(4)
        head = frames.frame_header(opcode, len(payload), fin, mask)
        if len(payload) < 1024:
            self.transport.write(head + frames.unmask(payload, mask))
        else:
            self.transport.writeSequence([head, frames.unmask(payload, mask)])

    def _send_close(self, code: Optional[int], reason: str = "") -> None:
        if self._close_sent:
            return
        self._close_sent = True
        raw = reason.encode("utf-8")[:123].decode("utf-8", "ignore").encode("utf-8")
        self._send_frame(frames.CLOSE, b"" if code is None else frames.close_payload(code, raw))
        if not self._close_received:
            self._cancel_timer()
            self._timer = self.factory.reactor.callLater(self.factory.close_timeout, self._drop)

    def _drop(self) -> None:
        self._timer = None
        self.transport.abortConnection()

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def connectionLost(self, reason: Any = None) -> None:
        self._cancel_timer()
        if self.close_code is None:
            why = reason.getErrorMessage() if reason is not None else "closed"
            self.close_code, self.close_reason = CLOSE_ABNORMAL, f"connection was closed uncleanly ({why})"
        if not self.factory.opened.called:
            if reason is not None and "SSL" in type(reason.value).__module__ + type(reason.value).__name__:
                self.factory.opened.errback(reason)  # a TLS failure: the caller names it
            else:
                self.factory.opened.errback(HandshakeError(
                    f"the server closed the connection during the WebSocket handshake ({self.close_reason})"))
        self.onClose(self._close_received, self.close_code, self.close_reason)

    # --- messages (names kept from the autobahn-based client) ----------------------------
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
        pending, self.pending = self.pending, {}
        for d in pending.values():
            d.errback(ConnectionLost(f"connection closed ({code}: {reason})"))
        if not self.closed.called:
            self.closed.callback((code, reason))

    # --- API ------------------------------------------------------------------------
    def call(self, namespace: str, name: str, args: Any = None, request_id: Optional[str] = None) -> defer.Deferred:
        """Send a request; fires with the reply envelope (success or error)."""
        if request_id is None:
            request_id = f"c{next(self._ids)}"
        if self.closed.called or self._close_sent or self._close_received:
            return defer.fail(ConnectionLost(f"connection closed ({self.close_code}: {self.close_reason})"))
        d = defer.Deferred()
        self.pending[request_id] = d
        self.send_text(encode({"namespace": namespace, "name": name, "id": request_id, "args": {} if args is None else args}))
        return d

    def send_text(self, text: str) -> None:
        self.sendMessage(text.encode("utf-8"), isBinary=False)

    def sendMessage(self, payload: bytes, isBinary: bool = False) -> None:
        """Send one message, in frames of :data:`FRAGMENT_BYTES` (dropped once closing)."""
        if self._reader is None or self._close_sent or self._close_received:
            return
        opcode = frames.BINARY if isBinary else frames.TEXT
        size = self.factory.fragment_bytes
        if len(payload) <= size:
            self._send_frame(opcode, payload)
            return
        view = memoryview(payload)
        for start in range(0, len(payload), size):
            last = start + size >= len(payload)
            self._send_frame(opcode if start == 0 else frames.CONTINUATION, bytes(view[start:start + size]), fin=last)

    def peer_fingerprint(self) -> Optional[str]:
        """SHA-256 fingerprint of the server certificate (``None`` without TLS)."""
        getter = getattr(self.transport, "getPeerCertificate", None)
        cert = getter() if getter is not None else None
        if cert is None:
            return None
        from OpenSSL import crypto

        from sysadmd.runtime.tls import fingerprint_der

        return fingerprint_der(crypto.dump_certificate(crypto.FILETYPE_ASN1, cert))

    def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> defer.Deferred:
        """Start the close handshake; fires like :attr:`closed`."""
        if not self.closed.called:
            if self._reader is None:  # still opening: nothing to close politely
                self.transport.abortConnection()
            else:
                self._send_close(code, reason)
        return self.closed


class ApiConnectionFactory(ClientFactory):
    """Where to connect and with which limits; :attr:`opened` fires with the connection."""

    noisy = False

    def __init__(self, url: str, reactor: Any, max_message_bytes: int = DEFAULT_MAX_MESSAGE, *,
                 origin: Optional[str] = None, protocols: Sequence[str] = (), handshake_timeout: float = HANDSHAKE_TIMEOUT,
                 close_timeout: float = CLOSE_TIMEOUT, fragment_bytes: int = FRAGMENT_BYTES):
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError(f"not a WebSocket URL (ws:// or wss://host[:port][/path]): {url!r}")
        self.url = url
        self.is_secure = scheme == "wss"
        self.host = parts.hostname
        default_port = 443 if self.is_secure else 80
        self.port = parts.port or default_port
        name = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = name if self.port == default_port else f"{name}:{self.port}"
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.target = f"{name}:{self.port}"
        self.reactor = reactor
        self.max_message_bytes = max_message_bytes
        self.origin = origin
        self.protocols = tuple(protocols)
        self.handshake_timeout = handshake_timeout
        self.close_timeout = close_timeout
        self.fragment_bytes = fragment_bytes
        self.opened: defer.Deferred = defer.Deferred()

    def buildProtocol(self, addr: Any) -> ApiConnection:
        return ApiConnection(self)

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        if not self.opened.called:
            self.opened.errback(reason)


def insecure_client_tls() -> Any:
    """TLS without CA verification: callers pin the certificate fingerprint instead."""
    from twisted.internet import ssl

    return ssl.CertificateOptions(verify=False, raiseMinimumTo=ssl.TLSVersion.TLSv1_2)


def connect(reactor: Any, url: str, *, timeout: float = 15, **options: Any) -> defer.Deferred:
    """Open ``wss://host:port`` (TLS, no CA check: pin with ``peer_fingerprint()``) or
    ``ws://``; fires with an :class:`ApiConnection`.  *options*: those of
    :class:`ApiConnectionFactory` (``origin``, ``protocols``, ``max_message_bytes``,
    ``handshake_timeout``…)."""
    factory = ApiConnectionFactory(url, reactor, **options)
    if factory.is_secure:
        reactor.connectSSL(factory.host, factory.port, factory, insecure_client_tls(), timeout=timeout)
    else:
        reactor.connectTCP(factory.host, factory.port, factory, timeout=timeout)
    return factory.opened


def connect_unix(reactor: Any, path: str, *, timeout: float = 15, **options: Any) -> defer.Deferred:
    """Open the daemon's local Unix socket; fires with an :class:`ApiConnection`."""
    factory = ApiConnectionFactory("ws://localhost/", reactor, **options)
    factory.target = path
    reactor.connectUNIX(path, factory, timeout=timeout)
    return factory.opened
