"""What every WebSocket protocol of ours (server, bridge, bridge link, client) shares,
and the one place that reaches into autobahn's internals.

:class:`WireMixin` goes first in the bases of an autobahn protocol class:

* **TCP_NODELAY.** Our traffic is small request/response frames; with Nagle's algorithm
  a frame written while an earlier one waits for its (delayed) ACK sits ~40 ms.
  autobahn means to turn Nagle off, but its call runs in ``connectionMade`` before the
  factory's options are copied onto the protocol, fails, and is silenced.
* **Any close code.** autobahn's ``sendClose`` accepts only 1000 and 3000-4999; our
  protocols close with 1008 (policy), 1009 (too big), 1011 and 1013 (busy).  The reason
  is cut to the 123 bytes a close frame holds, without splitting a UTF-8 character.
* **A lean data path.** autobahn's ``dataReceived`` and ``sendData`` build colourised
  debug-log arguments for every chunk even when debug logging is off (about 15% of the
  bridge's CPU when click is installed); these overrides do the same work without them.
  ``sendData``'s fast path mirrors autobahn's own (write, count octets); anything else
  (chopping, sync sends, a backlog) still goes through autobahn.

**Writing through.**  :func:`write_through` (used by the bridge for its peer
connections) makes a TCP connection send what is written at once instead of on the
reactor's next writable event; it reads and sets Twisted's ``FileDescriptor`` buffer
fields (``dataBuffer``, ``offset``, ``_tempDataBuffer``, ``_tempDataLen``) and replaces
the instance's ``startWriting``.  It checks those names on the connection first and
leaves a connection unchanged when any is missing.

**The seam.**  Everything above, and the frame path of :class:`LeanServerMixin` /
:class:`LeanClientMixin`, uses names autobahn does not document (``_dataReceived``,
``processData``, ``sendCloseFrame``, ``STATE_OPEN``…).  They are all listed in
:data:`REQUIRED_INTERNALS`, and this module is the only one that touches them
(``frames.py`` only borrows autobahn's optional C XOR masker, with a pure-Python
fallback).  At import :func:`missing_internals` checks each one on autobahn's
``WebSocketServerProtocol`` / ``WebSocketClientProtocol`` (a method is callable, a
constant is a class attribute, an attribute exists on a freshly connected protocol, a
name we only write is read by the autobahn method that consumes it).  If any is missing
— or ``SYSADMD_WS_FALLBACK=1`` is set in the environment, which the tests use — one
warning names what is missing and :data:`FAST` is false: the mixins exported here are
then built on autobahn's public data path only (``onMessage``/``sendMessage``,
``sendClose``, ``onMessageBegin``, ``onConnect``, the transport's pause/resume).

What the fallback keeps: every message; the message limits (the per-connection one is
applied as each message begins, so an oversized message is still refused from its frame
header with 1009, unbuffered); any Origin and the 431 answer to an oversized request head
(the head is read at the Twisted protocol's ``dataReceived`` before autobahn sees it);
pausing the socket while output is congested or a relay partner is slow; the handshake
deadline; TCP_NODELAY.  What it loses: close codes autobahn's ``sendClose`` refuses
(1008, 1011, 1013 go out as 4008, 4011, 4013, reason kept; autobahn's own 1002/1009
are unchanged); holding already-read frames while paused, and keeping only the latest
pong while congested (autobahn answers every ping); the cap of
``frames.MAX_FRAGMENTS`` frames per message (autobahn bounds only the size); cutting a peer that keeps streaming
frames after its message was refused; and the CPU the lean path saves.
"""

from __future__ import annotations

import inspect
import os
from typing import Any, List, Optional, Set, Tuple

from autobahn.exception import Disconnected
from autobahn.twisted.websocket import (WebSocketClientFactory, WebSocketClientProtocol, WebSocketServerFactory,
                                        WebSocketServerProtocol)
from twisted.logger import Logger

from sysadmd.wire import frames
from sysadmd.wire.close import CLOSE_NORMAL

_log = Logger()

