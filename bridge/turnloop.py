"""One write flush per reactor turn, shared by all of the bridge's TLS connections.

:class:`bridge.tlsfast.TLSServer` gathers the small writes of a turn and encrypts them
together (one TLS record, one ``send``).  Each connection used to ask for its flush with
its own ``callLater(0)``: a DelayedCall object, two heap operations and the reactor's
timer bookkeeping for every relayed frame.  A :class:`TurnLoop` keeps one list of the
connections with plaintext waiting and flushes them all

* right after the reactor has handled the events of one ``epoll_wait`` (what was read
  in the turn goes out in the same turn), and
* right before the reactor polls again (what timed calls and threads wrote in
  ``runUntilCurrent`` goes out before the reactor can block).

So nothing written waits past the next poll, as with ``callLater(0)``.  It hooks the
reactor's ``doIteration`` (the call ``mainLoop`` makes once per turn).  On an epoll
reactor the hook also polls itself: a TLS connection's plain read event goes straight to
its ``doRead`` (an exception is logged and drops the connection, a returned reason
disconnects it, as in Twisted's ``_doReadOrWrite``), its other events to
``_doReadOrWrite``, both without the legacy-log context Twisted sets up around each event
(``log.callWithLogger``); other selectables (listening ports, the waker, timers' fds) go
through Twisted's path unchanged.

:func:`turn_loop` returns the reactor's loop, or ``None`` for a reactor whose
``doIteration`` cannot be hooked (a test Clock, a MemoryReactor): connections then fall
back to ``callLater(0)``.
"""

from __future__ import annotations

import errno
import select
import sys
import weakref
from typing import Any, List, Optional

from twisted.python import log as legacy_log

EPOLLIN = getattr(select, "EPOLLIN", 1)  # only used on an epoll reactor (Linux)

_loops: "weakref.WeakKeyDictionary[Any, TurnLoop]" = weakref.WeakKeyDictionary()


class TurnLoop:
    """The connections waiting for the turn's flush, and the hook that flushes them."""

    def __init__(self, reactor: Any, fast_types: tuple = ()) -> None:
        self.reactor = reactor
        self.fast_types = fast_types  # selectable classes dispatched without the log context
        self.dirty: List[Any] = []  # connections with plaintext waiting (each once: its own flag)
        self.flushes = 0  # turns that flushed something (tests)
        self._original = reactor.doIteration
        self._lean = self._lean_poll_parts(reactor)
        reactor.doIteration = self.do_iteration

    @staticmethod
    def _lean_poll_parts(reactor: Any) -> Optional[tuple]:
        try:
            from twisted.internet.epollreactor import EPollReactor
        except ImportError:  # not Linux
            return None
        if not isinstance(reactor, EPollReactor):
            return None
        parts = tuple(getattr(reactor, name, None)
                      for name in ("_poller", "_selectables", "_doReadOrWrite", "_disconnectSelectable"))
        if any(part is None for part in parts) or not callable(getattr(parts[0], "poll", None)):
            return None
        return parts

    def mark(self, connection: Any) -> None:
        """*connection* has plaintext waiting; its ``_flush_pending`` runs this turn."""
        self.dirty.append(connection)

    def flush(self) -> None:
        # A flush may write more (a TLS alert, a close): loop until nothing waits.
        while self.dirty:
            dirty, self.dirty = self.dirty, []
            self.flushes += 1
            for connection in dirty:
                connection._flush_pending()

    def do_iteration(self, timeout: Optional[float]) -> None:
        if self.dirty:
            self.flush()  # written by timed calls or threads: out before we may block
            sooner = self.reactor.timeout()  # a flush may have set a timer (mainLoop asked before)
            if sooner is not None and (timeout is None or sooner < timeout):
                timeout = sooner
        if self._lean is None:
            self._original(timeout)
        else:
            self._lean_poll(timeout)
        if self.dirty:
            self.flush()

    def _lean_poll(self, timeout: Optional[float]) -> None:
        """Twisted's ``EPollReactor.doPoll``, with TLS connections dispatched directly."""
        poller, selectables, do_read_or_write, disconnect = self._lean
        try:
            events = poller.poll(-1 if timeout is None else timeout, len(selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        fast_types = self.fast_types
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            if type(selectable) in fast_types:
                if event == EPOLLIN:
                    # Twisted's _doReadOrWrite for a plain read event, without its checks
                    # for the other cases: errors are logged and the connection dropped.
                    try:
                        why = selectable.doRead()
                    except BaseException:
                        why = sys.exc_info()[1]
                        legacy_log.err()
                    if why:
                        disconnect(selectable, why, True)
                else:
                    do_read_or_write(selectable, fd, event)
            else:
                legacy_log.callWithLogger(selectable, do_read_or_write, selectable, fd, event)

    def uninstall(self) -> None:
        if self.reactor.__dict__.get("doIteration") == self.do_iteration:
            del self.reactor.doIteration
        self.flush()
        _loops.pop(self.reactor, None)


def turn_loop(reactor: Any, fast_types: tuple = ()) -> Optional[TurnLoop]:
    """The reactor's :class:`TurnLoop`, installed on first use; None if it cannot be."""
    try:
        loop = _loops.get(reactor)
    except TypeError:  # not weak-referenceable
        return None
    if loop is not None:
        for kind in fast_types:
            if kind not in loop.fast_types:
                loop.fast_types += (kind,)
        return loop
    if not callable(getattr(reactor, "doIteration", None)) or not hasattr(reactor, "runUntilCurrent") \
            or type(reactor).__module__.startswith("twisted.internet.task") \
            or type(reactor).__module__.startswith("twisted.internet.testing"):
        return None
    loop = TurnLoop(reactor, fast_types)
    _loops[reactor] = loop
    return loop
