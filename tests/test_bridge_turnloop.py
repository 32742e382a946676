"""bridge/turnloop.py on a real epoll reactor (a private instance, never run or installed):
one flush per turn, before the reactor polls and after it has handled what it polled."""

import socket
import time

from twisted.internet import main, task
from twisted.internet.abstract import FileDescriptor
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.testing import MemoryReactorClock
from twisted.trial import unittest

from bridge import turnloop


class Dirty:
    """Stands for a TLS connection: records its flushes."""

    def __init__(self, events):
        self.events = events

    def _flush_pending(self):
        self.events.append("flush")


class Reader(FileDescriptor):
    """One end of a socket pair, watched for reading."""

    def __init__(self, reactor, sock, events, on_read=None):
        super().__init__(reactor)
        self.sock = sock
        self.events = events
        self.on_read = on_read
        self.connected = 1

    def fileno(self):
        return self.sock.fileno()

    def doRead(self):
        if not self.sock.recv(4096):
            return main.CONNECTION_DONE  # Twisted then calls connectionLost
        self.events.append("read")
        if self.on_read is not None:
            self.on_read()

    def connectionLost(self, reason):
        self.events.append("lost")


class FastReader(Reader):
    pass


class TurnLoopTests(unittest.TestCase):
    def setUp(self):
        self.reactor = EPollReactor()
        self.addCleanup(self._close_reactor)
        self.events = []
        self.loop = turnloop.turn_loop(self.reactor, (FastReader,))
        self.assertIsNotNone(self.loop)
        self.addCleanup(self.loop.uninstall)

    def _close_reactor(self):
        for selectable in list(self.reactor.getReaders()):
            self.reactor.removeReader(selectable)
        self.reactor._poller.close()
        for fd in (self.reactor.waker.i, self.reactor.waker.o):
            try:
                socket.close(fd)
            except OSError:
                pass

    def pair(self, kind=Reader, on_read=None):
        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        a.setblocking(False)
        reader = kind(self.reactor, a, self.events, on_read)
        self.reactor.addReader(reader)
        self.addCleanup(self.reactor.removeReader, reader)
        return reader, b

    def test_written_while_reading_is_flushed_in_the_same_turn(self):
        conn = Dirty(self.events)
        reader, other = self.pair(FastReader, on_read=lambda: self.loop.mark(conn))
        other.send(b"x")
        self.reactor.doIteration(1)
        self.assertEqual(self.events, ["read", "flush"])
        self.assertEqual(self.loop.dirty, [])

    def test_written_by_a_timed_call_is_flushed_before_the_poll(self):
        conn = Dirty(self.events)
        reader, other = self.pair()
        self.reactor.callLater(0, self.loop.mark, conn)
        self.reactor.runUntilCurrent()
        other.send(b"x")
        self.reactor.doIteration(1)
        self.assertEqual(self.events, ["flush", "read"])

    def test_one_flush_for_many_connections_and_marks(self):
        conns = [Dirty(self.events) for _ in range(5)]

        def mark_all():
            for conn in conns:
                self.loop.mark(conn)

        readers = [self.pair(FastReader, on_read=mark_all) for _ in range(3)]
        for _, other in readers:
            other.send(b"x")
        before = self.loop.flushes
        self.reactor.doIteration(1)
        self.assertEqual(self.events.count("read"), 3)
        self.assertEqual(self.loop.flushes - before, 1)
        self.assertEqual(self.events[-15:], ["flush"] * 15)  # each mark is flushed (a connection flushes once per mark)

    def test_a_flush_that_writes_more_is_flushed_again(self):
        second = Dirty(self.events)

        class Chain(Dirty):
            def _flush_pending(inner):
                self.events.append("first")
                self.loop.mark(second)

        self.loop.mark(Chain(self.events))
        self.loop.flush()
        self.assertEqual(self.events, ["first", "flush"])

    def test_a_timer_set_by_the_flush_bounds_the_poll(self):
        fired = []

        class SetsTimer(Dirty):
            def _flush_pending(inner):
                self.reactor.callLater(0, fired.append, True)

        self.loop.mark(SetsTimer(self.events))
        started = time.monotonic()
        self.reactor.doIteration(5)  # mainLoop computed 5 s before the flush set the timer
        self.assertLess(time.monotonic() - started, 1.0)

    def test_tls_connections_skip_the_legacy_log_context_others_keep_it(self):
        calls = []
        original = turnloop.legacy_log.callWithLogger

        def counting(logger, func, *args, **kw):
            calls.append(type(logger).__name__)
            return original(logger, func, *args, **kw)

        self.patch(turnloop.legacy_log, "callWithLogger", counting)
        fast, fast_other = self.pair(FastReader)
        plain, plain_other = self.pair(Reader)
        fast_other.send(b"x")
        plain_other.send(b"x")
        self.reactor.doIteration(1)
        self.assertEqual(self.events.count("read"), 2)
        self.assertEqual(calls, ["Reader"])

    def test_a_closed_peer_is_reported_through_twisted(self):
        reader, other = self.pair(FastReader)
        other.close()
        self.reactor.doIteration(1)
        self.assertIn("lost", self.events)

    def test_an_exception_while_reading_is_logged_and_drops_the_connection(self):
        def boom():
            raise ValueError("broken protocol")

        reader, other = self.pair(FastReader, on_read=boom)
        other.send(b"x")
        self.reactor.doIteration(1)
        self.assertEqual(self.events, ["read", "lost"])
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_one_loop_per_reactor_and_uninstall_restores_the_reactor(self):
        self.assertIs(turnloop.turn_loop(self.reactor), self.loop)
        self.assertEqual(self.reactor.doIteration, self.loop.do_iteration)
        self.loop.uninstall()
        self.assertNotIn("doIteration", self.reactor.__dict__)
        self.assertEqual(self.reactor.doIteration.__func__, EPollReactor.doPoll)


class NoHookTests(unittest.TestCase):
    def test_fake_clocks_get_no_loop(self):
        self.assertIsNone(turnloop.turn_loop(task.Clock()))
        self.assertIsNone(turnloop.turn_loop(MemoryReactorClock()))