try:  # the frame header autobahn's control-frame handler reads
    from autobahn.websocket.protocol import FrameHeader
except ImportError:  # checked below as a "module" internal
    FrameHeader = None

METHOD = "method"  # callable on the protocol class
CONSTANT = "constant"  # a non-callable class attribute
ATTRIBUTE = "attribute"  # set on the instance once connected
WRITTEN = "written"  # an instance attribute we set; the named autobahn method must read it
MODULE = "module"  # a name in autobahn.websocket.protocol

SERVER = "server"
CLIENT = "client"
BOTH = (SERVER, CLIENT)

# (name, kind, sides, what uses it).  For WRITTEN, "what uses it" starts with the
# autobahn method that reads the name.
REQUIRED_INTERNALS: Tuple[Tuple[str, str, Tuple[str, ...], str], ...] = (
    ("_dataReceived", METHOD, BOTH, "_FastWire.dataReceived: the data path without debug-log formatting"),
    ("_connectionLost", METHOD, BOTH, "_FastWire._connectionLost: cancels the close-handshake timer"),
    ("sendCloseFrame", METHOD, BOTH, "_FastWire.close_with: any RFC 6455 close code"),
    ("logTxOctets", METHOD, BOTH, "_FastWire.sendData: octet logging when enabled"),
    ("processData", METHOD, BOTH, "_FastFrames.processData: the hook for bytes after the handshake"),
    ("onCloseFrame", METHOD, BOTH, "_FastFrames._drain: close frames to autobahn's close handshake"),
    ("processControlFrame", METHOD, BOTH, "_FastFrames._drain: pings and pongs to autobahn"),
    ("_fail_connection", METHOD, BOTH, "_FastFrames._drain: 1002 and 1009 closes"),
    ("_cancelAutoPingTimeoutCall", METHOD, BOTH, "_FastFrames._drain: any traffic restarts the ping timer"),
    ("dropConnection", METHOD, BOTH, "_FastFrames._drain: cut a peer that streams refused frames"),
    ("sendPong", METHOD, BOTH, "_FastFrames.sendPong: one pending pong while congested"),
    ("processHandshake", METHOD, (SERVER,), "_FastServer.processHandshake: Origin and head limits"),
    ("succeedHandshake", METHOD, (SERVER,), "_FastServer.succeedHandshake: stops the handshake deadline"),
    ("failHandshake", METHOD, (SERVER,), "_FastServer.processHandshake: HTTP 431"),
    ("STATE_OPEN", CONSTANT, BOTH, "state checks"),
    ("STATE_CLOSED", CONSTANT, BOTH, "state checks"),
    ("STATE_CONNECTING", CONSTANT, BOTH, "_FastWire.sendData: pre-open octet counter"),
    ("STATE_PROXY_CONNECTING", CONSTANT, BOTH, "_FastWire.sendData: pre-open octet counter"),
    ("state", ATTRIBUTE, BOTH, "state checks"),
    ("data", ATTRIBUTE, BOTH, "processData/processHandshake: autobahn's receive buffer"),
    ("send_queue", ATTRIBUTE, BOTH, "_FastWire.sendData: autobahn's backlog"),
    ("trafficStats", ATTRIBUTE, BOTH, "_FastWire.sendData: octet counters"),
    ("logOctets", ATTRIBUTE, BOTH, "_FastWire.sendData: octet logging switch"),
    ("failedByMe", ATTRIBUTE, BOTH, "_FastFrames._drain: no messages after we failed the connection"),
    ("autoPingTimeoutCall", ATTRIBUTE, BOTH, "_FastFrames._drain: the ping timer"),
    ("autoPingRestartOnAnyTraffic", ATTRIBUTE, BOTH, "_FastFrames._drain: the ping timer option"),
    ("closeHandshakeTimeoutCall", ATTRIBUTE, BOTH, "_FastWire._connectionLost: the close timer"),
    ("maxMessagePayloadSize", ATTRIBUTE, BOTH, "_FastFrames.message_limit: the default limit"),
    ("current_frame", WRITTEN, BOTH, "processControlFrame: the control frame's header"),
    ("control_frame_data", WRITTEN, BOTH, "processControlFrame: the control frame's payload"),
    ("FrameHeader", MODULE, BOTH, "_FastFrames._drain: the header handed to processControlFrame"),
)

