"""The client's own WebSocket (RFC 6455) transport: sysadmd/client/wsclient.py.

Against the real daemon (TLS on loopback and the local Unix socket) and a real bridge;
against scripted servers on loopback for what real ones never do: a wrong
Sec-WebSocket-Accept, an endless header, no answer at all, fragmented and oversized
messages, pings, both directions of the close handshake.  And the reason it exists:
importing the client does not import autobahn.
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys

from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.trial import unittest

from sysadmd.wire import frames
from sysadmd.client import wsclient
from sysadmd.client.wsclient import ApiConnectionFactory, HandshakeError, connect, connect_unix
from sysadmd.runtime.tls import fingerprint_der
from tests.support import FakePasswords, make_config, short_tempdir, start_daemon

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class RealPeerTests(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def setUp(self):
        cfg = make_config(short_tempdir(self))
        self.running = yield start_daemon(self, cfg, passwords=FakePasswords({"root": "pw"}))

    @defer.inlineCallbacks
    def test_tls_loopback_handshake_call_pin_and_close(self):
        client = yield connect(reactor, self.running.url, timeout=10)
        reply = yield client.call("rpc", "identify", "")
        self.assertEqual(reply["args"]["type"], "server")
        self.assertEqual(client.http_headers["upgrade"].lower(), "websocket")
        # The certificate the client pins is the daemon's own.
        with open(os.path.join(self.running.config.state_dir, "server.crt"), "rb") as f:
            from cryptography import x509
            from cryptography.hazmat.primitives import serialization

            der = x509.load_pem_x509_certificate(f.read()).public_bytes(serialization.Encoding.DER)
        self.assertEqual(client.peer_fingerprint(), fingerprint_der(der))
        code, _ = yield client.close()
        self.assertEqual(code, 1000)
        with self.assertRaises(wsclient.ConnectionLost):  # at once, not never
            yield client.call("rpc", "identify", "")

    @defer.inlineCallbacks
    def test_unix_socket_handshake_and_a_large_fragmented_request(self):
        client = yield connect_unix(reactor, self.running.config.socket, timeout=10, fragment_bytes=4096)
        self.addCleanup(client.close)
        self.assertIsNone(client.peer_fingerprint())
        sent = []
        write = client._send_frame
        client._send_frame = lambda op, payload, fin=True: sent.append((op, fin)) or write(op, payload, fin)
        reply = yield client.call("rpc", "identify", {"pad": "é" * 20000})  # 40 kB in 4 kB frames
        self.assertEqual(reply["args"]["type"], "server")
        self.assertEqual(len(sent), 10)
        self.assertEqual(sent[0], (frames.TEXT, False))
        self.assertEqual(sent[-1], (frames.CONTINUATION, True))

    @defer.inlineCallbacks
    def test_real_bridge_over_tls(self):
        from tests.test_bridge_wss import start_bridge

        bridge = yield start_bridge(self)
        client = yield connect(reactor, bridge.url, timeout=10)
        self.addCleanup(client.close)
        self.assertEqual(client.http_headers.get("server"), "sysadm-bridge")
        reply = yield client.call("rpc", "auth_ssl", "")
        self.assertIsInstance(reply["args"]["test_string"], str)


# --- scripted servers -----------------------------------------------------------------------

def accept_for(request: bytes) -> str:
    for line in request.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-key":
            return base64.b64encode(hashlib.sha1(value.strip() + GUID).digest()).decode()
    raise AssertionError("no Sec-WebSocket-Key in the request")


class Scripted(Protocol):
    """Reads the request head, then does what ``factory.script(self, request)`` says."""

    def connectionMade(self):
        self.buf = b""
        self.request = None
        self.reader = frames.FrameReader(64 * 1024 * 1024, masked=True)
        self.received = []  # (opcode, payload) after the handshake
        self.factory.connections.append(self)

    def dataReceived(self, data):
        if self.request is None:
            self.buf += data
            if b"\r\n\r\n" not in self.buf:
                return
            self.request, _, data = self.buf.partition(b"\r\n\r\n")
            self.factory.script(self, self.request)
        self.reader.feed(data)
        while True:
            frame = self.reader.pop()
            if frame is None:
                break
            self.received.append(frame)
            for waiter in list(self.factory.waiters):
                waiter(frame)

    def connectionLost(self, reason=None):
        self.lost = True

    def upgrade(self, extra: str = "", accept: str = None):
        self.transport.write((f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                              f"Sec-WebSocket-Accept: {accept or accept_for(self.request)}\r\n{extra}\r\n").encode())

    def send(self, opcode, payload, fin=True):
        self.transport.write(frames.encode_frame(opcode, payload, fin))


class ScriptedServerCase(unittest.TestCase):
    timeout = 20

    def serve(self, script):
        factory = Factory.forProtocol(Scripted)
        factory.script = script
        factory.connections = []
        factory.waiters = []
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.factory = factory
        self.url = f"ws://127.0.0.1:{port.getHost().port}/"
        return factory

    def frame(self, opcode):
        """Fires with the payload of the next frame of *opcode* the server reads."""
        d = defer.Deferred()

        def waiter(frame):
            if frame[0] == opcode and not d.called:
                self.factory.waiters.remove(waiter)
                d.callback(frame[1])

        self.factory.waiters.append(waiter)
        return d.addTimeout(10, reactor)

    @defer.inlineCallbacks
    def refused(self, d) -> str:
        try:
            yield d
        except HandshakeError as e:
            return str(e)
        self.fail("the handshake was accepted")

    def cleanup_server_side(self):
        for conn in self.factory.connections:
            if not getattr(conn, "lost", False):
                conn.transport.abortConnection()


class HandshakeRefusalTests(ScriptedServerCase):
    @defer.inlineCallbacks
    def test_wrong_accept_is_refused(self):
        self.serve(lambda s, req: s.upgrade(accept=base64.b64encode(b"x" * 20).decode()))
        text = yield self.refused(connect(reactor, self.url, timeout=5))
        self.assertIn("Sec-WebSocket-Accept", text)
        self.assertIn("is wrong", text)

    @defer.inlineCallbacks
    def test_missing_accept_and_unoffered_extension_or_subprotocol_are_refused(self):
        self.serve(lambda s, req: s.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"))
        text = yield self.refused(connect(reactor, self.url, timeout=5))
        self.assertIn("Sec-WebSocket-Accept is missing", text)
        self.serve(lambda s, req: s.upgrade("Sec-WebSocket-Extensions: permessage-deflate\r\n"))
        text = yield self.refused(connect(reactor, self.url, timeout=5))
        self.assertIn("extensions 'permessage-deflate'", text)
        self.serve(lambda s, req: s.upgrade("Sec-WebSocket-Protocol: wamp.2.json\r\n"))
        text = yield self.refused(connect(reactor, self.url, timeout=5))
        self.assertIn("sub-protocol 'wamp.2.json'", text)

    @defer.inlineCallbacks
    def test_a_requested_subprotocol_and_origin_are_sent_and_the_choice_kept(self):
        self.serve(lambda s, req: s.upgrade("Sec-WebSocket-Protocol: sysadm\r\n"))
        client = yield connect(reactor, self.url, timeout=5, protocols=["sysadm", "other"], origin="sysadm-client")
        self.addCleanup(client.close)
        request = self.factory.connections[0].request
        self.assertIn(b"\r\nOrigin: sysadm-client", request)
        self.assertIn(b"\r\nSec-WebSocket-Protocol: sysadm, other", request)
        self.assertIn(b"\r\nSec-WebSocket-Version: 13", request)
        self.assertEqual(client.websocket_protocol_in_use, "sysadm")

    @defer.inlineCallbacks
    def test_http_error_status_is_named(self):
        self.serve(lambda s, req: s.transport.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n"))
        text = yield self.refused(connect(reactor, self.url, timeout=5))
        self.assertIn("refused the WebSocket upgrade: HTTP/1.1 403 Forbidden", text)

    @defer.inlineCallbacks
    def test_oversized_reply_head_is_refused_at_the_limit(self):
        def endless(s, req):
            s.transport.write(b"HTTP/1.1 101 Switching Protocols\r\n")
            for i in range(100):
                s.transport.write(b"X-Pad-%d: %s\r\n" % (i, b"a" * 1000))

        self.serve(endless)
        text = yield self.refused(connect(reactor, self.url, timeout=5))
        self.assertIn(f"larger than {wsclient.MAX_HANDSHAKE_BYTES} bytes", text)

    @defer.inlineCallbacks
    def test_a_server_that_never_answers_is_refused_at_the_time_limit(self):
        self.serve(lambda s, req: None)
        self.addCleanup(self.cleanup_server_side)
        clock = Clock()
        factory = ApiConnectionFactory(self.url, clock, handshake_timeout=7)
        reactor.connectTCP("127.0.0.1", int(self.url.rsplit(":", 1)[1].strip("/")), factory, timeout=5)
        while not self.factory.connections or self.factory.connections[0].request is None:
            yield deferLater(0.01)
        clock.advance(6.9)
        self.assertFalse(factory.opened.called)
        clock.advance(0.2)
        text = yield self.refused(factory.opened)
        self.assertEqual(text, "no WebSocket handshake reply within 7 s")

    @defer.inlineCallbacks
    def test_a_server_that_hangs_up_during_the_handshake(self):
        self.serve(lambda s, req: s.transport.loseConnection())
        text = yield self.refused(connect(reactor, self.url, timeout=5))
        self.assertIn("closed the connection during the WebSocket handshake", text)


def deferLater(seconds):
    from twisted.internet import task

    return task.deferLater(reactor, seconds, lambda: None)


class FramingTests(ScriptedServerCase):
    @defer.inlineCallbacks
    def open(self, **options):
        self.serve(lambda s, req: s.upgrade())
        client = yield connect(reactor, self.url, timeout=5, **options)
        self.addCleanup(self.cleanup_server_side)
        self.server = self.factory.connections[0]
        return client

    @defer.inlineCallbacks
    def test_fragmented_message_with_a_ping_between_is_joined_and_the_ping_answered(self):
        client = yield self.open()
        got = defer.Deferred()
        client.unsolicited_listeners.append(got.callback)
        body = os.urandom(3 * 1024 * 1024).hex()[:5_000_000]  # 5 MB of text
        pieces = [body[i:i + 700_000].encode() for i in range(0, len(body), 700_000)]
        for i, piece in enumerate(pieces):
            self.server.send(frames.TEXT if i == 0 else frames.CONTINUATION, piece, fin=i == len(pieces) - 1)
            if i == 2:
                self.server.send(frames.PING, b"are you there")
        pong = yield self.frame(frames.PONG)
        self.assertEqual(pong, b"are you there")
        text = yield got.addTimeout(10, reactor)
        self.assertEqual(len(pieces), 8)
        self.assertTrue(text == body, "the joined message differs")

    @defer.inlineCallbacks
    def test_our_large_messages_go_out_fragmented_and_masked(self):
        client = yield self.open()
        payload = os.urandom(1_500_000)
        heads = []
        write = client.transport.writeSequence
        client.transport.writeSequence = lambda parts: heads.append(parts[0]) or write(parts)
        done = self.frame(frames.BINARY)
        client.sendMessage(payload, isBinary=True)
        got = yield done
        self.assertTrue(got == payload)  # the server's reader required and removed the masks
        # 1.5 MB in 512 KiB frames: BINARY, CONTINUATION, CONTINUATION+FIN, each masked
        self.assertEqual([(h[0], h[1] & 0x80) for h in heads], [(0x02, 0x80), (0x00, 0x80), (0x80, 0x80)])

    @defer.inlineCallbacks
    def test_a_message_over_the_limit_closes_with_1009_without_buffering_it(self):
        client = yield self.open(max_message_bytes=100_000)
        pending = client.call("rpc", "identify", "")
        self.server.send(frames.TEXT, b"x" * 50_000, fin=False)
        self.server.send(frames.CONTINUATION, b"x" * 60_000, fin=True)
        payload = yield self.frame(frames.CLOSE)
        self.assertEqual(int.from_bytes(payload[:2], "big"), 1009)
        self.assertIn(b"at most 100000", payload)
        self.server.send(frames.CLOSE, payload)  # the server echoes, then hangs up
        self.server.transport.loseConnection()
        code, reason = yield client.closed
        self.assertEqual(code, 1009)
        with self.assertRaises(wsclient.ConnectionLost):
            yield pending

    @defer.inlineCallbacks
    def test_server_initiated_close_is_answered_with_its_code(self):
        client = yield self.open()
        self.server.send(frames.CLOSE, frames.close_payload(1013, "busy, MAX_CONNECTIONS=3".encode()))
        echo = yield self.frame(frames.CLOSE)
        self.assertEqual(int.from_bytes(echo[:2], "big"), 1013)
        self.server.transport.loseConnection()
        code, reason = yield client.closed
        self.assertEqual((code, reason), (1013, "busy, MAX_CONNECTIONS=3"))

    @defer.inlineCallbacks
    def test_client_close_waits_for_the_reply_then_a_silent_server_is_dropped(self):
        client = yield self.open(close_timeout=0.3)
        closing = client.close()
        payload = yield self.frame(frames.CLOSE)
        self.assertEqual(int.from_bytes(payload[:2], "big"), 1000)
        # The server never answers the close: the socket is dropped at close_timeout.
        code, reason = yield closing.addTimeout(5, reactor)
        self.assertEqual(code, 1006)
        self.assertIn("uncleanly", reason)

    @defer.inlineCallbacks
    def test_a_protocol_error_closes_with_1002(self):
        client = yield self.open()
        self.server.transport.write(frames.encode_frame(frames.TEXT, b"hi", mask=b"abcd"))  # servers never mask
        payload = yield self.frame(frames.CLOSE)
        self.assertEqual(int.from_bytes(payload[:2], "big"), 1002)
        self.assertIn(b"masked server frame", payload)
        self.server.transport.loseConnection()
        code, _ = yield client.closed
        self.assertEqual(code, 1002)


class ImportTests(unittest.TestCase):
    def test_the_client_starts_without_autobahn_or_cryptography(self):
        code = ("import sys, sysadmd.client.main\n"
                "print(sorted({m.split('.')[0] for m in sys.modules} & {'autobahn', 'cryptography', 'txaio'}))")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                              cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(done.stdout.strip(), "[]")


class CliRefusalTests(ScriptedServerCase):
    """What a user sees when a TLS server answers the upgrade with something else."""

    timeout = 40

    @defer.inlineCallbacks
    def test_sysadm_names_the_refused_upgrade_and_exits_4(self):
        from tests.test_client_cli import run_cli
        from sysadmd.runtime.tls import ensure_certificate, server_context

        home = short_tempdir(self, "wsc")
        cert, key, _ = ensure_certificate(home, "server")
        factory = Factory.forProtocol(Scripted)
        factory.script = lambda s, req: s.upgrade(accept="AAAAAAAAAAAAAAAAAAAAAAAAAAA=")
        factory.connections, factory.waiters = [], []
        port = reactor.listenSSL(0, factory, server_context(cert, key), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.factory = factory
        self.addCleanup(self.cleanup_server_side)
        result = yield run_cli(home, "--url", f"wss://127.0.0.1:{port.getHost().port}", "identify")
        self.assertEqual(result.code, 4, result.err)
        self.assertIn(f"cannot connect to 127.0.0.1:{port.getHost().port}: the handshake reply's "
                      "Sec-WebSocket-Accept 'AAAAAAAAAAAAAAAAAAAAAAAAAAA=' is wrong", result.err)
        self.assertNotIn("Traceback", result.err)
