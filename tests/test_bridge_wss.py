"""The bridge over real TLS WebSockets on loopback, with scripted server and client peers."""

import json
import shutil
import tempfile

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol, connectWS
import pytest
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from bridge import config as configmod
from bridge.api import IDENT_ID, IDENTIFY_REQUEST, LIST_KEYS_ID, LIST_KEYS_REQUEST
from bridge.service import build
from sysadmd.runtime import crypto
from sysadmd.client.wsclient import insecure_client_tls

KEYS = {}


def private_key(name):
    if name not in KEYS:
        KEYS[name] = crypto.generate_private_key(2048)
    return KEYS[name]


def bridge_config(testcase, **overrides):
    state = tempfile.mkdtemp(prefix="br", dir="/tmp")
    testcase.addCleanup(shutil.rmtree, state, True)
    raw = {"PORT": "tcp:0:interface=127.0.0.1", "STATE_DIR": state}
    raw.update({k.upper(): str(v) for k, v in overrides.items()})
    return configmod.load(None, raw)


@defer.inlineCallbacks
def start_bridge(testcase, **overrides):
    """A real bridge on 127.0.0.1:0, stopped at cleanup; returns the BridgeDaemon.
    A test class's ``tls_engine`` picks BRIDGE_TLS_ENGINE (else the default)."""
    engine = getattr(testcase, "tls_engine", None)
    if engine and "BRIDGE_TLS_ENGINE" not in {k.upper() for k in overrides}:
        overrides["BRIDGE_TLS_ENGINE"] = engine
    daemon = build(bridge_config(testcase, **overrides), reactor)
    daemon.startService()
    testcase.addCleanup(daemon.stopService)
    yield daemon.listener.ready
    daemon.url = f"wss://127.0.0.1:{daemon.listener.port.getHost().port}/"
    return daemon


def tcp_buffered(tcp):
    """Bytes waiting in a Twisted TCP transport's own write buffer."""
    return len(tcp.dataBuffer) - tcp.offset + tcp._tempDataLen


def sleep(seconds):
    return task.deferLater(reactor, seconds, lambda: None)


class ScriptedPeer(WebSocketClientProtocol):
    """A peer that answers identify and list_ssl_checksums like the Qt peers do."""

    def __init__(self):
        super().__init__()
        self.frames = []
        self.waiters = []
        self.closed = defer.Deferred()
        self.close_code = None
        self.close_reason = None

    def onOpen(self):
        self.factory.opened.callback(self)

    def onMessage(self, payload, isBinary):
        text = payload.decode("utf-8")
        self.frames.append(text)
        spec = self.factory.spec
        if text == IDENTIFY_REQUEST and spec.get("role"):
            self.send_json({"args": {"hostname": "h", "type": spec["role"]}, "id": IDENT_ID, "name": "response", "namespace": "rpc"})
        elif text == LIST_KEYS_REQUEST and spec.get("md5s") is not None:
            self.send_json({"args": {"md5_keys": spec["md5s"]}, "id": LIST_KEYS_ID, "name": "response", "namespace": "rpc"})
        for waiter in list(self.waiters):
            predicate, start, d = waiter
            if predicate(text) and len(self.frames) > start:
                self.waiters.remove(waiter)
                d.callback(text)

    def onClose(self, wasClean, code, reason):
        self.close_code, self.close_reason = code, reason
        if not self.factory.opened.called:
            self.factory.opened.errback(ConnectionError(f"closed {code} {reason}"))
        if not self.closed.called:
            self.closed.callback((code, reason))

    def send_json(self, obj):
        self.send_text(json.dumps(obj, separators=(",", ":")))

    def send_text(self, text):
        if self.state != self.STATE_OPEN:
            return
        self.sendMessage(text.encode("utf-8"), isBinary=False)

    def wait_for(self, predicate, start=0, timeout=10):
        """Fires with the first frame (index >= start) matching *predicate*."""
        for text in self.frames[start:]:
            if predicate(text):
                return defer.succeed(text)
        d = defer.Deferred()
        self.waiters.append((predicate, start, d))
        return d.addTimeout(timeout, reactor)

    def wait_reply(self, request_id, start=0):
        def match(text):
            try:
                return text.startswith("{") and json.loads(text).get("id") == request_id
            except ValueError:
                return False

        return self.wait_for(match, start).addCallback(json.loads)

    def wait_available(self, predicate=lambda ids: True, start=0):
        def match(text):
            if not text.startswith('{"args":{"available_connections"'):
                return False
            return predicate(json.loads(text)["args"]["available_connections"])

        return self.wait_for(match, start).addCallback(lambda t: json.loads(t)["args"]["available_connections"])

    @defer.inlineCallbacks
    def authenticate(self, key, rid="auth1"):
        start = len(self.frames)
        self.send_json({"args": "", "id": rid, "name": "auth_ssl", "namespace": "rpc"})
        reply = yield self.wait_reply(rid, start)
        challenge = reply["args"]["test_string"]
        start = len(self.frames)
        self.send_json({"args": {"encrypted_string": crypto.sign_challenge(key, challenge)}, "id": rid, "name": "auth_ssl", "namespace": "rpc"})
        reply = yield self.wait_reply(rid, start)
        return reply

    def close(self):
        if not self.closed.called:
            self.sendClose(1000)
        return self.closed