FALLBACK_ENV = "SYSADMD_WS_FALLBACK"


def _connected(cls: type) -> Any:
    """An autobahn protocol of *cls* connected to an in-memory transport (nothing sent anywhere)."""
    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport

    if issubclass(cls, WebSocketServerProtocol):
        factory = WebSocketServerFactory(reactor=Clock())
    else:
        factory = WebSocketClientFactory("ws://127.0.0.1:9/", reactor=Clock())
    # No timers: autobahn schedules them on txaio's global reactor, not the factory's.
    factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0, autoPingInterval=0)
    protocol = cls()
    protocol.factory = factory
    protocol.makeConnection(StringTransport())
    return protocol


def missing_internals(server_cls: type = WebSocketServerProtocol,
                      client_cls: type = WebSocketClientProtocol) -> List[str]:
    """``"name (kind, on class)"`` for every entry of :data:`REQUIRED_INTERNALS` that is not
    as expected; empty when the fast path can run."""
    from autobahn.websocket import protocol as ab_protocol
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    missing: List[str] = []
    for side, cls in ((SERVER, server_cls), (CLIENT, client_cls)):
        instance = None
        for name, kind, sides, _what in REQUIRED_INTERNALS:
            if side not in sides:
                continue
            ok = False
            try:
                if kind == METHOD:
                    ok = callable(getattr(cls, name, None))
                elif kind == CONSTANT:
                    ok = hasattr(cls, name) and not callable(getattr(cls, name))
                elif kind == ATTRIBUTE:
                    if instance is None:
                        instance = _connected(cls)
                    ok = hasattr(instance, name)
                elif kind == WRITTEN:
                    reader = getattr(cls, _what.split(":", 1)[0], None)
                    ok = reader is not None and f"self.{name}" in inspect.getsource(reader)
                elif kind == MODULE:
                    ok = getattr(ab_protocol, name, None) is not None
            except Exception:
                ok = False
            if not ok:
                entry = f"{name} ({kind}, {cls.__name__})"
                if entry not in missing:
                    missing.append(entry)
        if instance is not None:
            try:
                instance.connectionLost(Failure(ConnectionDone()))
            except Exception:
                pass
    return missing


def _decide() -> Tuple[bool, List[str]]:
    if os.environ.get(FALLBACK_ENV, "") not in ("", "0"):
        return False, [f"{FALLBACK_ENV} is set"]
    missing = missing_internals()
    return not missing, missing


FAST, MISSING = _decide()
if not FAST:
    _log.warn("autobahn's internals the lean WebSocket path needs are missing ({missing}); "
              "using autobahn's public data path", missing=", ".join(MISSING))


def _cut_reason(reason: str) -> bytes:
    data = reason.encode("utf-8")[:123]
    while data:
        try:
            data.decode("utf-8")
            break
        except UnicodeDecodeError:
            data = data[:-1]
    return data


def cancel_leftover_timers(protocol: Any) -> None:
    """The connection is gone: cancel autobahn's close-handshake timer (found by name, if
    it is there) and our own timer for dropping a peer that kept sending."""
    call = getattr(protocol, "closeHandshakeTimeoutCall", None)
    if call is not None and callable(getattr(call, "cancel", None)):
        try:
            call.cancel()
        except Exception:  # already called or cancelled
            pass
        protocol.closeHandshakeTimeoutCall = None
    drop = getattr(protocol, "_drop_call", None)
    if drop is not None and drop.active():
        drop.cancel()


class _InputPauses:
    """Reading stops while any reason to pause holds (both data paths share this)."""

    _input_pauses: Optional[Set[str]] = None

    @property
    def input_paused(self) -> bool:
        return bool(self._input_pauses)

    def pause_input(self, reason: str) -> None:
        """Stop reading the socket (and parsing what was read) until every reason is lifted."""
        if self._input_pauses is None:
            self._input_pauses = set()
        if not self._input_pauses and self.transport is not None:
            self.transport.pauseProducing()
        self._input_pauses.add(reason)


