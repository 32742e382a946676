"""A raw WebSocket client for the wire-security tests: bytes exactly as we choose them.

:class:`RawClient` speaks TLS (or plain, over the local socket) but builds the opening
handshake and every frame itself, so tests can send what no well-behaved library would:
captured upstream handshakes, ping floods, endless empty fragments, huge declared
lengths, trickled headers.  Frames from the server are parsed with our own codec.
"""

from __future__ import annotations

import base64
import os
import re
import socket
from typing import Callable, List, Optional, Tuple

from twisted.internet import defer, endpoints, protocol, reactor, task

from sysadmd.wire import frames
from sysadmd.client.wsclient import insecure_client_tls

CAPTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "upstream-captures")


def captured_handshake(log_name: str, host: str) -> bytes:
    """The first client opening handshake recorded in *log_name*, with Host set to *host*."""
    with open(os.path.join(CAPTURES, log_name), encoding="utf-8") as f:
        for line in f:
            m = re.search(r" C>S HTTP (GET .*)$", line.rstrip("\n"))
            if m:
                parts = m.group(1).split(" | ")
                parts = [f"Host: {host}" if p.lower().startswith("host:") else p for p in parts]
                return ("\r\n".join(parts) + "\r\n\r\n").encode("latin-1")
    raise AssertionError(f"no client handshake in {log_name}")


def captured_frames(log_name: str, direction: str = "C>S") -> List[str]:
    """Text frames of the first connection in *log_name* sent in *direction*."""
    out = []
    with open(os.path.join(CAPTURES, log_name), encoding="utf-8") as f:
        for line in f:
            m = re.match(r"\S+ #(\d+) (\S+) TEXT (?:masked )?(.*)$", line.rstrip("\n"))
            if m and m.group(2) == direction:
                out.append(m.group(3))
    return out


def handshake(host: str = "localhost", origin: Optional[str] = None, extra: str = "") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    head = (f"GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n")
    if origin is not None:
        head += f"Origin: {origin}\r\n"
    return (head + extra + "\r\n").encode("latin-1")


def client_frame(opcode: int, payload: bytes = b"", fin: bool = True) -> bytes:
    return frames.encode_frame(opcode, payload, fin=fin, mask=os.urandom(4))


def text(payload: str) -> bytes:
    return client_frame(frames.TEXT, payload.encode("utf-8"))


class RawClient(protocol.Protocol):
    """Collects the HTTP reply head, then the server's frames."""

    def __init__(self) -> None:
        self.raw = b""
        self.head: Optional[bytes] = None
        self.reader = frames.FrameReader(2 ** 40, masked=False)
        self.frames: List[Tuple[int, bytes]] = []
        self.lost = defer.Deferred()
        self.is_lost = False
        self._waiters: List[Tuple[Callable[[], bool], defer.Deferred]] = []

    def dataReceived(self, data: bytes) -> None:
        if self.head is None:
            self.raw += data
            end = self.raw.find(b"\r\n\r\n")
            if end < 0:
                self._check()
                return
            self.head, data = self.raw[:end + 4], self.raw[end + 4:]
        if self.status != 101:
            self.raw += data  # an HTTP error reply's body
            self._check()
            return
        self.reader.feed(data)
        while True:
            frame = self.reader.pop()
            if frame is None:
                break
            self.frames.append(frame)
        self._check()

    def connectionLost(self, reason) -> None:
        self.lost_reason = reason
        self.is_lost = True
        self._check()
        if not self.lost.called:
            self.lost.callback(None)

    def _check(self) -> None:
        for waiter in list(self._waiters):
            predicate, d = waiter
            if predicate():
                self._waiters.remove(waiter)
                d.callback(None)

    def wait(self, predicate: Callable[[], bool], timeout: float = 10, what: str = "condition") -> defer.Deferred:
        d = defer.Deferred()
        if predicate():
            d.callback(None)
            return d
        waiter = (predicate, d)
        self._waiters.append(waiter)

        def expired():
            if waiter in self._waiters:
                self._waiters.remove(waiter)
                d.errback(AssertionError(f"{what} not seen within {timeout} s; head={self.head!r} frames={self.frames[-3:]!r}"))

        call = reactor.callLater(timeout, expired)
        d.addBoth(lambda r: (call.cancel() if call.active() else None, r)[1])
        return d

    # --- views ---------------------------------------------------------------------
    @property
    def status(self) -> Optional[int]:
        head = self.head if self.head is not None else (self.raw if b"\r\n" in self.raw else None)
        if head is None:
            return None
        return int(head.split(b" ", 2)[1])

    def header(self, name: str) -> Optional[str]:
        for line in (self.head or b"").split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name.lower().encode():
                return value.strip().decode("latin-1")
        return None

    def texts(self) -> List[str]:
        return [p.decode("utf-8") for op, p in self.frames if op == frames.TEXT]

    def close_code(self) -> Optional[int]:
        for op, p in self.frames:
            if op == frames.CLOSE:
                return frames.parse_close(p)[0]
        return None

    def text_matching(self, pattern: str) -> Callable[[], bool]:
        return lambda: any(pattern in t for t in self.texts())

    def send(self, data: bytes) -> None:
        self.transport.write(data)

    def abort(self) -> None:
        if not self.is_lost:
            self.transport.abortConnection()


