"""A subscriber that stops reading is cut off; the others keep receiving."""

import pytest
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from tests.support import FakePasswords, make_config, open_client, short_tempdir, start_daemon
from tests.test_events_subscribe import wait_for

LIMIT = 65536


@pytest.mark.slow  # floods a connection for real
class SlowSubscriberTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        cfg = make_config(short_tempdir(self), max_session_buffer_bytes=LIMIT)
        self.running = yield start_daemon(self, cfg, passwords=FakePasswords({"root": "pw"}))
        self.hub = self.running.server.events

    @defer.inlineCallbacks
    def subscriber(self):
        client = yield open_client(self, self.running)
        yield client.call("rpc", "auth", {"username": "root", "password": "pw"})
        yield client.call("events", "subscribe", "dispatcher")
        return client

    def session_of(self, n):
        return [s for s in self.running.server.sessions if s.kind == "wss"][n]

    @defer.inlineCallbacks
    def test_slow_reader_closed_with_1008_healthy_one_served(self):
        slow = yield self.subscriber()
        healthy = yield self.subscriber()
        slow_session, healthy_session = self.session_of(0), self.session_of(1)
        received = []
        healthy.event_listeners.append(lambda m: received.append(m["args"]["seq"]))
        slow.transport.pauseProducing()  # stop reading: the kernel buffers fill, then ours

        # A steady flood a healthy reader keeps up with: 16 KiB per reactor turn.
        payload = "x" * 8192
        seq = 0
        peak = 0
        deadline = reactor.seconds() + 30
        channel = slow_session.channel
        while not channel.closing and reactor.seconds() < deadline:
            for _ in range(2):
                seq += 1
                self.hub.publish("dispatcher", {"seq": seq, "log": payload}, store=False)
                peak = max(peak, channel.queued_bytes)
            yield task.deferLater(reactor, 0.002, lambda: None)
        self.assertTrue(channel.closing, "the slow subscriber was never cut off")
        self.assertFalse(healthy_session.channel.closing)
        self.assertIn("reads too slowly", slow_session.close_reason)
        # Memory stayed bounded: our queue never went past the limit plus one event, and
        # was dropped at the cut-off.
        self.assertGreater(peak, 0)
        self.assertLessEqual(peak, LIMIT + 9000)
        self.assertEqual(channel.queued_bytes, 0)
        self.assertEqual(self.hub.publish("dispatcher", {"seq": seq + 1}, store=False), 2)
        self.assertEqual(channel.queued_bytes, 0)  # nothing more is queued for a closing session
        seq += 1

        # Once the slow client reads again it sees the close frame with code and reason.
        slow.transport.resumeProducing()
        code, reason = yield slow.closed
        self.assertEqual(code, 1008)
        self.assertIn("reads too slowly", reason)
        yield wait_for(lambda: self.hub.subscriber_count("dispatcher") == 1)

        # The healthy subscriber got every event so far and keeps receiving.
        yield wait_for(lambda: len(received) == seq, timeout=20)
        self.assertEqual(received, list(range(1, seq + 1)))
        self.hub.publish("dispatcher", {"seq": seq + 1}, store=False)
        yield wait_for(lambda: len(received) == seq + 1)
        self.assertFalse(healthy_session.closed)