class _FastWire:
    """:class:`WireMixin` on autobahn's internals (the fast path; see the module docstring)."""

    def connectionMade(self) -> None:
        super().connectionMade()
        try:
            self.transport.setTcpNoDelay(True)
        except (AttributeError, OSError):
            pass  # Unix sockets and in-memory transports have no Nagle to turn off

    def close_with(self, code: int, reason: str) -> None:
        """Close with any RFC 6455 code; autobahn drops a peer that does not answer
        within closeHandshakeTimeout."""
        if self.state != self.STATE_OPEN:
            return
        self.sendCloseFrame(code=code, reasonUtf8=_cut_reason(reason), isReply=False)

    def dataReceived(self, data: bytes) -> None:
        self._dataReceived(data)

    def _connectionLost(self, reason: Any) -> None:
        # autobahn leaves its close-handshake timer running after the connection is gone
        # (it fires later and finds nothing to do); a peer that never answered our close
        # would keep the protocol alive until then.
        cancel_leftover_timers(self)
        super()._connectionLost(reason)

    def sendData(self, data: bytes, sync: bool = False, chopsize: Any = None) -> None:
        if chopsize or sync or self.send_queue:
            super().sendData(data, sync, chopsize)
            return
        self.transport.write(data)
        if self.state == self.STATE_OPEN:
            self.trafficStats.outgoingOctetsWireLevel += len(data)
        elif self.state in (self.STATE_CONNECTING, self.STATE_PROXY_CONNECTING):
            self.trafficStats.preopenOutgoingOctetsWireLevel += len(data)
        if self.logOctets:
            self.logTxOctets(data, False)


# --- writing through to the socket --------------------------------------------------
# The names of Twisted's FileDescriptor that write_through reads and sets.
_WRITE_THROUGH_NAMES = ("socket", "dataBuffer", "offset", "_tempDataBuffer", "_tempDataLen", "disconnecting",
                        "producerPaused", "startWriting")


def _socket_descriptor(transport: Any) -> Any:
    """The Twisted FileDescriptor (a TCP connection) under *transport*: the transport
    itself or a few wrapping layers down (TLS, the connection guard); None if there is none
    or it lacks a name :func:`write_through` needs."""
    from twisted.internet.abstract import FileDescriptor

    for _ in range(8):
        if transport is None:
            return None
        if isinstance(transport, FileDescriptor):
            if all(hasattr(transport, name) for name in _WRITE_THROUGH_NAMES) \
                    and callable(getattr(transport.socket, "send", None)):
                return transport
            return None
        transport = getattr(transport, "transport", None)
    return None


class _WriteThrough:
    """Installed as a TCP connection's ``startWriting``: send now, wait for room only if needed.

    Twisted's ``FileDescriptor.write`` buffers the bytes and calls ``startWriting``,
    which asks the reactor to report the socket writable; the bytes go out on the next
    loop turn, after two ``epoll_ctl`` calls (watch, unwatch) and one more wake-up.
    Here, when nothing older is waiting, the buffered bytes are sent at once; only what
    the kernel does not take (its buffer is full) stays in Twisted's buffer, and the
    reactor is asked to report room as before.  Order is kept (the immediate send happens
    only while nothing older is buffered), and so is flow control: when Twisted has just
    paused the producer (its buffer is over ``bufferSize``), or the connection is being
    closed, the original path runs.
    """

    __slots__ = ("fd", "register")

    def __init__(self, fd: Any):
        self.fd = fd
        self.register = type(fd).startWriting.__get__(fd)

    def __call__(self) -> None:
        fd = self.fd
        if fd._tempDataLen and fd.offset == len(fd.dataBuffer) and not fd.disconnecting and not fd.producerPaused:
            pending = fd._tempDataBuffer
            data = pending[0] if len(pending) == 1 else b"".join(pending)
            try:
                sent = fd.socket.send(data)
            except OSError:
                # No room (EAGAIN/ENOBUFS), or the connection is broken: the reactor's
                # doWrite tries again and reports a lost connection the usual way.
                sent = 0
            fd._tempDataBuffer = []
            fd._tempDataLen = 0
            if sent == len(data):
                fd.dataBuffer = b""
                fd.offset = 0
                return
            fd.dataBuffer = data
            fd.offset = sent
        self.register()


