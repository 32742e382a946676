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


# --- the bridge's bytes relay (bridge/protocol.py onMessage, bridge/relay.py relay) -------

class RelayBytesUnitTests(unittest.TestCase):
    def setUp(self):
        from bridge.relay import CLIENT, SERVER, Peer, PeerDirectory, new_peer_id

        class Link:
            def __init__(self):
                self.sent = []

            def send_text(self, text):
                self.sent.append(text)

            def close(self, code, reason):
                pass

        self.d = PeerDirectory()
        self.s = Peer(id=new_peer_id(), link=Link())
        self.c = Peer(id=new_peer_id(), link=Link())
        self.other = Peer(id=new_peer_id(), link=Link())
        for peer, role in ((self.s, SERVER), (self.c, CLIENT), (self.other, CLIENT)):
            self.d.add(peer)
            self.d.authenticate(peer, "k", "m", role)
            self.d.set_keys(peer, ["m"])

    def test_partners_get_the_frame_with_the_senders_id_in_front(self):
        payload = "\n{\"x\":\"é ✓\"}\n\n".encode("utf-8")
        dest, out = self.d.relay(self.c, self.s.id.encode() + payload)
        self.assertIs(dest, self.s)
        self.assertEqual(out, self.c.id.encode() + payload)
        self.assertIsInstance(out, bytes)

    def test_everything_else_is_dropped_and_the_sender_hears_its_partners_again(self):
        before = len(self.c.link.sent)
        for frame in (self.other.id.encode() + b"\nhi",  # same role: not a partner
                      b"::{nope}\nhi", self.s.id.encode(), b"\nhi",
                      self.s.id.encode()[:-1] + b"\xe9\nhi"):  # a byte no ID has
            self.assertIsNone(self.d.relay(self.c, frame))
        self.assertEqual(len(self.c.link.sent), before + 5)
        self.assertIn(self.s.id, self.c.link.sent[-1])


class BridgeRelayWireTests(unittest.TestCase):
    """A real bridge on 127.0.0.1 (TLS WebSockets) and two scripted peers."""

    timeout = 30

    @defer.inlineCallbacks
    def setUp(self):
        from tests.test_bridge_wss import paired_peers, start_bridge

        self.daemon = yield start_bridge(self, KEYS_REFRESH_INTERVAL=0.5)
        self.server, self.client, self.server_id, self.client_id = yield paired_peers(self, self.daemon)

    @defer.inlineCallbacks
    def test_multibyte_text_and_binary_frames_arrive_byte_for_byte(self):
        body = "{\"args\":\"ü 漢字 😀\"}"
        start = len(self.server.frames)
        self.client.sendMessage((self.server_id + "\n" + body).encode("utf-8"), isBinary=True)
        got = yield self.server.wait_for(lambda t: t.startswith("::{"), start)
        self.assertEqual(got, self.client_id + "\n" + body)
        start = len(self.client.frames)
        self.server.send_text(self.client_id + "\n" + body)
        got = yield self.client.wait_for(lambda t: t.startswith("::{"), start)
        self.assertEqual(got, self.server_id + "\n" + body)

    @defer.inlineCallbacks
    def test_a_relay_frame_that_is_not_utf8_is_refused_and_not_relayed(self):
        server_start = len(self.server.frames)
        start = len(self.client.frames)
        marker = b"not-relayed-marker"
        self.client.sendMessage(self.server_id.encode() + b"\n" + marker + b"\xc3\x28", isBinary=True)
        refusal = yield self.client.wait_for(lambda t: "not valid UTF-8" in t, start)
        self.assertIn('"400"', refusal)
        # The next frame overtakes nothing: once it arrives, the refused one never will.
        self.client.send_text(self.server_id + "\nafter")
        yield self.server.wait_for(lambda t: t.endswith("\nafter"), server_start)
        self.assertFalse(any("not-relayed-marker" in t for t in self.server.frames[server_start:]))

    @defer.inlineCallbacks
    def test_a_destination_that_is_no_id_is_dropped_and_reannounced(self):
        start = len(self.client.frames)
        self.client.sendMessage("::{é}\nhi".encode("utf-8"), isBinary=False)
        ids = yield self.client.wait_available(start=start)
        self.assertEqual(ids, [self.server_id])

    def test_the_bridges_connections_write_through(self):
        from sysadmd.wire.wsbase import _socket_descriptor, _WriteThrough

        for peer_id in (self.server_id, self.client_id):
            tcp = _socket_descriptor(self.daemon.bridge.directory.get(peer_id).link.transport)
            self.assertIsNotNone(tcp)
            self.assertIsInstance(tcp.__dict__.get("startWriting"), _WriteThrough)


