"""What every WebSocket protocol of ours (server, bridge, bridge link, client) shares.

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
"""

from __future__ import annotations

import os
from typing import Any, Optional, Set

from autobahn.websocket.protocol import FrameHeader

from sysadmd import frames


class WireMixin:
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
        data = reason.encode("utf-8")[:123]
        while data:
            try:
                data.decode("utf-8")
                break
            except UnicodeDecodeError:
                data = data[:-1]
        self.sendCloseFrame(code=code, reasonUtf8=data, isReply=False)

    def dataReceived(self, data: bytes) -> None:
        self._dataReceived(data)

    def _connectionLost(self, reason: Any) -> None:
        # autobahn leaves its close-handshake timer running after the connection is gone
        # (it fires later and finds nothing to do); a peer that never answered our close
        # would keep the protocol alive until then.
        call = getattr(self, "closeHandshakeTimeoutCall", None)
        if call is not None:
            try:
                call.cancel()
            except Exception:
                pass
            self.closeHandshakeTimeoutCall = None
        drop = getattr(self, "_drop_call", None)
        if drop is not None and drop.active():
            drop.cancel()
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


# Seconds a connection being dropped gets to flush our close frame before it is cut.
DROP_GRACE = 1.0
# Frames larger than this go out as two writes (header, payload) instead of one copy.
_JOIN_BELOW = 16 * 1024


class _LeanFrames(WireMixin):
    """Once autobahn has done the opening handshake, frames are read by
    :class:`sysadmd.frames.FrameReader` and text frames written with our own header.

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

    def _drain(self, reader: frames.FrameReader) -> None:
        while True:
            if self._input_pauses:
                self._drain_held = True
                return
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


class LeanServerMixin(_LeanFrames):
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
        longest = max((len(line) for line in head.split(b"\r\n")), default=0)
        if longest > MAX_HEADER_LINE or len(head) > MAX_HEADER_BLOCK:
            self.data = b""
            what = (f"a request header line is longer than {MAX_HEADER_LINE} bytes" if longest > MAX_HEADER_LINE
                    else f"the request head is longer than {MAX_HEADER_BLOCK} bytes")
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
            from sysadmd.listeners import handshake_finished

            handshake_finished(self.transport)

    def send_text_frame(self, data: bytes) -> None:
        """One text frame (UTF-8 *data*); nothing once the connection is closing."""
        if self.state != self.STATE_OPEN:
            return
        if len(data) < _JOIN_BELOW:
            self.sendData(frames.frame_header(frames.TEXT, len(data)) + data)
        else:
            self.sendData(frames.frame_header(frames.TEXT, len(data)))
            self.sendData(data)


class LeanClientMixin(_LeanFrames):
    """Client side: reads unmasked server frames, writes masked ones (a fresh key each)."""

    masked_input = False

    def send_text_frame(self, data: bytes) -> None:
        """One masked text frame (UTF-8 *data*); nothing once the connection is closing."""
        if self.state != self.STATE_OPEN:
            return
        key = os.urandom(4)
        self.sendData(frames.frame_header(frames.TEXT, len(data), mask=key) + frames.unmask(data, key))