def write_through(transport: Any) -> bool:
    """Make the TCP connection under *transport* send written bytes at once (see
    :class:`_WriteThrough`).  False, and nothing changed, when there is no such
    connection or Twisted's FileDescriptor lacks a name this relies on."""
    fd = _socket_descriptor(transport)
    if fd is None:
        return False
    if not isinstance(fd.__dict__.get("startWriting"), _WriteThrough):
        fd.startWriting = _WriteThrough(fd)
    return True


# Seconds a connection being dropped gets to flush our close frame before it is cut.
DROP_GRACE = 1.0
# Frames larger than this go out as two writes (header, payload) instead of one copy.
_JOIN_BELOW = 16 * 1024


class _FastFrames(_InputPauses, _FastWire):
    """Once autobahn has done the opening handshake, frames are read by
    :class:`sysadmd.wire.frames.FrameReader` and text frames written with our own header.

    autobahn keeps the handshake, pings (its auto-ping and its answers to the peer's),
    the close handshake with its timeout and the close bookkeeping: close frames go to its
    ``onCloseFrame``, pings and pongs to its ``processControlFrame``, protocol errors
    (1002) and oversized messages (1009) to its ``_fail_connection``.  autobahn's
    ``processData`` is its hook for the bytes after the handshake, so none are lost.

    **Reading stops while writing is stuck.**  Whatever we write in answer to what we
    read (replies, pongs, close frames) can only grow our buffers if the peer does not
    read; so while the connection's outgoing buffer is over its limit (the transport
    tells the registered producer, which calls :meth:`output_congested`) we stop reading
    the socket and stop parsing what was already read, and go on once it drains
    (:meth:`output_drained`).  Pongs are counted by the same rule: while congested, only
    the answer to the latest ping is kept (RFC 6455 §5.5.3 allows answering just that
    one) and it goes out first once the buffer drains, so a peer flooding pings without
    reading costs at most one TCP read of input and one pending pong.
    :meth:`pause_input` / :meth:`resume_input` take a reason, so other holds (the
    bridge pauses a sender while its receiver is slow) combine with this one.
    """

    masked_input = True  # what RFC 6455 says the peer sends: clients mask, servers do not
    _reader: Optional[frames.FrameReader] = None
    _input_pauses: Optional[Set[str]] = None
    _drain_held = False  # frames are waiting in the reader until input resumes
    _out_congested = False
    _pending_pong: Optional[bytes] = None
    _drop_call: Any = None

    def dataReceived(self, data: bytes) -> None:
        reader = self._reader
        if reader is None:
            super().dataReceived(data)  # the handshake; then autobahn calls processData
            return
        if self.state == self.STATE_CLOSED:
            return
        reader.feed(data)
        self._drain(reader)

    def processData(self) -> bool:
        """autobahn's hook once open: hand its buffer (bytes after the handshake) to the reader."""
        if self._reader is None:
            self._reader = frames.FrameReader(self.message_limit(), masked=self.masked_input)
        data, self.data = self.data, b""
        self._reader.feed(data)
        self._drain(self._reader)
        return False

    def message_limit(self) -> int:
        """The largest message accepted now (checked before each frame is parsed)."""
        return self.maxMessagePayloadSize or 2 ** 63

    # --- input flow control ---------------------------------------------------------

    def resume_input(self, reason: str) -> None:
        if not self._input_pauses or reason not in self._input_pauses:
            return
        self._input_pauses.discard(reason)
        if self._input_pauses or self.state == self.STATE_CLOSED:
            return
        if self.transport is not None:
            self.transport.resumeProducing()
        if self._drain_held:
            self._drain_held = False
            # Not from inside the transport's write path that told us it drained.
            self.factory.reactor.callLater(0, self._drain_later)

    def _abort_now(self) -> None:
        self._drop_call = None
        if self.transport is not None:
            self.transport.abortConnection()

    def _drain_later(self) -> None:
        if self._reader is not None and self.state != self.STATE_CLOSED and not self._input_pauses:
            self._drain(self._reader)

    def output_congested(self) -> None:
        """The transport's send buffer is over its limit (from the registered producer)."""
        self._out_congested = True
        self.pause_input("write")

    def output_drained(self) -> None:
        """The transport's send buffer drained (from the registered producer)."""
        self._out_congested = False
        pong, self._pending_pong = self._pending_pong, None
        if pong is not None:
            super().sendPong(pong)
        self.resume_input("write")

    def sendPong(self, payload: Optional[bytes] = None) -> None:
        if self._out_congested:
            self._pending_pong = payload or b""  # replaces an older unanswered ping
            return
        super().sendPong(payload)

    # A subclass's path for its commonest frames, tried before each general parse (the
    # bridge's relay: bridge/protocol.py): ``inline_frames(reader)`` handles whole frames
    # at the reader's front (FrameReader.front/skip) and says whether it took any.
    inline_frames: Any = None

    def _drain(self, reader: frames.FrameReader) -> None:
        inline = self.inline_frames
        while True:
            if self._input_pauses:
                self._drain_held = True
                return
            if inline is not None and inline(reader):
                if self.state == self.STATE_CLOSED:
                    return
                if self._input_pauses:
                    continue
            reader.max_message = self.message_limit()
            try:
                frame = reader.pop()
            except frames.FrameError as e:
                self._fail_connection(e.code, e.reason)
                if self.state == self.STATE_CLOSED:
                    return
                continue
            if frame is None:
                if reader.dropped_frames > frames.MAX_DROPPED_FRAMES and self._drop_call is None:
                    # Refused (1009) and still streaming data frames instead of closing:
                    # our close frame still goes out, then the connection is cut (TLS
                    # would otherwise go on reading while it waits for the peer's close).
                    self.dropConnection(abort=False)
                    self._drop_call = self.factory.reactor.callLater(DROP_GRACE, self._abort_now)
                return
            opcode, payload = frame
            if opcode < frames.CLOSE:
                if self.autoPingTimeoutCall and self.autoPingRestartOnAnyTraffic:
                    self._cancelAutoPingTimeoutCall()
                if not self.failedByMe:
                    self.onMessage(payload, opcode == frames.BINARY)
            elif opcode == frames.CLOSE:
                code, reason = frames.parse_close(payload)
                if self.onCloseFrame(code, reason):
                    return
            else:
                # autobahn's own ping answer and auto-ping bookkeeping
                self.current_frame = FrameHeader(opcode, True, 0, len(payload), None)
                self.control_frame_data = [payload]
                self.processControlFrame()
                self.current_frame = None
            if self.state == self.STATE_CLOSED:
                return


