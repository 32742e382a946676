"""Connection exhaustion (issue 7 item 13), with real sockets and short real limits.

* a connection that trickles its handshake one byte at a time is closed at the
  absolute HANDSHAKE_TIMEOUT (TLS listener, local socket, bridge);
* MAX_CONNECTIONS_PER_ADDRESS holds for real connections, counted from accept;
* idle TCP connections count toward the accept cap before any handshake;
* the open-file limit is raised at start and caps what is accepted;
* refusals are logged, at most once per interval per kind.
"""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest
from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from sysadmd.runtime import listeners
from tests.sec_wire_support import handshake, open_raw, open_ws, sleep, until
from tests.support import make_config, short_tempdir, start_daemon
from tests.test_bridge_wss import start_bridge


@defer.inlineCallbacks
def trickle(client, data: bytes, every: float = 0.1, limit: float = 6.0):
    """Send *data* one byte at a time until the peer closes; returns seconds it took."""
    start = reactor.seconds()
    for byte in data:
        if client.is_lost or reactor.seconds() - start > limit:
            break
        client.send(bytes([byte]))
        yield sleep(every)
    yield client.wait(lambda: client.is_lost, timeout=max(0.1, limit - (reactor.seconds() - start)),
                      what="the daemon closing the trickling connection")
    return reactor.seconds() - start


SLOW_HEAD = handshake() * 4  # far more bytes than 1 s of trickling sends


