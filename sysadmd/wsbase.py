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
from typing import Any, Optional

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
    """

    masked_input = True  # what RFC 6455 says the peer sends: clients mask, servers do not
    _reader: Optional[frames.FrameReader] = None

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
            self._reader = frames.FrameReader(self.maxMessagePayloadSize or 2 ** 63, masked=self.masked_input)
        data, self.data = self.data, b""
        self._reader.feed(data)
        self._drain(self._reader)
        return False

    def _drain(self, reader: frames.FrameReader) -> None:
        while True:
            try:
                frame = reader.pop()
            except frames.FrameError as e:
                self._fail_connection(e.code, e.reason)
                if self.state == self.STATE_CLOSED:
                    return
                continue
            if frame is None:
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


class LeanServerMixin(_LeanFrames):
    """Server side: reads masked client frames, writes unmasked ones."""

    masked_input = True

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