# Opening-handshake request limits (twisted.web applies the same ones on the HTTPS site).
MAX_HEADER_LINE = 16 * 1024
MAX_HEADER_BLOCK = 64 * 1024
_ORIGIN_HEADERS = (b"origin", b"sec-websocket-origin")


def head_too_large(head: bytes) -> Optional[str]:
    """Why *head* (a request head so far) is refused with HTTP 431, or None."""
    longest = max((len(line) for line in head.split(b"\r\n")), default=0)
    if longest > MAX_HEADER_LINE:
        return f"a request header line is longer than {MAX_HEADER_LINE} bytes"
    if len(head) > MAX_HEADER_BLOCK:
        return f"the request head is longer than {MAX_HEADER_BLOCK} bytes"
    return None


def take_origin(head: bytes) -> "tuple[bytes, Optional[str]]":
    """``(head without its Origin lines, the first Origin value or None)``.

    *head* is a request line and header lines, each ending in CRLF (RFC 7230 §3.2
    syntax: ``name ":" OWS value OWS``; names are case-insensitive).
    """
    origin = None
    kept = []
    for line in head.split(b"\r\n"):
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() in _ORIGIN_HEADERS:
            if origin is None:
                origin = value.strip()[:256].decode("latin-1")
            continue
        kept.append(line)
    return b"\r\n".join(kept), origin


