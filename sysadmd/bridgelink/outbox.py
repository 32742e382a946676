"""The link socket's send queue: one WebSocket shared by every bridged client.

While the socket's send buffer is full (the transport paused us), frames wait here in
arrival order.  Each bridged session may have at most ``limit`` bytes waiting; past it
that session alone is cut off (its queued frames dropped, *on_overflow* told), so one
slow or flooding client can neither grow the daemon's memory nor starve the others.
The link's own messages (answers to the bridge) have the same bound; past it
*on_overflow* is told with ``None`` and the link is dropped.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Deque, Dict, Optional, Tuple

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer


@implementer(IPushProducer)
class LinkOutbox:
    def __init__(self, write: Callable[[bytes], None], limit: int,
                 on_overflow: Callable[[Optional[str], int], None]):
        self._write = write
        self.limit = limit
        self._on_overflow = on_overflow
        self.paused = False
        self.closed = False
        self._queue: Deque[Tuple[Optional[str], bytes]] = deque()
        self._pending: Dict[str, int] = {}

    @property
    def queued_bytes(self) -> int:
        return sum(len(p) for _, p in self._queue)

    def pending_for(self, key: Optional[str]) -> int:
        return self._pending.get(key, 0)

    def send(self, payload: bytes, key: Optional[str] = None) -> bool:
        """Write *payload* now or queue it; ``False`` if it was dropped.

        *key* names the bridged session the frame belongs to (``None``: the link's own
        messages to the bridge).
        """
        if self.closed:
            return False
        if not self.paused and not self._queue:
            self._write(payload)
            return True
        self._queue.append((key, payload))
        waiting = self._pending.get(key, 0) + len(payload)
        self._pending[key] = waiting
        if waiting > self.limit:
            if key is not None:
                self.drop(key)
            self._on_overflow(key, waiting)
            return False
        return True

    def drop(self, key: str) -> None:
        """Forget every queued frame of session *key*."""
        if self._pending.pop(key, None) is not None:
            self._queue = deque(item for item in self._queue if item[0] != key)

    # IPushProducer: the transport tells us when its buffer is full or drained.
    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        while self._queue and not self.paused and not self.closed:
            key, payload = self._queue.popleft()
            left = self._pending.get(key, 0) - len(payload)
            if left > 0:
                self._pending[key] = left
            else:
                self._pending.pop(key, None)
            self._write(payload)

    def stopProducing(self) -> None:
        self.closed = True
        self._queue.clear()
        self._pending.clear()
