"""Backpressure between peers: a slow receiver pauses the senders relaying to it.

Each connection has one :class:`PeerFlow`, registered as the push producer of its own
transport.  When the transport's send buffer fills, Twisted calls
:meth:`PeerFlow.pauseProducing`: from then on frames for that peer wait in a bounded
queue, and every sender that relays to it is paused (its socket is no longer read) until
the buffer drains (:meth:`PeerFlow.resumeProducing`).  So relayed data waits in the
senders' kernel buffers and on the senders, not in the bridge.

Two limits keep one stuck receiver from holding anyone hostage: past ``limit`` queued
bytes, or after ``stall_timeout`` seconds without draining, the receiver is closed
(1008, with the reason) and its senders resume.

A peer whose own send buffer is full is not read either (``on_congested`` /
``on_drained``, see :class:`sysadmd.wire.wsbase._LeanFrames`): what it sends us would only
make us write more to it (replies, pongs), so a peer that floods pings or requests
without reading the answers cannot grow the bridge's memory.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Deque, Optional, Set

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from sysadmd.wire.close import CLOSE_POLICY

log = Logger()


@implementer(IPushProducer)
class PeerFlow:
    def __init__(self, clock: Any, *, label: str, limit: int, stall_timeout: float,
                 write: Callable[[bytes], None], close: Callable[[int, str], None],
                 pause_reading: Callable[[], None], resume_reading: Callable[[], None],
                 on_congested: Optional[Callable[[], None]] = None,
                 on_drained: Optional[Callable[[], None]] = None):
        self.clock = clock
        self.label = label
        self.limit = limit
        self.stall_timeout = stall_timeout
        self._write = write
        self._close = close
        self._pause_reading = pause_reading
        self._resume_reading = resume_reading
        self._on_congested = on_congested
        self._on_drained = on_drained
        self.congested = False
        self.closing = False
        self.queue: Deque[bytes] = deque()
        self.queued_bytes = 0
        self.held: Set["PeerFlow"] = set()  # senders paused because of us
        self.blockers: Set["PeerFlow"] = set()  # receivers we are paused for
        self.pauses = 0  # times this peer's reading was paused (tests and logs)
        self._stall: Optional[Any] = None

    @property
    def reading_paused(self) -> bool:
        return bool(self.blockers)

    # --- output --------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        """Send one text frame to this peer, queueing while its socket is full."""
        if self.closing:
            return
        if self.congested or self.queue:
            self.queue.append(data)
            self.queued_bytes += len(data)
            if self.queued_bytes > self.limit:
                self.shut(CLOSE_POLICY, f"receiver too slow: {self.queued_bytes} bytes pending (limit {self.limit})")
            return
        self._write(data)

    def relay_from(self, sender: "PeerFlow", data: bytes) -> None:
        """Send a relayed frame; pause *sender* while this peer cannot keep up."""
        if not (self.congested or self.queue or self.closing):
            self._write(data)  # send()'s common case, one call less per relayed frame
        else:
            self.send(data)
        if (self.congested or self.queue) and not self.closing and not sender.closing and sender is not self:
            self._hold(sender)

    def relay_held(self, sender: "PeerFlow") -> None:
        """A relayed frame was just written to this peer past its limit: pause *sender*
        (:meth:`relay_from`'s second half, for the bridge's inline relay path)."""
        if not self.closing and not sender.closing and sender is not self:
            self._hold(sender)

    def shut(self, code: int, reason: str) -> None:
        """Close this peer (slow or stuck receiver) and let its senders go."""
        if self.closing:
            return
        log.warn("closing {peer}: {reason}", peer=self.label, reason=reason)
        self.closing = True
        self._drop_queue()
        self._release_all()
        self._close(code, reason)

    def lost(self) -> None:
        """The connection is gone: free everything it held or was held by."""
        self.closing = True
        self._drop_queue()
        self._release_all()
        for receiver in list(self.blockers):
            receiver.held.discard(self)
        self.blockers.clear()

    # --- IPushProducer (called by this peer's transport) -------------------------------
    def pauseProducing(self) -> None:
        if self.congested:
            return
        self.congested = True
        if self._stall is None and not self.closing:
            self._stall = self.clock.callLater(self.stall_timeout, self._stalled)
        if self._on_congested is not None:
            self._on_congested()

    def resumeProducing(self) -> None:
        self.congested = False
        self._cancel_stall()
        while self.queue and not self.congested and not self.closing:
            data = self.queue.popleft()
            self.queued_bytes -= len(data)
            self._write(data)
        if not self.congested and not self.queue:
            self._release_all()
        if not self.congested and self._on_drained is not None:
            self._on_drained()

    def stopProducing(self) -> None:
        self.lost()

    # --- internals -----------------------------------------------------------------------
    def _hold(self, sender: "PeerFlow") -> None:
        if sender in self.held:
            return
        self.held.add(sender)
        sender.blockers.add(self)
        if len(sender.blockers) == 1:
            sender.pauses += 1
            sender._pause_reading()

    def _release_all(self) -> None:
        held, self.held = self.held, set()
        for sender in held:
            sender.blockers.discard(self)
            if not sender.blockers and not sender.closing:
                sender._resume_reading()

    def _stalled(self) -> None:
        self._stall = None
        self.shut(CLOSE_POLICY, f"receiver stopped reading for {self.stall_timeout:g} s")

    def _cancel_stall(self) -> None:
        if self._stall is not None:
            if self._stall.active():
                self._stall.cancel()
            self._stall = None

    def _drop_queue(self) -> None:
        self._cancel_stall()
        self.queue.clear()
        self.queued_bytes = 0