class _FastServer(_FastFrames):
    """Server side: reads masked client frames, writes unmasked ones.

    **Any Origin.**  Upstream's programs send ``Origin: sysadm-client`` (the Qt client)
    and ``Origin: sysadm-server`` (a server dialling a bridge) — not URLs, which
    autobahn refuses with HTTP 400 before any origin policy is consulted — and browsers
    send real origins or ``null``.  Like upstream we accept them all: no credential of
    ours rides on a cookie or other ambient browser state (every login is an explicit
    message on the connection), so a page on another origin gains nothing a direct
    client would not have.  :meth:`processHandshake` takes the Origin header out of the
    request before autobahn validates it and keeps it in :attr:`client_origin`.

    **Bounded request head.**  A header line over 16 KiB, or a request head over 64 KiB
    without its blank line, is answered with HTTP 431 and the connection closed (autobahn
    would buffer it until its handshake timeout).
    """

    masked_input = True
    client_origin: Optional[str] = None

    def processHandshake(self) -> None:
        data = self.data
        end = data.find(b"\r\n\r\n")
        head = data if end < 0 else data[:end + 2]
        what = head_too_large(head)
        if what is not None:
            self.data = b""
            self.failHandshake(what, 431)
            return
        if end < 0:
            return  # wait for the rest of the head
        stripped, origin = take_origin(head)
        if origin is not None:
            self.client_origin = origin
            self.data = stripped + data[end + 2:]
        super().processHandshake()

    def succeedHandshake(self, res: Any) -> None:
        super().succeedHandshake(res)
        if self.state == self.STATE_OPEN:
            from sysadmd.runtime.listeners import handshake_finished

            handshake_finished(self.transport)

    def send_text_frame(self, data: bytes) -> None:
        """One text frame (UTF-8 *data*); nothing once the connection is closing."""
        if self.state != self.STATE_OPEN:
            return
        n = len(data)
        if n < _JOIN_BELOW:
            # The relay's hot path: sendData's own fast path, without its call.
            frame = (bytes((0x81, n)) if n < 126 else b"\x81\x7e" + n.to_bytes(2, "big")) + data
            if self.send_queue or self.logOctets:
                self.sendData(frame)
                return
            self.transport.write(frame)
            self.trafficStats.outgoingOctetsWireLevel += len(frame)
        else:
            self.sendData(frames.frame_header(frames.TEXT, n))
            self.sendData(data)


class _FastClient(_FastFrames):
    """Client side: reads unmasked server frames, writes masked ones (a fresh key each)."""

    masked_input = False

    def send_text_frame(self, data: bytes) -> None:
        """One masked text frame (UTF-8 *data*); nothing once the connection is closing."""
        if self.state != self.STATE_OPEN:
            return
        key = os.urandom(4)
        self.sendData(frames.frame_header(frames.TEXT, len(data), mask=key) + frames.unmask(data, key))


# --- autobahn's public data path (the fallback) ----------------------------------------
_CLOSE_CODES_SENDCLOSE_TAKES = (CLOSE_NORMAL,)


def public_close_code(code: int) -> int:
    """*code* as autobahn's ``sendClose`` accepts it: 1000 and 3000-4999 unchanged, any other
    RFC 6455 code ``c`` as ``4000 + c % 1000`` (1008 → 4008)."""
    if code in _CLOSE_CODES_SENDCLOSE_TAKES or 3000 <= code <= 4999:
        return code
    return 4000 + code % 1000


