"""Floods that cost the sender nothing, against real TLS listeners of both daemons.

* pings without reading the pongs (issue 7 item 4): the daemon stops reading the
  connection once its send buffer is over the limit, so what it buffers stays bounded
  however much the client sends; when the client reads again, the connection goes on;
* endless empty continuation frames (issue 7 item 5): closed with 1009 after the
  per-message fragment cap.
"""

from __future__ import annotations

import json

import pytest
from twisted.internet import defer
from twisted.trial import unittest

from sysadmd.wire import frames
from tests.sec_wire_support import client_frame, open_ws, sleep, tcp_buffered, text, until
from tests.support import make_config, short_tempdir, start_daemon
from tests.test_bridge_wss import start_bridge

PING = client_frame(frames.PING, b"p" * 125)  # 131 bytes in, a 127-byte pong out
FLOOD_BYTES = 16 * 1024 * 1024
BUFFER_BOUND = 1024 * 1024


def ping_flood() -> bytes:
    return PING * (FLOOD_BYTES // len(PING))


class PingFloodMixin:
    timeout = 60

    def server_protocol(self):
        raise NotImplementedError

    @defer.inlineCallbacks
    def flood_and_check(self, port: int, identify: bytes, reply_marker: str):
        # A small receive buffer, so the kernel cannot soak up the pongs for the daemon.
        client = yield open_ws(self, port, rcvbuf=32 * 1024)
        yield until(lambda: self.server_protocol() is not None, what="server side of the connection")
        server = self.server_protocol()
        client.transport.pauseProducing()  # the client stops reading
        client.send(ping_flood())
        yield until(lambda: server.input_paused, timeout=30, what="the daemon pausing its reading")
        # While the client does not read, reading resumes only as the send buffer drains
        # (into the kernel), so what the daemon itself holds stays small.
        peak = 0
        for _ in range(30):
            peak = max(peak, tcp_buffered(server.transport))
            yield sleep(0.05)
        self.assertLess(peak, BUFFER_BOUND, f"the daemon buffered {peak} bytes for a client that does not read")
        # The client reads again: the daemon drains, resumes, and still answers.
        client.transport.resumeProducing()
        yield until(lambda: not server.input_paused, timeout=30, what="the daemon resuming")
        client.send(identify)
        yield client.wait(client.text_matching(reply_marker), timeout=30, what="a reply after the flood")
        # Pings read once the client reads again are answered as usual.
        self.assertTrue(any(op == frames.PONG for op, _ in client.frames))


@pytest.mark.slow  # waits seconds of real time (timeouts, floods)
class SysadmdPingFloodTests(PingFloodMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        cfg = make_config(short_tempdir(self), SOCKET="none")
        self.running = yield start_daemon(self, cfg)

    def guard(self):
        return self.running.daemon.listeners["wss"].guard

    def server_protocol(self):
        sessions = list(self.running.server.sessions)
        return sessions[0].channel.protocol if sessions else None

    def test_ping_flood_without_reading_stays_bounded(self):
        identify = text('{"namespace":"rpc","name":"identify","id":"after","args":""}')
        return self.flood_and_check(self.running.port, identify, '"id":"after"')


@pytest.mark.slow  # waits seconds of real time (timeouts, floods)
class BridgePingFloodTests(PingFloodMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.bridge = yield start_bridge(self)

    def guard(self):
        return self.bridge.listener.guard

    def server_protocol(self):
        peers = list(self.bridge.bridge.directory.peers.values())
        return peers[0].link if peers else None

    def test_ping_flood_without_reading_stays_bounded(self):
        identify = text('{"namespace":"rpc","name":"identify","id":"after","args":""}')
        return self.flood_and_check(self.bridge.listener.port.getHost().port, identify, '"id":"after"')


class FragmentFloodMixin:
    timeout = 30

    @defer.inlineCallbacks
    def fragments_closed(self, port: int):
        client = yield open_ws(self, port)
        client.send(client_frame(frames.TEXT, b"{", fin=False))
        empty = client_frame(frames.CONTINUATION, b"", fin=False)
        # far more empty fragments than any real message has; each costs the client 6 bytes
        client.send(empty * 20000)
        yield client.wait(lambda: client.close_code() is not None, what="close frame")
        self.assertEqual(client.close_code(), 1009)
        op, payload = next(f for f in client.frames if f[0] == frames.CLOSE)
        self.assertIn(b"frames", payload)
        # it keeps streaming instead of answering the close: dropped, not read for 5 s more
        yield client.wait(lambda: client.is_lost, timeout=2, what="the connection being dropped")

    @defer.inlineCallbacks
    def fragments_within_the_cap_pass(self, port: int, before: bytes = b""):
        client = yield open_ws(self, port)
        if before:
            client.send(before)
        message = json.dumps({"namespace": "rpc", "name": "identify", "id": "frag", "args": ""}).encode()
        client.send(client_frame(frames.TEXT, message[:10], fin=False))
        client.send(client_frame(frames.CONTINUATION, b"", fin=False) * 500)
        client.send(client_frame(frames.CONTINUATION, message[10:], fin=True))
        yield client.wait(client.text_matching('"id":"frag"'), what="reply to a fragmented message")


class SysadmdFragmentTests(FragmentFloodMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.running = yield start_daemon(self, make_config(short_tempdir(self), SOCKET="none"))

    def test_endless_empty_continuations_close_with_1009(self):
        return self.fragments_closed(self.running.port)

    def test_a_message_in_500_fragments_passes(self):
        return self.fragments_within_the_cap_pass(self.running.port)


class BridgeFragmentTests(FragmentFloodMixin, unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.bridge = yield start_bridge(self)

    def test_endless_empty_continuations_close_with_1009(self):
        return self.fragments_closed(self.bridge.listener.port.getHost().port)

    def test_a_message_in_500_fragments_passes(self):
        return self.fragments_within_the_cap_pass(self.bridge.listener.port.getHost().port)


class ReaderFragmentCapTests(unittest.TestCase):
    """The codec on its own: the cap, and that the message after a refused one is dropped."""

    def test_cap_counts_every_frame_of_a_message(self):
        reader = frames.FrameReader(1 << 20, max_fragments=4)
        reader.feed(client_frame(frames.TEXT, b"a", fin=False) + client_frame(frames.CONTINUATION, b"", fin=False) * 3)
        self.assertIsNone(reader.pop())
        reader.feed(client_frame(frames.CONTINUATION, b"", fin=True))
        with self.assertRaises(frames.FrameError) as caught:
            reader.pop()
        self.assertEqual(caught.exception.code, 1009)
        # control frames still come through (the peer's close reply must be seen)
        reader.feed(client_frame(frames.PING, b"x"))
        self.assertEqual(reader.pop(), (frames.PING, b"x"))

    def test_exactly_the_cap_passes(self):
        reader = frames.FrameReader(1 << 20, max_fragments=4)
        reader.feed(client_frame(frames.TEXT, b"a", fin=False) + client_frame(frames.CONTINUATION, b"", fin=False) * 2
                    + client_frame(frames.CONTINUATION, b"b", fin=True))
        self.assertEqual(reader.pop(), (frames.TEXT, b"ab"))