@defer.inlineCallbacks
def connect_peer(testcase, daemon, role=None, md5s=None):
    factory = WebSocketClientFactory(daemon.url, reactor=reactor)
    factory.protocol = ScriptedPeer
    factory.noisy = False
    factory.spec = {"role": role, "md5s": md5s}
    factory.opened = defer.Deferred()
    factory.setProtocolOptions(autoFragmentSize=0, maxMessagePayloadSize=64 * 1024 * 1024,
                               maxFramePayloadSize=64 * 1024 * 1024, openHandshakeTimeout=10, closeHandshakeTimeout=3)
    connectWS(factory, insecure_client_tls(), timeout=10)
    peer = yield factory.opened
    testcase.addCleanup(peer.close)
    return peer


def register(daemon, nickname, key, role=None):
    return daemon.bridge.keys.import_key(nickname, crypto.public_pem(key), role)


def md5_of_key(key):
    return crypto.md5_checksum(crypto.public_pem(key))


@defer.inlineCallbacks
def paired_peers(testcase, daemon, shared=None):
    """An authenticated server and client whose key lists overlap; returns (server, client, server_id, client_id)."""
    if shared is None:
        shared = md5_of_key(private_key("client"))  # the client is paired on the key it proves
    register(daemon, "srv", private_key("server"), "server")
    register(daemon, "cli", private_key("client"), "client")
    server = yield connect_peer(testcase, daemon, role="server", md5s=[shared, "other"])
    client = yield connect_peer(testcase, daemon, role="client", md5s=[shared])
    yield server.authenticate(private_key("server"))
    yield client.authenticate(private_key("client"))
    client_ids = yield server.wait_available(lambda ids: len(ids) == 1)
    server_ids = yield client.wait_available(lambda ids: len(ids) == 1)
    return server, client, server_ids[0], client_ids[0]


