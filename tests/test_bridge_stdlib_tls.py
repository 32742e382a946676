"""The bridge's listener on the standard library's ssl module (bridge/tlsfast.py):
real bridges on 127.0.0.1, real TLS clients (our CLI's, autobahn's, ``openssl s_client``,
and a scripted one that sends partial records or vanishes mid-handshake)."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import tempfile

from twisted.internet import defer, protocol, reactor, threads
from twisted.trial import unittest

from bridge import tlsfast
from bridge.api import IDENTIFY_REQUEST
from sysadmd.client.wsclient import connect
from sysadmd.wire import frames
from tests.test_bridge_wss import connect_peer, paired_peers, sleep, start_bridge
from tests.test_dispatcher_durability import eventually

MiB = 1024 * 1024


class ScriptedTLS(protocol.Protocol):
    """A TLS client made of ssl's memory BIOs: the test decides which bytes go out when."""

    def __init__(self):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.incoming, self.outgoing, server_side=False)
        self.hold = False  # keep the handshake's bytes back (test_* send them by hand)
        self.handshaken = defer.Deferred()
        self.lost = defer.Deferred()
        self.plain = b""
        self.close_notify = False  # the server ended TLS cleanly

    def connectionMade(self):
        self._pump()

    def dataReceived(self, data):
        self.incoming.write(data)
        self._pump()

    def _pump(self):
        if not self.handshaken.called:
            try:
                self.tls.do_handshake()
            except ssl.SSLWantReadError:
                pass
            else:
                self.handshaken.callback(None)
        if self.handshaken.called:
            while True:
                try:
                    data = self.tls.read(65536)
                except ssl.SSLWantReadError:
                    break
                except ssl.SSLZeroReturnError:
                    self.close_notify = True
                    break
                if not data:  # ssl's read says "close_notify" so
                    self.close_notify = True
                    break
                self.plain += data
        if not self.hold:
            out = self.outgoing.read()
            if out:
                self.transport.write(out)

    def send(self, data, keep_back=0):
        """Encrypt *data*; send its records but the last *keep_back* bytes."""
        self.tls.write(data)
        out = self.outgoing.read()
        self.transport.write(out[: len(out) - keep_back])

    def connectionLost(self, reason):
        self.reason = reason
        self.lost.callback(None)


@defer.inlineCallbacks
def scripted(daemon, hold=False, port=None, testcase=None):
    client = ScriptedTLS()
    client.hold = hold
    factory = protocol.ClientFactory.forProtocol(lambda: client)
    port = port or daemon.listener.port
    reactor.connectTCP("127.0.0.1", port.getHost().port, factory, timeout=10)
    yield eventually(lambda: client.transport is not None and client.transport.connected, timeout=10)
    if testcase is not None:
        def cleanup():
            client.transport.abortConnection()
            return client.lost

        testcase.addCleanup(cleanup)
    return client


def count_reads(testcase):
    """Count TLSServer.doRead calls per connection while the test runs."""
    counts = {}
    original = tlsfast.TLSServer.doRead

    def counting(self):
        counts[self] = counts.get(self, 0) + 1
        return original(self)

    tlsfast.TLSServer.doRead = counting
    testcase.addCleanup(setattr, tlsfast.TLSServer, "doRead", original)
    return counts