def open_raw(testcase, port: Optional[int] = None, *, unix: Optional[str] = None, tls: bool = True,
             rcvbuf: Optional[int] = None) -> defer.Deferred:
    """Connect a :class:`RawClient` (TLS to 127.0.0.1:port, or plain to a Unix socket)."""
    client = RawClient()
    if rcvbuf is not None:
        return _open_small_window(testcase, client, port, rcvbuf)
    if unix is not None:
        endpoint = endpoints.UNIXClientEndpoint(reactor, unix)
    elif tls:
        endpoint = endpoints.SSL4ClientEndpoint(reactor, "127.0.0.1", port, insecure_client_tls())
    else:
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    d = endpoints.connectProtocol(endpoint, client)

    def opened(p):
        def cleanup():
            # Gone before the daemon stops, so it sends no close frame to a dead peer.
            p.abort()
            return p.lost.addCallback(lambda _: sleep(0.1))

        testcase.addCleanup(cleanup)
        return p

    return d.addCallback(opened)


def _open_small_window(testcase, client: RawClient, port: int, rcvbuf: int) -> defer.Deferred:
    """TLS to 127.0.0.1:port from a socket whose receive buffer is set before connecting
    (so the kernel cannot soak up megabytes of replies for a client that stops reading)."""
    from twisted.internet.protocol import Factory
    from twisted.protocols.tls import TLSMemoryBIOFactory

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    opened = defer.Deferred()

    class Once(Factory):
        def buildProtocol(self, addr):
            reactor.callLater(0, opened.callback, client)
            return client

    factory = TLSMemoryBIOFactory(insecure_client_tls(), True, Once())
    reactor.adoptStreamConnection(sock.fileno(), socket.AF_INET, factory)
    sock.close()  # the reactor holds its own duplicate of the descriptor

    def cleanup():
        client.abort()
        return client.lost.addCallback(lambda _: sleep(0.1))

    testcase.addCleanup(cleanup)
    return opened


@defer.inlineCallbacks
def open_ws(testcase, port: Optional[int] = None, *, unix: Optional[str] = None, request: Optional[bytes] = None,
            rcvbuf: Optional[int] = None):
    """A RawClient that has done the opening handshake (asserts 101)."""
    client = yield open_raw(testcase, port, unix=unix, rcvbuf=rcvbuf)
    client.send(request or handshake())
    yield client.wait(lambda: client.head is not None or client.is_lost, what="handshake reply")
    testcase.assertEqual(client.status, 101, client.raw[:300])
    return client


def sleep(seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)


def until(predicate: Callable[[], bool], timeout: float = 10, step: float = 0.02, what: str = "condition") -> defer.Deferred:
    @defer.inlineCallbacks
    def poll():
        deadline = reactor.seconds() + timeout
        while not predicate():
            if reactor.seconds() > deadline:
                raise AssertionError(f"{what} not met within {timeout} s")
            yield sleep(step)

    return poll()


def tcp_buffered(transport) -> int:
    """Bytes waiting in the Twisted TCP transport under *transport* (TLS and guard layers skipped)."""
    t = transport
    for _ in range(6):
        if hasattr(type(t), "doWrite") and "dataBuffer" in t.__dict__:
            return len(t.dataBuffer) - t.offset + t._tempDataLen
        t = t.__dict__.get("transport")
    raise AssertionError("no TCP transport found")