@pytest.mark.slow  # waits seconds of real time (timeouts, floods)
class HandshakeDeadlineTests(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def setUp(self):
        cfg = make_config(short_tempdir(self), HANDSHAKE_TIMEOUT=1, SOCKET=short_tempdir(self) + "/s.sock")
        self.running = yield start_daemon(self, cfg)
        self.guard = self.running.daemon.listeners["wss"].guard

    @defer.inlineCallbacks
    def test_trickled_header_on_the_tls_listener_is_closed_at_the_deadline(self):
        client = yield open_raw(self, self.running.port)
        took = yield trickle(client, SLOW_HEAD)
        self.assertGreater(took, 0.8)
        self.assertLess(took, 3.0)
        self.assertIsNone(client.head)
        self.assertEqual(self.guard.refused_total["handshake"], 1)

    @defer.inlineCallbacks
    def test_a_tcp_connection_that_never_starts_tls_is_closed_too(self):
        client = yield open_raw(self, self.running.port, tls=False)
        yield client.wait(lambda: client.is_lost, timeout=4, what="the silent connection being closed")
        self.assertEqual(self.guard.refused_total["handshake"], 1)

    @defer.inlineCallbacks
    def test_trickled_header_on_the_local_socket_is_closed_at_the_deadline(self):
        client = yield open_raw(self, unix=self.running.config.socket)
        took = yield trickle(client, SLOW_HEAD)
        self.assertLess(took, 3.0)
        self.assertIsNone(client.head)

    @defer.inlineCallbacks
    def test_an_established_connection_outlives_the_deadline(self):
        client = yield open_ws(self, self.running.port)
        yield sleep(1.5)
        self.assertFalse(client.is_lost)
        self.assertEqual(self.guard.refused_total["handshake"], 0)

    @defer.inlineCallbacks
    def test_a_kept_alive_https_connection_gets_the_deadline_again(self):
        client = yield open_raw(self, self.running.port)
        client.send(b"GET /rpc/query HTTP/1.1\r\nHost: x\r\n\r\n")
        yield client.wait(lambda: b"\r\n\r\n" in client.raw, what="the first reply")
        self.assertIn(b" 401 ", client.raw.split(b"\r\n", 1)[0])
        yield sleep(1.2)  # idle between requests: within twisted.web's own idle timeout
        took = yield trickle(client, b"GET /rpc/query HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: y\r\n" * 20)
        self.assertLess(took, 2.0)  # the second deadline counted from the end of the first request


@pytest.mark.slow  # waits seconds of real time (timeouts, floods)
class BridgeHandshakeDeadlineTests(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_trickled_header_on_the_bridge_is_closed_at_the_deadline(self):
        bridge = yield start_bridge(self, HANDSHAKE_TIMEOUT=1)
        client = yield open_raw(self, bridge.listener.port.getHost().port)
        took = yield trickle(client, SLOW_HEAD)
        self.assertLess(took, 3.0)
        self.assertEqual(bridge.listener.guard.refused_total["handshake"], 1)


@pytest.mark.slow  # waits seconds of real time (timeouts, floods)
class PerAddressCapTests(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_per_address_cap_holds_for_real_connections(self):
        cfg = make_config(short_tempdir(self), MAX_CONNECTIONS_PER_ADDRESS=3, SOCKET="none")
        running = yield start_daemon(self, cfg)
        guard = running.daemon.listeners["wss"].guard
        clients = []
        for _ in range(3):
            clients.append((yield open_ws(self, running.port)))
        extra = yield open_raw(self, running.port, tls=False)
        yield extra.wait(lambda: extra.is_lost, timeout=3, what="the 4th connection being refused")
        self.assertEqual(guard.refused_total["address"], 1)
        self.assertEqual(guard.by_address["127.0.0.1"], 3)
        # a freed slot is usable again
        clients[0].abort()
        yield until(lambda: guard.by_address["127.0.0.1"] == 2, what="the slot being freed")
        again = yield open_ws(self, running.port)
        again.send(b"")
        self.assertFalse(again.is_lost)

    @defer.inlineCallbacks
    def test_the_bridge_caps_per_address_too(self):
        bridge = yield start_bridge(self, MAX_CONNECTIONS_PER_ADDRESS=2)
        port = bridge.listener.port.getHost().port
        for _ in range(2):
            yield open_ws(self, port)
        extra = yield open_raw(self, port, tls=False)
        yield extra.wait(lambda: extra.is_lost, timeout=3, what="the 3rd connection being refused")
        self.assertEqual(bridge.listener.guard.refused_total["address"], 1)

    @defer.inlineCallbacks
    def test_idle_tcp_connections_count_from_accept(self):
        # MAX_CONNECTIONS=2 gives an accept cap of 2 + 8; none of these ever handshakes.
        cfg = make_config(short_tempdir(self), MAX_CONNECTIONS=2, MAX_CONNECTIONS_PER_ADDRESS=0, SOCKET="none")
        running = yield start_daemon(self, cfg)
        guard = running.daemon.listeners["wss"].guard
        self.assertEqual(guard.max_total, 10)
        idle = []
        for _ in range(10):
            idle.append((yield open_raw(self, running.port, tls=False)))
        yield until(lambda: guard.total == 10, what="ten counted connections")
        self.assertEqual(len(running.server.sessions), 0)
        extra = yield open_raw(self, running.port, tls=False)
        yield extra.wait(lambda: extra.is_lost, timeout=3, what="the 11th connection being refused")
        self.assertEqual(guard.refused_total["total"], 1)
        self.assertFalse(any(c.is_lost for c in idle))


class LimitUnitTests(unittest.TestCase):
    def test_accept_cap_leaves_room_for_refusals_and_descriptors(self):
        self.assertEqual(listeners.accept_cap(4096, 1 << 20), 4096 + 256)
        self.assertEqual(listeners.accept_cap(3, 1 << 20), 11)
        self.assertEqual(listeners.accept_cap(4096, 1024), 1024 - listeners.RESERVED_DESCRIPTORS)
        self.assertEqual(listeners.accept_cap(4096, resource.RLIM_INFINITY), 4096 + 256)

    def test_descriptor_limit_is_raised_to_the_hard_limit(self):
        code = ("import resource\n"
                "from sysadmd.runtime.listeners import raise_descriptor_limit\n"
                "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
                "resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))\n"
                "before, after = raise_descriptor_limit()\n"
                "print(before, after, resource.getrlimit(resource.RLIMIT_NOFILE)[0], hard)\n")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                             cwd=__file__.rsplit("/tests/", 1)[0])
        self.assertEqual(out.returncode, 0, out.stderr)
        before, after, now, hard = (int(x) for x in out.stdout.split())
        self.assertEqual(now, after)
        if hard > 256:
            self.assertEqual(before, 256)
            self.assertEqual(after, hard if hard != resource.RLIM_INFINITY else 1 << 20)

    def test_refusals_are_logged_once_per_interval(self):
        clock = Clock()
        guard = listeners.ConnectionGuard(clock, max_total=1, per_address=0, handshake_timeout=0)
        events = []
        observer = lambda e: events.append(e) if e.get("log_namespace") == "sysadmd.runtime.listeners" else None
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        self.assertIsNone(guard.admit("10.0.0.1"))
        for _ in range(50):
            self.assertEqual(guard.admit("10.0.0.2"), "total")
        self.assertEqual(len(events), 1)
        clock.advance(listeners.LOG_EVERY + 1)
        guard.admit("10.0.0.2")
        self.assertEqual(len(events), 2)
        self.assertEqual(events[-1]["more"], " (49 more since the last report)")
        self.assertEqual(guard.refused_total["total"], 51)
        guard.release("10.0.0.1")
        self.assertIsNone(guard.admit("10.0.0.2"))
