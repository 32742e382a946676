"""The relay's own cost: work done once per relayed request, on both sides of the bridge.

Server side: a bridged request is parsed once (the parsed envelope goes into the request
pipeline). Bridge side: see the frame-level tests further down.
"""

import base64
import json

from twisted.internet import defer, endpoints, protocol, reactor
from twisted.trial import unittest

from sysadmd.bridgelink.clients import BASE64, BridgedClients
from sysadmd.wire import envelope
from sysadmd.wire.envelope import encode
from sysadmd.wire.wsbase import write_through
from tests import keys_support as ks
from tests.test_dispatcher_durability import eventually


class CountingParse:
    def __init__(self, testcase):
        self.calls = 0
        self.original = envelope.parse
        envelope.parse = self
        testcase.addCleanup(setattr, envelope, "parse", self.original)

    def __call__(self, text):
        self.calls += 1
        return self.original(text)


class BridgedRequestParsedOnceTests(unittest.TestCase):
    def setUp(self):
        self.server, self.clock = ks.clock_server(self)
        self.frames = []
        self.clients = BridgedClients(self.server, "t", lambda data, key: self.frames.append(data.decode()) or True)
        self.addCleanup(self.clients.close_all, "test over")

    def reply(self, b64=False):
        prefix, _, body = self.frames[-1].partition("\n")
        self.assertEqual(prefix, "::1")
        return json.loads(base64.b64decode(body) if b64 else body)

    def test_plain_request_is_parsed_once(self):
        counter = CountingParse(self)
        self.clients.deliver("::1\n" + encode({"namespace": "rpc", "name": "identify", "id": "p1", "args": ""}))
        self.assertEqual(self.reply()["id"], "p1")
        self.assertEqual(counter.calls, 1)

    def test_base64_request_is_parsed_once(self):
        self.clients.deliver("::1\n" + encode({"namespace": "rpc", "name": "identify", "id": "p0", "args": ""}))
        self.clients.get("::1").attributes[BASE64] = True
        counter = CountingParse(self)
        body = base64.b64encode(encode({"namespace": "rpc", "name": "identify", "id": "p2", "args": ""}).encode()).decode()
        self.clients.deliver("::1\n" + body)
        self.assertEqual(self.reply(b64=True)["id"], "p2")
        self.assertEqual(counter.calls, 1)

    def test_refused_request_still_gets_its_error_once(self):
        counter = CountingParse(self)
        self.clients.deliver("::1\n" + encode({"namespace": "sysadm", "name": "nope", "id": "p3", "args": {}}))
        reply = self.reply()
        self.assertEqual((reply["id"], reply["name"], reply["args"]["code"]), ("p3", "error", "401"))
        self.assertEqual(counter.calls, 1)
        self.assertEqual(len(self.frames), 1)


# --- writing through to the socket (sysadmd.wire.wsbase.write_through) ------------------

class _Sink(protocol.Protocol):
    def __init__(self):
        self.received = bytearray()

    def dataReceived(self, data):
        self.received += data


class _Writer(protocol.Protocol):
    through = True

    def connectionMade(self):
        if self.through:
            self.factory.installed = write_through(self.transport)
        self.factory.connected.callback(self)


class WriteThroughTests(unittest.TestCase):
    """Real TCP connections on 127.0.0.1 and the real reactor."""

    timeout = 30

    @defer.inlineCallbacks
    def connect(self, through=True):
        factory = protocol.Factory()
        factory.protocol = type("W", (_Writer,), {"through": through})
        factory.connected = defer.Deferred()
        factory.installed = None
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        sink = _Sink()
        client = yield endpoints.connectProtocol(
            endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), sink)
        self.addCleanup(client.transport.loseConnection)
        writer = yield factory.connected
        self.addCleanup(writer.transport.loseConnection)
        return writer, sink, factory.installed

    @defer.inlineCallbacks
    def test_a_write_leaves_at_once_without_the_reactor(self):
        writer, sink, installed = yield self.connect()
        self.assertTrue(installed)
        tcp = writer.transport
        tcp.write(b"frame one\n")
        # Sent during write(): nothing buffered, the reactor was not asked to watch for room.
        self.assertEqual((tcp._tempDataLen, tcp.dataBuffer), (0, b""))
        self.assertNotIn(tcp, reactor.getWriters())
        yield from eventually(lambda: bytes(sink.received) == b"frame one\n", 10, "the bytes at the other end")

    @defer.inlineCallbacks
    def test_without_it_twisted_waits_for_the_next_loop_turn(self):
        # What write_through removes: the bytes wait in Twisted's buffer for a writable event.
        writer, sink, _ = yield self.connect(through=False)
        tcp = writer.transport
        tcp.write(b"frame one\n")
        self.assertEqual(tcp._tempDataLen, 10)
        self.assertIn(tcp, reactor.getWriters())
        yield from eventually(lambda: bytes(sink.received) == b"frame one\n", 10, "the bytes at the other end")

    @defer.inlineCallbacks
    def test_a_full_socket_buffers_in_order_and_pauses_the_producer(self):
        writer, sink, _ = yield self.connect()
        tcp = writer.transport
        sink.transport.pauseProducing()  # the reader stops reading: the kernel buffers fill

        class Producer:
            paused = 0
            resumed = 0

            def pauseProducing(self):
                self.paused += 1

            def resumeProducing(self):
                self.resumed += 1

            def stopProducing(self):
                pass

        producer = Producer()
        tcp.registerProducer(producer, True)
        chunks = [bytes([i % 251]) * 65536 for i in range(160)]  # 10 MiB, more than the socket buffers hold
        for chunk in chunks:
            tcp.write(chunk)
        self.assertGreater(len(tcp.dataBuffer) - tcp.offset + tcp._tempDataLen, 0)
        self.assertIn(tcp, reactor.getWriters())
        self.assertGreater(producer.paused, 0)
        sink.transport.resumeProducing()
        expected = b"".join(chunks)
        yield from eventually(lambda: len(sink.received) >= len(expected), 20, "all 10 MiB at the other end")
        self.assertEqual(bytes(sink.received), expected)
        self.assertGreater(producer.resumed, 0)
        tcp.unregisterProducer()

    @defer.inlineCallbacks
    def test_bytes_written_after_a_partial_send_keep_their_order(self):
        writer, sink, _ = yield self.connect()
        tcp = writer.transport
        sink.transport.pauseProducing()
        big = b"a" * (32 * 1024 * 1024)
        tcp.write(big)  # the kernel takes part of it, the rest waits in Twisted's buffer
        self.assertGreater(len(tcp.dataBuffer) - tcp.offset, 0)
        tcp.write(b"tail")  # must not overtake what is waiting
        sink.transport.resumeProducing()
        yield from eventually(lambda: len(sink.received) >= len(big) + 4, 20, "everything at the other end")
        self.assertEqual(bytes(sink.received[-5:]), b"atail")
        self.assertEqual(len(sink.received), len(big) + 4)

    def test_no_socket_under_the_transport_means_no_change(self):
        from twisted.internet.testing import StringTransport

        transport = StringTransport()
        self.assertFalse(write_through(transport))
        self.assertFalse(write_through(None))
