"""The bridge's inline relay path (BridgeServerProtocol.inline_frames) over real TLS
WebSockets on loopback: many frames in one read, frames cut anywhere across reads, every
kind of frame the general path must take mixed in, and a receiver that stops reading.
Whatever the mix, the partner gets exactly the relay frames, in order, byte for byte."""

import os

from twisted.internet import defer, reactor
from twisted.trial import unittest

from bridge import protocol as protocol_module, relayscan
from bridge.protocol import BridgeServerProtocol
from sysadmd.wire import frames
from tests.test_bridge_wss import paired_peers, sleep, start_bridge


def masked(opcode, payload, fin=True):
    return frames.encode_frame(opcode, payload, fin=fin, mask=os.urandom(4))


def relay_frame(dest, body):
    return masked(frames.TEXT, (dest + "\n").encode() + body)


class FastPathCounter:
    """Counts the bytes the inline path took from the frame reader."""

    def __init__(self, testcase):
        self.consumed = 0
        original = BridgeServerProtocol.inline_frames

        def counting(protocol, reader):
            before = reader._avail
            took = original(protocol, reader)
            self.consumed += before - reader._avail
            return took

        testcase.patch(BridgeServerProtocol, "inline_frames", counting)


class FastPathTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        self.daemon = yield start_bridge(self, MAX_PEER_BUFFER_BYTES=16 * 1024 * 1024, RECEIVER_STALL_TIMEOUT=30)
        self.server, self.client, self.server_id, self.client_id = yield paired_peers(self, self.daemon)
        self.counter = FastPathCounter(self)

    def relayed(self, peer, start):
        return [t for t in peer.frames[start:] if t.startswith("::{")]

    @defer.inlineCallbacks
    def wait_count(self, peer, start, n, timeout=20):
        deadline = reactor.seconds() + timeout
        while len(self.relayed(peer, start)) < n and reactor.seconds() < deadline:
            yield sleep(0.02)
        return self.relayed(peer, start)

    @defer.inlineCallbacks
    def test_a_burst_with_every_kind_of_frame_mixed_in(self):
        sid, cid = self.server_id, self.client_id
        expected = []
        burst = []

        def relay(body):
            burst.append(relay_frame(sid, body))
            expected.append(cid + "\n" + body.decode("utf-8"))

        for i in range(300):
            relay(b'{"id":"q%d","namespace":"rpc","name":"query","args":{}}' % i)
            kind = i % 12
            if kind == 1:
                relay(b"x" * 2100)  # over the inline path's 2 KiB: the general path
            elif kind == 2:
                relay("caf\u00e9 \u2713 not ASCII".encode("utf-8"))
            elif kind == 3:
                burst.append(masked(frames.PING, b"p%d" % i))  # autobahn answers it
            elif kind == 4:
                burst.append(masked(frames.TEXT, b'{"args":"","id":"api%d","name":"identify","namespace":"rpc"}' % i))
            elif kind == 5:
                body = b"fragmented %d " % i + b"y" * 40
                burst.append(masked(frames.TEXT, (sid + "\n").encode() + body[:10], fin=False))
                burst.append(masked(frames.CONTINUATION, body[10:]))
                expected.append(cid + "\n" + body.decode())
            elif kind == 6:
                burst.append(relay_frame("::{00000000-0000-0000-0000-000000000000}", b"nobody"))
            elif kind == 7:
                relay(b"z" * 125)
                relay(b"z" * 126)
            elif kind == 8:
                burst.append(masked(frames.BINARY, (sid + "\n").encode() + b"binary in, text out %d" % i))
                expected.append(cid + "\nbinary in, text out %d" % i)
        start = len(self.server.frames)
        client_start = len(self.client.frames)
        self.client.transport.write(b"".join(burst))
        got = yield self.wait_count(self.server, start, len(expected))
        self.assertEqual(got, expected)
        # The API calls and the frame for nobody were answered, in order, on the client's side.
        replies = yield self.wait_api(client_start, 25)
        self.assertEqual(replies, ["api%d" % i for i in range(300) if i % 12 == 4])
        self.assertGreater(self.counter.consumed, len(b"".join(burst)) // 3, "the inline path relayed little")

    @defer.inlineCallbacks
    def wait_api(self, start, n, timeout=20):
        import json

        deadline = reactor.seconds() + timeout
        while reactor.seconds() < deadline:
            ids = [json.loads(t).get("id") for t in self.client.frames[start:]
                   if t.startswith("{") and '"identify"' not in t and "available_connections" not in t]
            ids = [i for i in ids if isinstance(i, str) and i.startswith("api")]
            if len(ids) >= n:
                return ids
            yield sleep(0.02)
        return ids

    @defer.inlineCallbacks
    def test_frames_cut_anywhere_across_reads(self):
        cid = self.client_id
        bodies = [b"cut %d " % i + b"k" * (i * 37 % 700) for i in range(120)]
        data = b"".join(relay_frame(cid, body) for body in bodies)
        start = len(self.client.frames)
        at, step = 0, 1
        while at < len(data):
            self.server.transport.write(data[at:at + step])
            at += step
            step = step % 251 + 3  # 1, 4, 7, ... bytes: every cut position of a header and body
            yield sleep(0)
        got = yield self.wait_count(self.client, start, len(bodies))
        self.assertEqual(got, [self.server_id + "\n" + body.decode() for body in bodies])
        self.assertGreater(self.counter.consumed, 0)

    @defer.inlineCallbacks
    def test_a_receiver_that_stops_reading_holds_the_sender_and_loses_nothing(self):
        bridge = self.daemon.bridge
        sender_flow = bridge.directory.get(self.server_id).link.flow
        receiver_flow = bridge.directory.get(self.client_id).link.flow
        self.client.transport.pauseProducing()
        bodies = [b"%05d " % i + b"m" * 1000 for i in range(6000)]  # about 6 MiB in small frames
        start = len(self.client.frames)
        for at in range(0, len(bodies), 500):
            self.server.transport.write(b"".join(relay_frame(self.client_id, b) for b in bodies[at:at + 500]))
        deadline = reactor.seconds() + 20
        while not sender_flow.pauses and reactor.seconds() < deadline:
            yield sleep(0.05)
        self.assertGreaterEqual(sender_flow.pauses, 1, "the sender was never paused")
        self.assertLessEqual(receiver_flow.queued_bytes, 16 * 1024 * 1024)
        self.assertFalse(receiver_flow.closing)
        self.client.transport.resumeProducing()
        got = yield self.wait_count(self.client, start, len(bodies), timeout=40)
        self.assertEqual(len(got), len(bodies))
        self.assertEqual(got, [self.server_id + "\n" + b.decode() for b in bodies])
        self.assertFalse(sender_flow.reading_paused)
        self.assertGreater(self.counter.consumed, 0)


class FastPathTestsPyOpenSSL(FastPathTests):
    tls_engine = "pyopenssl"


class FastPathTestsPythonStep(FastPathTests):
    """The same with the relay step's Python reference instead of the C module."""

    @defer.inlineCallbacks
    def setUp(self):
        self.patch(protocol_module, "scan_one", relayscan.py_scan_one)
        yield super().setUp()
