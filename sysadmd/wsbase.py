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

from typing import Any


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