class HandshakeTests(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def setUp(self):
        self.daemon = yield start_bridge(self)

    @defer.inlineCallbacks
    def test_bridge_speaks_first_and_identifies_itself(self):
        peer = yield connect_peer(self, self.daemon)
        first = yield peer.wait_for(lambda t: True)
        self.assertEqual(first, '{"args":"","id":"sysadm_bridge_request_ident","name":"identify","namespace":"rpc"}')
        peer.send_json({"args": "", "id": "who", "name": "identify", "namespace": "rpc"})
        reply = yield peer.wait_reply("who")
        self.assertEqual(reply["args"]["type"], "bridge")
        self.assertIsInstance(reply["args"]["hostname"], str)
        self.assertEqual((reply["name"], reply["namespace"]), ("response", "rpc"))

    @defer.inlineCallbacks
    def test_identify_reply_sets_role(self):
        server = yield connect_peer(self, self.daemon, role="server")
        client = yield connect_peer(self, self.daemon, role="client")
        yield sleep(0.3)
        roles = sorted(p.role for p in self.daemon.bridge.directory.peers.values())
        self.assertEqual(roles, ["client", "server"])
        self.assertTrue(server.frames and client.frames)

    @defer.inlineCallbacks
    def test_auth_ssl_success_then_key_list_request(self):
        register(self.daemon, "srv", private_key("server"))
        peer = yield connect_peer(self, self.daemon, role="server")
        reply = yield peer.authenticate(private_key("server"), rid="server_to_bridge_auth")
        token, ttl = reply["args"]
        self.assertEqual((len(token), ttl, reply["name"], reply["namespace"]), (40, 0, "response", "rpc"))
        yield peer.wait_for(lambda t: t == '{"args":{"action":"list_ssl_checksums"},"id":"bridge_request_list_keys","name":"settings","namespace":"rpc"}')
        peer.send_json({"args": {}, "id": "q", "name": "query", "namespace": "rpc"})
        reply = yield peer.wait_reply("q")
        self.assertEqual(reply, {"args": None, "id": "q", "name": "response", "namespace": "rpc"})

    @defer.inlineCallbacks
    def test_wrong_signature_is_unauthorized(self):
        register(self.daemon, "srv", private_key("server"))
        peer = yield connect_peer(self, self.daemon, role="server")
        reply = yield peer.authenticate(private_key("stranger"), rid="x1")
        self.assertEqual(reply, {"args": "unauthorized", "id": "x1", "name": "error", "namespace": "rpc"})
        peer.send_json({"args": {}, "id": "q", "name": "query", "namespace": "rpc"})
        reply = yield peer.wait_reply("q")
        self.assertEqual(reply, {"args": None, "id": "q", "name": "error", "namespace": "rpc"})

    @defer.inlineCallbacks
    def test_challenge_single_use_and_bound_to_connection(self):
        key = private_key("server")
        register(self.daemon, "srv", key)
        a = yield connect_peer(self, self.daemon, role="server")
        b = yield connect_peer(self, self.daemon, role="server")
        a.send_json({"args": "", "id": "s1", "name": "auth_ssl", "namespace": "rpc"})
        challenge = (yield a.wait_reply("s1"))["args"]["test_string"]
        stage2 = {"args": {"encrypted_string": crypto.sign_challenge(key, challenge)}, "id": "s2", "name": "auth_ssl", "namespace": "rpc"}
        b.send_json(stage2)  # someone else's challenge
        self.assertEqual((yield b.wait_reply("s2"))["args"], "unauthorized")
        a.send_json(stage2)
        self.assertEqual(len((yield a.wait_reply("s2"))["args"]), 2)
        start = len(a.frames)
        a.send_json(dict(stage2, id="s3"))  # replay on the same connection
        self.assertEqual((yield a.wait_reply("s3", start))["args"], "unauthorized")

    @defer.inlineCallbacks
    def test_unauthenticated_relay_frame_is_refused(self):
        peer = yield connect_peer(self, self.daemon, role="client")
        start = len(peer.frames)
        peer.send_text("::{abc}\nhello")
        text = yield peer.wait_for(lambda t: '"code":"401"' in t, start)
        self.assertIn("auth_ssl", text)


@pytest.mark.slow  # waits seconds of real time (timeouts, floods)
class TimeoutAndBlockTests(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_unauthenticated_peer_closed_after_auth_timeout(self):
        daemon = yield start_bridge(self, AUTH_TIMEOUT=1)
        peer = yield connect_peer(self, daemon, role="client")
        started = reactor.seconds()
        code, reason = yield peer.closed
        self.assertEqual(code, 1008)
        self.assertIn("not authenticated within 1 s", reason)
        self.assertLess(reactor.seconds() - started, 5)
        yield sleep(0.1)
        self.assertEqual(len(daemon.bridge.directory), 0)

    @defer.inlineCallbacks
    def test_blocked_address_closed_with_1008(self):
        daemon = yield start_bridge(self, BLACKLIST_EXEMPT_LOOPBACK="false", BLACKLIST_AUTH_FAIL_LIMIT=2)
        register(daemon, "srv", private_key("server"))
        peer = yield connect_peer(self, daemon, role="server")
        yield peer.authenticate(private_key("stranger"), rid="f1")
        yield peer.authenticate(private_key("stranger"), rid="f2")
        self.assertGreater(daemon.bridge.blacklist.blocked_for("127.0.0.1"), 0)
        again = None
        try:
            again = yield connect_peer(self, daemon, role="server")
        except ConnectionError as e:
            self.assertIn("1008", str(e))
            return
        code, reason = yield again.closed
        self.assertEqual(code, 1008)
        self.assertIn("blocked", reason)


@pytest.mark.slow  # waits seconds of real time (timeouts, floods)
class LimitTests(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_connection_limit_and_message_size(self):
        daemon = yield start_bridge(self, MAX_CONNECTIONS=1, MAX_MESSAGE_BYTES=1024)
        first = yield connect_peer(self, daemon, role="client")
        second = yield connect_peer(self, daemon, role="client")
        code, reason = yield second.closed
        self.assertEqual(code, 1013)
        self.assertIn("MAX_CONNECTIONS=1", reason)
        first.send_text("{" + "x" * 2000)
        code, _ = yield first.closed
        self.assertEqual(code, 1009)

    @defer.inlineCallbacks
    def test_dead_peer_dropped_by_ping_and_partner_told(self):
        daemon = yield start_bridge(self, PING_INTERVAL=2)
        server, client, server_id, client_id = yield paired_peers(self, daemon)
        start = len(server.frames)
        client.transport.pauseProducing()  # never reads the pings, never answers them
        ids = yield server.wait_available(lambda ids: ids == [], start)
        self.assertEqual(ids, [])
        self.assertIsNone(daemon.bridge.directory.get(client_id))
        client.transport.resumeProducing()  # now it notices the dropped connection
        code, _ = yield client.closed
        self.assertEqual(code, 1006)


class RelayTests(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def setUp(self):
        self.daemon = yield start_bridge(self, KEYS_REFRESH_INTERVAL=0.5)

    @defer.inlineCallbacks
    def test_pairing_and_relay_both_ways_byte_for_byte(self):
        server, client, server_id, client_id = yield paired_peers(self, self.daemon)
        self.assertTrue(server_id.startswith("::{") and client_id.startswith("::{"))
        self.assertNotEqual(server_id, client_id)
        payload = '{"args":"","id":"sysadm_client_identify"}\n  second line é ✓ \\n {"x":1}\n'
        start = len(server.frames)
        client.send_text(server_id + "\n" + payload)
        got = yield server.wait_for(lambda t: t.startswith("::{"), start)
        self.assertEqual(got, client_id + "\n" + payload)
        start = len(client.frames)
        server.sendMessage((client_id + "\neyJhcmdzIjoiIn0=").encode(), isBinary=True)  # binary in, text out
        got = yield client.wait_for(lambda t: t.startswith("::{"), start)
        self.assertEqual(got, server_id + "\neyJhcmdzIjoiIn0=")

    @defer.inlineCallbacks
    def test_frame_to_unpaired_id_dropped_and_reannounced(self):
        server, client, server_id, client_id = yield paired_peers(self, self.daemon)
        lonely = yield connect_peer(self, self.daemon, role="client", md5s=["nothing-shared"])
        register(self.daemon, "cli2", private_key("client2"), "client")
        yield lonely.authenticate(private_key("client2"))
        lonely_ids = yield lonely.wait_available()
        self.assertEqual(lonely_ids, [])
        start = len(lonely.frames)
        server_start = len(server.frames)
        lonely.send_text(server_id + "\nlet me in")
        again = yield lonely.wait_available(start=start)
        self.assertEqual(again, [])
        yield sleep(0.3)
        self.assertFalse(any("let me in" in t for t in server.frames[server_start:]))
        start = len(client.frames)
        client.send_text("::{00000000-0000-0000-0000-000000000000}\nhi")
        self.assertEqual((yield client.wait_available(start=start)), [server_id])

    @defer.inlineCallbacks
    def test_server_disconnect_updates_client_quickly(self):
        server, client, server_id, client_id = yield paired_peers(self, self.daemon)
        start = len(client.frames)
        began = reactor.seconds()
        server.transport.abortConnection()  # no close handshake: the bridge sees the TCP loss
        ids = yield client.wait_available(lambda ids: ids == [], start)
        self.assertEqual(ids, [])
        self.assertLess(reactor.seconds() - began, 2.0)

    @defer.inlineCallbacks
    def test_key_list_refresh_pairs_later(self):
        register(self.daemon, "srv", private_key("server"), "server")
        register(self.daemon, "cli", private_key("client"), "client")
        server = yield connect_peer(self, self.daemon, role="server", md5s=["a"])
        mine = md5_of_key(private_key("client"))
        client = yield connect_peer(self, self.daemon, role="client", md5s=[mine])
        yield server.authenticate(private_key("server"))
        yield client.authenticate(private_key("client"))
        self.assertEqual((yield client.wait_available()), [])
        server.factory.spec["md5s"] = ["a", mine]  # the client's key registered on the server meanwhile
        ids = yield client.wait_available(lambda ids: len(ids) == 1)
        self.assertEqual(len(ids), 1)


class ClaimedKeyRelayTests(unittest.TestCase):
    """Issue 7 item 2 over real wss: M (server) and M' (client) both claim the victim's
    checksum; M' must not be paired with the real server."""
    timeout = 30

    @defer.inlineCallbacks
    def test_client_reporting_a_victims_checksum_is_not_paired_with_the_real_server(self):
        daemon = yield start_bridge(self)
        victim = md5_of_key(private_key("victim"))
        register(daemon, "srv", private_key("server"), "server")
        register(daemon, "mallory-srv", private_key("mallory-srv"))   # no role: bound on first use
        register(daemon, "mallory-cli", private_key("mallory-cli"))
        real = yield connect_peer(self, daemon, role="server", md5s=[victim])
        yield real.authenticate(private_key("server"))
        fake = yield connect_peer(self, daemon, role="server", md5s=[victim])
        yield fake.authenticate(private_key("mallory-srv"))
        relay = yield connect_peer(self, daemon, role="client", md5s=[victim])
        reply = yield relay.authenticate(private_key("mallory-cli"))
        self.assertEqual(reply["name"], "response")
        self.assertEqual((yield relay.wait_available()), [])
        real_id = next(p.id for p in daemon.bridge.directory.peers.values() if p.key_nickname == "srv")
        start = len(relay.frames)
        relay.send_text(real_id + '\n{"args":"","id":"x","name":"identify","namespace":"rpc"}')
        again = yield relay.wait_available(start=start)  # dropped, and told its (empty) list again
        self.assertEqual(again, [])
        self.assertFalse(any(f.startswith(real_id) for f in real.frames + relay.frames))
        self.assertEqual([f for f in real.frames if f.startswith("::")], [])
        # The keys were bound to the roles they first used: M's key cannot now log in as a client.
        self.assertEqual(daemon.bridge.keys.get("mallory-srv").role, "server")
        swap = yield connect_peer(self, daemon, role="client", md5s=[victim])
        refused = yield swap.authenticate(private_key("mallory-srv"))
        self.assertEqual(refused["args"], "unauthorized")


@pytest.mark.slow  # waits seconds of real time (timeouts, floods)
class BackpressureTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_stalled_receiver_pauses_sender_then_is_closed(self):
        daemon = yield start_bridge(self, MAX_PEER_BUFFER_BYTES=2 * 1024 * 1024, RECEIVER_STALL_TIMEOUT=3)
        server, client, server_id, client_id = yield paired_peers(self, daemon)
        bridge = daemon.bridge
        sender_flow = bridge.directory.get(server_id).link.flow
        receiver_flow = bridge.directory.get(client_id).link.flow
        client.transport.pauseProducing()  # the client stops reading its socket
        chunk = "x" * (1024 * 1024)
        for _ in range(48):
            server.send_text(client_id + "\n" + chunk)
        deadline = reactor.seconds() + 20
        peak = 0
        while not sender_flow.pauses and reactor.seconds() < deadline:
            peak = max(peak, receiver_flow.queued_bytes)
            yield sleep(0.05)
        self.assertGreaterEqual(sender_flow.pauses, 1, "the sender was never paused")
        # Still congested, or already being closed: on a slow machine the stall timeout can
        # run out while the 48 MiB are still crossing TLS, before this check runs.
        self.assertTrue(receiver_flow.congested or receiver_flow.closing)
        receiver_tcp = bridge.directory.get(client_id).link.transport.transport
        buffered_peak = 0
        while receiver_flow.closing is False and reactor.seconds() < deadline:
            peak = max(peak, receiver_flow.queued_bytes)
            buffered_peak = max(buffered_peak, tcp_buffered(receiver_tcp))
            self.assertLessEqual(receiver_flow.queued_bytes, 2 * 1024 * 1024)
            yield sleep(0.05)
        self.assertTrue(receiver_flow.closing, "the stuck receiver was never closed")
        self.assertLessEqual(peak, 2 * 1024 * 1024)
        # Besides our queue, the transport holds at most about one frame: 48 MiB were sent.
        self.assertLess(buffered_peak, 3 * 1024 * 1024)
        self.assertFalse(sender_flow.reading_paused)  # released when the receiver went
        client.transport.resumeProducing()
        code, reason = yield client.closed
        self.assertIn(code, (1008, 1006))
        ids = yield server.wait_available(lambda ids: ids == [])
        self.assertEqual(ids, [])


# The same tests with the listener on Twisted's TLS over pyOpenSSL (the classes above run
# on the default engine, the standard library's ssl: bridge/tlsfast.py).
class HandshakeTestsPyOpenSSL(HandshakeTests):
    tls_engine = "pyopenssl"


class TimeoutAndBlockTestsPyOpenSSL(TimeoutAndBlockTests):
    tls_engine = "pyopenssl"


class LimitTestsPyOpenSSL(LimitTests):
    tls_engine = "pyopenssl"


class RelayTestsPyOpenSSL(RelayTests):
    tls_engine = "pyopenssl"


class ClaimedKeyRelayTestsPyOpenSSL(ClaimedKeyRelayTests):
    tls_engine = "pyopenssl"


class BackpressureTestsPyOpenSSL(BackpressureTests):
    tls_engine = "pyopenssl"