class TextFrameHeaderTests(unittest.TestCase):
    """send_text_frame builds small frames' headers itself: the same bytes as the codec's."""

    def test_every_length_class_matches_the_codec(self):
        from autobahn.twisted.websocket import WebSocketServerProtocol

        from sysadmd.wire import frames, wsbase

        if not wsbase.FAST:
            self.skipTest("the public data path frames with autobahn")

        class Proto(wsbase.LeanServerMixin, WebSocketServerProtocol):
            pass

        proto = wsbase._connected(Proto)
        self.addCleanup(proto.transport.loseConnection)
        proto.state = proto.STATE_OPEN
        for n in (0, 1, 125, 126, 127, 65535 // 4, 16 * 1024 - 1, 16 * 1024, 70000):
            proto.transport.clear()
            data = b"x" * n
            proto.send_text_frame(data)
            self.assertEqual(proto.transport.value(), frames.encode_frame(frames.TEXT, data), f"length {n}")


class FrameReaderFastPathTests(unittest.TestCase):
    """FrameReader.pop reads whole small masked frames inline; the rest goes through _parse."""

    def test_sizes_around_every_boundary_and_the_limit(self):
        from hypothesis import given, settings, strategies as st

        from sysadmd.wire import frames

        sizes = st.one_of(st.sampled_from([0, 1, 125, 126, 127, 2047, 2048, 2049, 65535]),
                          st.integers(min_value=0, max_value=3000))

        @settings(max_examples=150, deadline=None)
        @given(st.lists(st.tuples(st.sampled_from([frames.TEXT, frames.BINARY]), sizes,
                                  st.binary(min_size=4, max_size=4)), min_size=1, max_size=5),
               st.integers(min_value=0, max_value=3000),
               st.lists(st.integers(min_value=1, max_value=5000), max_size=10))
        def check(messages, limit, cuts):
            wire = b""
            expected = []
            too_big = None
            for opcode, size, key in messages:
                payload = bytes((i * 7 + size) % 256 for i in range(size))
                wire += frames.encode_frame(opcode, payload, mask=key)
                if too_big is None:
                    if size > limit:
                        too_big = size
                    else:
                        expected.append((opcode, payload))
            reader = frames.FrameReader(limit)
            got = []
            error = None
            at = 0
            for cut in [*cuts, len(wire)]:
                reader.feed(wire[at:at + cut])
                at += cut
                try:
                    while True:
                        frame = reader.pop()
                        if frame is None:
                            break
                        got.append(frame)
                except frames.FrameError as e:
                    error = e
                    break
            self.assertEqual(got, expected)
            if too_big is None:
                self.assertIsNone(error)
            else:
                self.assertEqual(error.code, 1009)

        check()

    def test_an_unmasked_frame_from_a_client_is_still_refused(self):
        from sysadmd.wire import frames

        reader = frames.FrameReader(1000)
        reader.feed(frames.encode_frame(frames.TEXT, b"hello"))
        with self.assertRaises(frames.FrameError) as caught:
            reader.pop()
        self.assertEqual(caught.exception.code, 1002)