class EngineTests(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_stdlib_is_the_default_and_pyopenssl_stays_available(self):
        daemon = yield start_bridge(self)
        self.assertIsInstance(daemon.listener.port, tlsfast.TLSPort)
        other = yield start_bridge(self, BRIDGE_TLS_ENGINE="pyopenssl")
        self.assertNotIsInstance(other.listener.port, tlsfast.TLSPort)
        for d in (daemon, other):  # the same policy on both: TLS 1.2 at least, identify first
            peer = yield connect_peer(self, d)
            first = yield peer.wait_for(lambda t: True)
            self.assertEqual(first, IDENTIFY_REQUEST)

    @defer.inlineCallbacks
    def test_a_unix_socket_port_falls_back_to_pyopenssl(self):
        from bridge.service import build
        from tests.test_bridge_wss import bridge_config

        where = tempfile.mkdtemp(prefix="bru", dir="/tmp")
        self.addCleanup(shutil.rmtree, where, True)
        daemon = build(bridge_config(self, PORT=f"unix:{where}/b.sock"), reactor)
        daemon.startService()
        self.addCleanup(daemon.stopService)
        port = yield daemon.listener.ready
        self.assertNotIsInstance(port, tlsfast.TLSPort)
        self.assertEqual(os.fsdecode(port.getHost().name), f"{where}/b.sock")

    def test_the_context_keeps_the_pyopenssl_policy(self):
        from sysadmd.runtime import tls

        state = tempfile.mkdtemp(prefix="brg", dir="/tmp")
        self.addCleanup(shutil.rmtree, state, True)
        cert, key, _ = tls.ensure_certificate(state, "bridge")
        ctx = tlsfast.server_context(cert, key)
        self.assertEqual(ctx.minimum_version, ssl.TLSVersion.TLSv1_2)
        for option in (ssl.OP_NO_COMPRESSION, ssl.OP_NO_RENEGOTIATION, ssl.OP_NO_TICKET,
                       ssl.OP_CIPHER_SERVER_PREFERENCE):
            self.assertTrue(ctx.options & option, option)
        names = {c["name"] for c in ctx.get_ciphers() if c["protocol"] != "TLSv1.3"}
        self.assertTrue(names)
        self.assertTrue(all("NULL" not in n and "MD5" not in n for n in names))
        # TLS 1.2 suites: exactly those Twisted's CertificateOptions enables on pyOpenSSL
        from OpenSSL import SSL

        reference = SSL.Connection(tls.server_context(cert, key).getContext(), None).get_cipher_list()
        self.assertEqual(names, {n for n in reference if not n.startswith("TLS_")})


class ClientTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        self.daemon = yield start_bridge(self, KEYS_REFRESH_INTERVAL=0.5)

    @defer.inlineCallbacks
    def test_our_cli_client_connects(self):
        seen = []
        conn = yield connect(reactor, self.daemon.url)
        conn.unsolicited_listeners.append(seen.append)
        yield eventually(lambda: seen, timeout=10)
        self.assertEqual(seen[0], IDENTIFY_REQUEST)
        yield conn.close()

    @defer.inlineCallbacks
    def test_autobahns_client_connects(self):
        peer = yield connect_peer(self, self.daemon, role="server")
        first = yield peer.wait_for(lambda t: True)
        self.assertEqual(first, IDENTIFY_REQUEST)

    @defer.inlineCallbacks
    def test_openssl_s_client_gets_http11_by_alpn_on_both_engines(self):
        openssl = shutil.which("openssl")
        if openssl is None:
            raise unittest.SkipTest("no openssl command on this machine")
        other = yield start_bridge(self, BRIDGE_TLS_ENGINE="pyopenssl")
        for daemon in (self.daemon, other):
            port = daemon.listener.port.getHost().port
            for offer, expected in ((["-alpn", "http/1.1"], "ALPN protocol: http/1.1"),
                                    (["-alpn", "h2,http/1.1"], "ALPN protocol: http/1.1"),
                                    ([], "No ALPN negotiated")):
                run = yield threads.deferToThread(
                    subprocess.run, [openssl, "s_client", "-connect", f"127.0.0.1:{port}", *offer],
                    input=b"", capture_output=True, timeout=20)
                out = run.stdout.decode("utf-8", "replace")
                self.assertIn(expected, out, out[-2000:])
                self.assertRegex(out, r"New, TLSv1\.[23], Cipher is ")

    @defer.inlineCallbacks
    def test_sixteen_mebibyte_frames_both_ways(self):
        server, client, server_id, client_id = yield paired_peers(self, self.daemon)
        body = "y" * (16 * MiB - 100)
        start = len(server.frames)
        client.send_text(server_id + "\n" + body)
        got = yield server.wait_for(lambda t: len(t) > MiB, start, timeout=40)
        self.assertEqual(got, client_id + "\n" + body)
        start = len(client.frames)
        server.send_text(client_id + "\n" + body)
        got = yield client.wait_for(lambda t: len(t) > MiB, start, timeout=40)
        self.assertEqual(got, server_id + "\n" + body)
        # the connections go on afterwards
        start = len(server.frames)
        client.send_text(server_id + "\nafter")
        got = yield server.wait_for(lambda t: t.endswith("\nafter"), start)
        self.assertEqual(got, client_id + "\nafter")

    @defer.inlineCallbacks
    def test_a_slow_receiver_pauses_the_sender_and_everything_arrives_in_order(self):
        server, client, server_id, client_id = yield paired_peers(self, self.daemon)
        sender_flow = self.daemon.bridge.directory.get(server_id).link.flow
        client.transport.pauseProducing()  # the receiver stops reading its socket
        chunk = "z" * (256 * 1024)
        start = len(client.frames)
        for i in range(40):  # 10 MiB: more than MAX_PEER_BUFFER_BYTES' default and the socket buffers
            server.send_text(client_id + "\n" + str(i) + chunk)
        yield eventually(lambda: sender_flow.pauses >= 1, timeout=20)
        client.transport.resumeProducing()
        yield client.wait_for(lambda t: t.startswith(server_id + "\n39"), start, timeout=30)
        got = [t for t in client.frames[start:] if len(t) > 1000]
        self.assertEqual([t[len(server_id) + 1:].split("z", 1)[0] for t in got], [str(i) for i in range(40)])
        yield eventually(lambda: not sender_flow.reading_paused, timeout=10)


class StallTests(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_a_partial_record_mid_handshake_is_no_busy_loop_and_times_out(self):
        daemon = yield start_bridge(self, HANDSHAKE_TIMEOUT=2)
        reads = count_reads(self)
        client = yield scripted(daemon, hold=True)
        try:
            client.tls.do_handshake()
        except ssl.SSLWantReadError:
            pass
        hello = client.outgoing.read()
        client.transport.write(hello[: len(hello) // 2])  # half a ClientHello, then nothing
        yield sleep(1.0)
        self.assertFalse(client.lost.called)
        self.assertLessEqual(sum(reads.values()), 3, "the bridge kept reading a stalled connection")
        yield client.lost  # the handshake deadline closes it
        yield eventually(lambda: daemon.listener.guard.total == 0, timeout=5)

    @defer.inlineCallbacks
    def test_a_partial_record_after_the_upgrade_is_no_busy_loop_and_auth_timeout_closes(self):
        daemon = yield start_bridge(self, AUTH_TIMEOUT=2, HANDSHAKE_TIMEOUT=10)
        reads = count_reads(self)
        client = yield scripted(daemon)
        yield client.handshaken
        client.send(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        yield eventually(lambda: IDENTIFY_REQUEST.encode() in client.plain, timeout=10)
        self.assertIn(b"101 Switching Protocols", client.plain)
        frame = frames.encode_frame(0x1, b'{"id":"x","name":"identify","namespace":"rpc","args":""}', mask=b"abcd")
        before = sum(reads.values())
        client.send(frame, keep_back=3)  # the record never completes
        yield sleep(1.0)
        self.assertLessEqual(sum(reads.values()) - before, 3, "the bridge kept reading a stalled connection")
        yield client.lost
        self.assertIn(b"not authenticated within 2 s", client.plain)  # the close frame's reason
        yield eventually(lambda: not daemon.bridge.directory.peers, timeout=5)

    @defer.inlineCallbacks
    def test_a_client_vanishing_mid_handshake_leaves_the_bridge_serving(self):
        daemon = yield start_bridge(self)
        for _ in range(3):
            client = yield scripted(daemon, hold=True)
            try:
                client.tls.do_handshake()
            except ssl.SSLWantReadError:
                pass
            client.transport.write(client.outgoing.read())  # a whole ClientHello…
            yield eventually(lambda: daemon.listener.guard.total >= 1, timeout=5)
            client.transport.abortConnection()  # …then a reset instead of the rest
            yield client.lost
        yield eventually(lambda: daemon.listener.guard.total == 0, timeout=5)
        peer = yield connect_peer(self, daemon)
        first = yield peer.wait_for(lambda t: True)
        self.assertEqual(first, IDENTIFY_REQUEST)


class Commands(protocol.Protocol):
    """Server side for TransportTests: b"big" writes 8 MiB at once (written through, as the
    bridge's peer connections are), b"bye" writes a line and closes."""

    def dataReceived(self, data):
        if data == b"big":
            from sysadmd.wire.wsbase import write_through

            self.assertion = write_through(self.transport)
            self.transport.write(bytes(range(256)) * (32 * 1024))
        elif data == b"bye":
            self.transport.write(b"bye\n")
            self.transport.loseConnection()


class TransportTests(unittest.TestCase):
    """TLSServer under a plain protocol on a TLSPort of its own."""

    timeout = 30

    def setUp(self):
        state = tempfile.mkdtemp(prefix="brg", dir="/tmp")
        self.addCleanup(shutil.rmtree, state, True)
        from sysadmd.runtime import tls

        cert, key, _ = tls.ensure_certificate(state, "bridge")
        self.servers = []

        def build():
            server = Commands()
            self.servers.append(server)
            return server

        self.port = tlsfast.TLSPort(0, protocol.Factory.forProtocol(build), tlsfast.server_context(cert, key),
                                    interface="127.0.0.1", reactor=reactor)
        self.port.startListening()
        self.addCleanup(self.port.stopListening)

    @defer.inlineCallbacks
    def test_a_big_write_through_to_a_full_socket_arrives_whole_and_in_order(self):
        # The socket takes only part of it at once: the rest waits in Twisted's buffer as
        # ciphertext and goes out as the client reads (with OpenSSL writing the socket
        # itself, Twisted's 128 KiB retries were refused with "bad length").
        client = yield scripted(None, port=self.port, testcase=self)
        yield client.handshaken
        client.transport.pauseProducing()  # the socket fills up at the first write
        client.send(b"big")
        yield eventually(lambda: self.servers and getattr(self.servers[0], "assertion", None), timeout=10)
        yield sleep(0.3)
        client.transport.resumeProducing()
        expected = bytes(range(256)) * (32 * 1024)
        yield eventually(lambda: len(client.plain) >= len(expected) or client.lost.called, timeout=20)
        self.assertFalse(client.lost.called, client.__dict__.get("reason"))
        self.assertEqual(client.plain, expected)

    @defer.inlineCallbacks
    def test_lose_connection_flushes_then_sends_close_notify(self):
        client = yield scripted(None, port=self.port, testcase=self)
        yield client.handshaken
        client.send(b"bye")
        yield client.lost
        self.assertEqual(client.plain, b"bye\n")
        self.assertTrue(client.close_notify)