class _PublicWire:
    """:class:`WireMixin` on autobahn's public API (see the module docstring)."""

    _ws_closed = False

    def connectionMade(self) -> None:
        super().connectionMade()
        try:
            self.transport.setTcpNoDelay(True)
        except (AttributeError, OSError):
            pass

    def close_with(self, code: int, reason: str) -> None:
        if self._ws_closed:
            return
        self.sendClose(public_close_code(code), _cut_reason(reason).decode("utf-8"))

    def connectionLost(self, reason: Any) -> None:
        self._ws_closed = True
        # autobahn leaves its close-handshake timer running; cancel it if it is there
        # under the name we know (nothing else of autobahn's is touched on this path).
        cancel_leftover_timers(self)
        super().connectionLost(reason)


class _PublicFrames(_InputPauses, _PublicWire):
    """:class:`_FastFrames`' interface on autobahn's own frame path."""

    _input_pauses: Optional[Set[str]] = None
    _drop_call: Any = None

    def message_limit(self) -> int:
        return self.factory.maxMessagePayloadSize or 2 ** 63

    def onMessageBegin(self, isBinary: bool) -> None:
        # autobahn checks the message size against this as each frame header arrives.
        self.maxMessagePayloadSize = self.message_limit()
        super().onMessageBegin(isBinary)


    def resume_input(self, reason: str) -> None:
        if not self._input_pauses or reason not in self._input_pauses:
            return
        self._input_pauses.discard(reason)
        if not self._input_pauses and not self._ws_closed and self.transport is not None:
            self.transport.resumeProducing()

    def output_congested(self) -> None:
        self.pause_input("write")

    def output_drained(self) -> None:
        self.resume_input("write")

    def _send_message(self, data: bytes) -> None:
        if self._ws_closed:
            return
        # autobahn applies maxMessagePayloadSize to what we send as well; our limit is
        # for what we read (onMessageBegin sets it), so it is lifted for the send.
        limit = self.maxMessagePayloadSize
        self.maxMessagePayloadSize = 0
        try:
            self.sendMessage(data, isBinary=False)
        except Disconnected:
            pass  # closing: nothing more goes out, as on the fast path
        finally:
            self.maxMessagePayloadSize = limit


class _PublicServer(_PublicFrames):
    """Server side on the public path.  The request head is read here, at the Twisted
    protocol's ``dataReceived``, before autobahn sees it: the 431 limits are applied and
    the Origin header is taken out (kept in :attr:`client_origin`), as on the fast path."""

    client_origin: Optional[str] = None
    _head_done = False
    _head_buf = b""

    def dataReceived(self, data: bytes) -> None:
        if self._head_done:
            super().dataReceived(data)
            return
        buf = self._head_buf + data
        end = buf.find(b"\r\n\r\n")
        head = buf if end < 0 else buf[:end + 2]
        what = head_too_large(head)
        if what is not None:
            self._head_done, self._head_buf = True, b""
            self._ws_closed = True  # nothing of autobahn's runs for this connection
            self.transport.write(f"HTTP/1.1 431 {what}\r\nConnection: close\r\n\r\n".encode("ascii"))
            self.transport.loseConnection()
            return
        if end < 0:
            self._head_buf = buf
            return
        self._head_done, self._head_buf = True, b""
        stripped, origin = take_origin(head)
        if origin is not None:
            self.client_origin = origin
            buf = stripped + buf[end + 2:]
        super().dataReceived(buf)

    def onConnect(self, request: Any) -> Any:
        result = super().onConnect(request)
        from sysadmd.runtime.listeners import handshake_finished

        handshake_finished(self.transport)
        return result

    def send_text_frame(self, data: bytes) -> None:
        self._send_message(data)


class _PublicClient(_PublicFrames):
    def send_text_frame(self, data: bytes) -> None:
        self._send_message(data)


# What the protocols import: the fast classes when autobahn has what they hook, else
# the public-path ones.
WireMixin: type
LeanServerMixin: type
LeanClientMixin: type
if FAST:
    WireMixin, LeanServerMixin, LeanClientMixin = _FastWire, _FastServer, _FastClient
else:
    WireMixin, LeanServerMixin, LeanClientMixin = _PublicWire, _PublicServer, _PublicClient
