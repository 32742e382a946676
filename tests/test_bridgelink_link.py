"""Bridge links end to end: a real sysadmd dials a scripted fake bridge over TLS on loopback.

The fake bridge runs upstream's handshake exactly as docs/protocol.md §8.1 shows
(identify, auth_ssl challenge checked with crypto.recover_signed, list_ssl_checksums),
then announces clients and relays their frames like the real bridge does.
"""

import base64
import json

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
import pytest
from twisted.internet import defer, reactor, ssl, task
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from sysadmd.runtime import crypto, tls
from sysadmd.bridgelink import key as bridgekey
from sysadmd.wire.envelope import encode
from sysadmd.session import Identity
from tests import keys_support as ks
from tests.support import FakePasswords, RecordingChannel, make_config, open_client, short_tempdir, start_daemon

IDENT = {"args": "", "id": "sysadm_bridge_request_ident", "name": "identify", "namespace": "rpc"}
LIST_KEYS = {"args": {"action": "list_ssl_checksums"}, "id": "bridge_request_list_keys", "name": "settings", "namespace": "rpc"}
CLIENT_A = "::{aaaaaaaa-0000-4000-8000-000000000001}"
CLIENT_B = "::{bbbbbbbb-0000-4000-8000-000000000002}"


@defer.inlineCallbacks
def wait_until(predicate, timeout=10.0, what="condition"):
    """Poll *predicate* every 50 ms; fail the test after *timeout* seconds."""
    deadline = reactor.seconds() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        yield task.deferLater(reactor, 0.05, lambda: None)


class FakeBridgeProtocol(WebSocketServerProtocol):
    role = None
    challenge = None
    authenticated = False
    md5_keys = None

    def onOpen(self):
        self.factory.bridge.connections.append(self)
        self.texts = []
        self.send(IDENT)

    def send(self, message):
        self.sendMessage((message if isinstance(message, str) else encode(message)).encode("utf-8"))

    def onMessage(self, payload, isBinary):
        text = payload.decode("utf-8")
        self.texts.append(text)
        bridge = self.factory.bridge
        if not text.startswith("{"):
            client_id, _, body = text.partition("\n")
            bridge.frames.append((client_id, body))
            return
        msg = json.loads(text)
        name, rid, args = msg.get("name"), msg.get("id"), msg.get("args")
        if name == "response" and rid == "sysadm_bridge_request_ident":
            self.role = args["type"]
        elif name == "response" and rid == "bridge_request_list_keys":
            self.md5_keys = args["md5_keys"]
        elif name == "auth_ssl" and isinstance(args, dict) and "encrypted_string" in args:
            expected, self.challenge = self.challenge, None
            ok = expected is not None and any(
                crypto.recover_signed(key, args["encrypted_string"]) == expected.encode() for key in bridge.trusted)
            if ok:
                self.authenticated = True
                self.send({"args": [crypto.random_token(40), 0], "id": rid, "name": "response", "namespace": "rpc"})
                reactor.callLater(0.01, self.send, LIST_KEYS)
            else:
                self.send({"args": "unauthorized", "id": rid, "name": "error", "namespace": "rpc"})
        elif name == "auth_ssl" and bridge.silent:
            return
        elif name == "auth_ssl":
            self.challenge = crypto.random_token(40)
            self.send({"args": {"test_string": self.challenge}, "id": rid, "name": "response", "namespace": "rpc"})

    def onPing(self, payload):
        self.factory.bridge.pings += 1
        super().onPing(payload)

    def onClose(self, wasClean, code, reason):
        bridge = self.factory.bridge
        if self in bridge.connections:
            bridge.connections.remove(self)
        bridge.closed += 1


class FakeBridge:
    """A scripted bridge on 127.0.0.1 with its own self-signed certificate."""

    def __init__(self, trusted):
        self.trusted = list(trusted)
        self.connections = []
        self.frames = []  # (client id, body) relayed from the server
        self.closed = 0
        self.pings = 0
        self.silent = False  # True: never answer auth_ssl
        self.port = None
        self.listening = None
        self.new_certificate()

    def new_certificate(self):
        cert_pem, key_pem = tls.make_self_signed("localhost")
        self.fingerprint = tls.fingerprint_sha256(cert_pem)
        self.options = ssl.PrivateCertificate.loadPEM(cert_pem + b"\n" + key_pem).options()

    def start(self):
        factory = WebSocketServerFactory(url=None)
        factory.protocol = FakeBridgeProtocol
        factory.bridge = self
        factory.noisy = False
        self.listening = reactor.listenSSL(self.port or 0, factory, self.options, interface="127.0.0.1")
        self.port = self.listening.getHost().port
        return self.port

    @defer.inlineCallbacks
    def stop(self):
        if self.listening is not None:
            listening, self.listening = self.listening, None
            yield listening.stopListening()
        for conn in list(self.connections):
            conn.transport.abortConnection()
        yield wait_until(lambda: not self.connections, 5, "fake bridge connections to close")

    @property
    def server(self):
        """The authenticated server connection, if any."""
        for conn in self.connections:
            if conn.authenticated and conn.md5_keys is not None:
                return conn
        return None

    def announce(self, ids):
        self.server.send({"args": {"available_connections": ids}, "id": "", "name": "bridge", "namespace": "events"})

    def relay(self, client_id, body):
        self.server.send(f"{client_id}\n{body}")

    @defer.inlineCallbacks
    def next_frame(self, client_id, timeout=10):
        found = yield wait_until(lambda: any(c == client_id for c, _ in self.frames), timeout, f"a frame for {client_id}")
        for i, (c, body) in enumerate(self.frames):
            if c == client_id:
                del self.frames[i]
                return body
        return found


def b64(obj):
    return base64.b64encode(encode(obj).encode()).decode()


def unb64(body):
    return json.loads(base64.b64decode(body).decode())


class LinkedDaemonCase(unittest.TestCase):
    """A daemon with one link to a fake bridge that trusts the daemon's bridge key."""

    timeout = 60
    verify = "pin"
    config = {}

    @defer.inlineCallbacks
    def setUp(self):
        self.state = short_tempdir(self)
        cfg = make_config(self.state, **self.config)
        self.running = yield start_daemon(self, cfg, passwords=FakePasswords({"root": "pw"}))
        self.server = self.running.server
        self.links = self.running.daemon.bridge_links
        public = crypto.load_public_key(bridgekey.public_key_pem(self.state))
        self.bridge = FakeBridge([public])
        self.bridge.start()
        self.addCleanup(self.bridge.stop)
        ks.register(self.running, "root", "c1")
        self.links.store.add("fb", f"127.0.0.1:{self.bridge.port}", self.verify)
        self.links.sync()
        self.link = self.links.links["fb"]

    def linked(self, timeout=10):
        return wait_until(lambda: self.bridge.server is not None and self.link.is_authenticated, timeout, "the link to authenticate")

    @defer.inlineCallbacks
    def login_md5(self, client_id, key="c1"):
        """The Qt client's bridged login (§3.3): plain stage 1, then base64 stage 2."""
        self.bridge.relay(client_id, encode({"args": {"md5_key": ks.md5_of(key)}, "id": "sysadm-client-auth-auto",
                                             "name": "auth_ssl", "namespace": "rpc"}))
        stage1 = json.loads((yield self.bridge.next_frame(client_id)))
        challenge = base64.b64decode(stage1["args"]["test_string"]).decode()
        signed = crypto.sign_challenge(ks.private_key(key), challenge)
        self.bridge.relay(client_id, b64({"args": {"encrypted_string": signed}, "id": "sysadm-client-auth-auto",
                                          "name": "auth_ssl", "namespace": "rpc"}))
        stage2 = unb64((yield self.bridge.next_frame(client_id)))
        return stage1, stage2


@pytest.mark.slow  # waits seconds of real time (timeouts, floods)
class HandshakeTests(LinkedDaemonCase):
    @defer.inlineCallbacks
    def test_link_identifies_authenticates_and_reports_checksums(self):
        yield self.linked()
        conn = self.bridge.server
        self.assertEqual(conn.role, "server")
        # Stage 1 goes out as soon as the socket opens, before the identify answer.
        self.assertEqual(conn.texts[0], '{"args":"","id":"server_to_bridge_auth","name":"auth_ssl","namespace":"rpc"}')
        ident = [json.loads(t) for t in conn.texts if "sysadm_bridge_request_ident" in t][0]
        self.assertEqual(ident["name"], "response")
        self.assertEqual(ident["namespace"], "rpc")
        self.assertEqual(ident["args"]["type"], "server")
        self.assertTrue(ident["args"]["hostname"])
        yield wait_until(lambda: conn.md5_keys is not None, 5, "the key list")
        self.assertEqual(conn.md5_keys, [ks.md5_of("c1")])
        reply = [t for t in conn.texts if "bridge_request_list_keys" in t][0]
        self.assertEqual(reply, encode({"args": {"md5_keys": [ks.md5_of("c1")]}, "id": "bridge_request_list_keys",
                                        "name": "response", "namespace": "rpc"}))
        status = self.links.status()["fb"]
        self.assertTrue(status["connected"])
        self.assertTrue(status["authenticated"])
        self.assertIsNone(status["last_error"])
        self.assertIsNone(status["next_retry_in"])
        self.assertEqual(status["fingerprint"], self.bridge.fingerprint)
        self.assertEqual(self.links.store.get("fb").fingerprint, self.bridge.fingerprint)

    @defer.inlineCallbacks
    def test_key_changes_reach_the_bridge_without_it_asking(self):
        yield self.linked()
        conn = self.bridge.server
        yield wait_until(lambda: conn.md5_keys == [ks.md5_of("c1")], 5, "the first key list")
        # The fake bridge asks for the list once, after auth; later lists are pushed.
        ks.register(self.running, "root", "c2")
        yield wait_until(lambda: conn.md5_keys is not None and ks.md5_of("c2") in conn.md5_keys, 6,
                         "the new key's checksum pushed to the bridge")
        self.assertEqual(sorted(conn.md5_keys), sorted([ks.md5_of("c1"), ks.md5_of("c2")]))
        self.running.daemon.keys.revoke("root", ks.stored_of("c1"))
        yield wait_until(lambda: conn.md5_keys == [ks.md5_of("c2")], 6, "the revoked key's checksum withdrawn")
        pushed = [json.loads(t) for t in conn.texts if '"bridge_request_list_keys"' in t]
        self.assertEqual(len(pushed), 3)  # the answer, then one push per change

    @defer.inlineCallbacks
    def test_md5_key_login_base64_mode_and_dispatcher_events(self):
        yield self.linked()
        self.bridge.announce([CLIENT_A])
        yield wait_until(lambda: self.link.clients.get(CLIENT_A) is not None, 5, "a session for the announced client")
        # Plain identify before the login, as the Qt client sends it.
        self.bridge.relay(CLIENT_A, encode({"args": "", "id": "sysadm_client_identify", "name": "identify", "namespace": "rpc"}))
        ident = json.loads((yield self.bridge.next_frame(CLIENT_A)))
        self.assertEqual((ident["id"], ident["name"], ident["args"]["type"]), ("sysadm_client_identify", "response", "server"))

        stage1, stage2 = yield self.login_md5(CLIENT_A)
        self.assertEqual((stage1["id"], stage1["name"]), ("sysadm-client-auth-auto", "response"))
        self.assertIn(" PUBLIC KEY--", base64.b64decode(stage1["args"]["new_ssl_key"]).decode())
        self.assertEqual(stage2["name"], "response", stage2)
        token, ttl = stage2["args"]
        self.assertGreaterEqual(len(token), 20)
        self.assertEqual(ttl, 900)

        self.bridge.relay(CLIENT_A, b64({"args": {}, "id": "q1", "name": "query", "namespace": "rpc"}))
        query = unb64((yield self.bridge.next_frame(CLIENT_A)))
        self.assertEqual((query["id"], query["name"]), ("q1", "response"))
        self.assertIn("rpc/dispatcher", query["args"])

        self.bridge.relay(CLIENT_A, b64({"args": ["dispatcher"], "id": "s1", "name": "subscribe", "namespace": "events"}))
        sub = unb64((yield self.bridge.next_frame(CLIENT_A)))
        self.assertEqual(sub["name"], "response", sub)
        self.bridge.relay(CLIENT_A, b64({"args": {"action": "run", "bj1": "echo bridged"}, "id": "r1",
                                         "name": "dispatcher", "namespace": "rpc"}))
        events = []
        while True:
            message = unb64((yield self.bridge.next_frame(CLIENT_A)))
            if message["namespace"] == "events":
                events.append(message)
                if message["args"].get("state") == "finished":
                    break
            else:
                self.assertEqual(message["args"], {"started": ["bj1"]})
        self.assertEqual(events[-1]["name"], "dispatcher")
        self.assertEqual(events[-1]["args"]["process_id"], "bj1")
        self.assertIn("bridged", json.dumps(events[-1]["args"]))

    @defer.inlineCallbacks
    def test_password_and_token_logins_are_refused_through_the_bridge(self):
        yield self.linked()
        direct = yield open_client(self, self.running)
        auth = yield direct.call("rpc", "auth", {"username": "root", "password": "pw"})
        token = auth["args"][0]
        self.bridge.announce([CLIENT_A])
        self.bridge.relay(CLIENT_A, encode({"args": {"username": "root", "password": "pw"}, "id": "a1", "name": "auth", "namespace": "rpc"}))
        reply = json.loads((yield self.bridge.next_frame(CLIENT_A)))
        self.assertEqual(reply["args"]["code"], "401")
        self.assertIn("only rpc/auth_ssl", reply["args"]["detail"])
        self.bridge.relay(CLIENT_A, encode({"args": {"token": token}, "id": "a2", "name": "auth_token", "namespace": "rpc"}))
        reply = json.loads((yield self.bridge.next_frame(CLIENT_A)))
        self.assertEqual(reply["args"]["code"], "401")
        self.bridge.relay(CLIENT_A, encode({"args": {}, "id": "q1", "name": "query", "namespace": "rpc"}))
        reply = json.loads((yield self.bridge.next_frame(CLIENT_A)))
        self.assertEqual(reply["args"]["code"], "401")
        self.assertEqual(self.server.passwords.calls, 1)  # the bridged auth never reached PAM

    @defer.inlineCallbacks
    def test_client_cannot_pass_for_the_bridge_answering_our_auth(self):
        yield self.linked()
        conn = self.bridge.server
        before = len(conn.texts)
        spoof = {"args": {"test_string": "sign-this-for-me"}, "id": "server_to_bridge_auth", "name": "response", "namespace": "rpc"}
        self.bridge.relay(CLIENT_B, encode(spoof))
        self.bridge.relay(CLIENT_B, encode({"args": ["stolen", 0], "id": "server_to_bridge_auth", "name": "response", "namespace": "rpc"}))
        self.bridge.relay(CLIENT_B, encode({"args": "", "id": "i1", "name": "identify", "namespace": "rpc"}))
        reply = json.loads((yield self.bridge.next_frame(CLIENT_B)))
        self.assertEqual(reply["id"], "i1")
        # Only the identify reply came back: nothing was signed, nothing was sent to the bridge itself.
        self.assertEqual(conn.texts[before:], [f"{CLIENT_B}\n{encode(reply)}"])
        self.assertFalse(any("encrypted_string" in t for t in conn.texts[before:]))
        self.assertTrue(self.link.is_authenticated)

    @defer.inlineCallbacks
    def test_departed_clients_lose_their_sessions_and_tokens(self):
        yield self.linked()
        self.bridge.announce([CLIENT_A, CLIENT_B])
        yield wait_until(lambda: len(self.link.clients) == 2, 5, "two bridged sessions")
        _, stage2 = yield self.login_md5(CLIENT_A)
        token = stage2["args"][0]
        self.assertIsNotNone(self.server.tokens.check(token))
        session_a = self.link.clients.get(CLIENT_A)
        self.assertEqual(self.links.status()["fb"]["peers"], sorted([CLIENT_A, CLIENT_B]))
        self.bridge.announce([CLIENT_B])
        yield wait_until(lambda: self.link.clients.ids() == [CLIENT_B], 5, "client A's session to end")
        self.assertTrue(session_a.closed)
        self.assertIsNone(self.server.tokens.check(token))
        # A frame from a client not yet announced opens its session lazily (upstream does).
        self.bridge.relay(CLIENT_A, encode({"args": "", "id": "i2", "name": "identify", "namespace": "rpc"}))
        reply = json.loads((yield self.bridge.next_frame(CLIENT_A)))
        self.assertEqual(reply["name"], "response")
        self.assertIsNot(self.link.clients.get(CLIENT_A), session_a)
        self.assertIsNone(self.link.clients.get(CLIENT_A).identity)

    @defer.inlineCallbacks
    def test_relinks_by_itself_after_the_bridge_restarts(self):
        yield self.linked()
        self.bridge.announce([CLIENT_A])
        yield wait_until(lambda: self.link.clients is not None and len(self.link.clients) == 1, 5, "a bridged session")
        session = self.link.clients.get(CLIENT_A)
        yield self.bridge.stop()
        yield wait_until(lambda: not self.link.connected, 10, "the link to notice the loss")
        self.assertTrue(session.closed)
        status = self.links.status()["fb"]
        self.assertFalse(status["authenticated"])
        self.assertTrue(status["last_error"])
        started = reactor.seconds()
        self.bridge.start()
        yield self.linked(10)
        self.assertLess(reactor.seconds() - started, 10)
        self.assertIsNone(self.links.status()["fb"]["last_error"])

    @defer.inlineCallbacks
    def test_a_changed_certificate_is_refused_and_reported(self):
        logged = []
        observer = lambda event: logged.append(event)  # noqa: E731
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        yield self.linked()
        pinned = self.bridge.fingerprint
        yield self.bridge.stop()
        self.bridge.new_certificate()
        self.bridge.start()
        yield wait_until(lambda: "certificate changed" in (self.link.last_error or ""), 10, "the certificate refusal")
        self.assertEqual(self.link.fingerprint, pinned)
        self.assertFalse(any(c.authenticated for c in self.bridge.connections))
        errors = [e for e in logged if e.get("log_level") is not None and e["log_level"].name == "error"
                  and "certificate changed" in str(e.get("error", ""))]
        self.assertTrue(errors)
        client = yield open_client(self, self.running)
        yield client.call("rpc", "auth", {"username": "root", "password": "pw"})
        reply = yield client.call("rpc", "settings", {"action": "list_bridges"})
        entry = reply["args"]["bridges"]["fb"]
        self.assertFalse(entry["authenticated"])
        self.assertEqual(entry["fingerprint"], pinned)
        self.assertIn("certificate changed", entry["last_error"])
        self.assertIn("bridge_add fb", entry["last_error"])


class RefusedKeyTests(LinkedDaemonCase):
    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.bridge.trusted = []

    @defer.inlineCallbacks
    def test_refused_key_is_reported_with_the_import_command(self):
        yield wait_until(lambda: "refused our key" in (self.link.last_error or ""), 10, "the key refusal")
        self.assertIn("sysadm-bridge import_ssl_file", self.link.last_error)
        self.assertFalse(self.link.is_authenticated)
        status = self.links.status()["fb"]
        self.assertFalse(status["authenticated"])
        self.assertEqual(status["peers"], [])


class CaModeTests(LinkedDaemonCase):
    verify = "ca"

    @defer.inlineCallbacks
    def test_ca_mode_refuses_a_self_signed_bridge(self):
        yield wait_until(lambda: "TLS handshake failed" in (self.link.last_error or ""), 10, "the TLS refusal")
        self.assertIn("certificate verify failed", self.link.last_error)
        self.assertFalse(any(c.authenticated for c in self.bridge.connections))
        self.assertIsNotNone(self.links.status()["fb"]["next_retry_in"])


@pytest.mark.slow  # waits seconds of real time (timeouts, floods)
class SilentBridgeTests(LinkedDaemonCase):
    config = {"AUTH_TIMEOUT": "1"}

    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.bridge.silent = True

    @defer.inlineCallbacks
    def test_a_bridge_that_never_answers_auth_is_left_and_retried(self):
        yield wait_until(lambda: "did not answer our auth_ssl" in (self.link.last_error or ""), 10, "the auth deadline")
        self.assertFalse(self.link.connected)
        self.bridge.silent = False
        yield self.linked(15)


class BridgeConnectionsOnlyTests(LinkedDaemonCase):
    config = {"BRIDGE_CONNECTIONS_ONLY": "true", "BRIDGE_PING_INTERVAL": "0.2"}

    @defer.inlineCallbacks
    def test_links_work_without_any_listener_and_ping_the_bridge(self):
        self.assertNotIn("wss", self.running.daemon.listeners)
        yield self.linked()
        self.bridge.announce([CLIENT_A])
        _, stage2 = yield self.login_md5(CLIENT_A)
        self.assertEqual(stage2["name"], "response")
        yield wait_until(lambda: self.bridge.pings >= 2, 5, "WebSocket pings from the link")


class SettingsActionTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        self.state = short_tempdir(self)
        self.running = yield start_daemon(self, make_config(self.state), passwords=FakePasswords({"root": "pw"}))
        self.server = self.running.server
        self.client = yield open_client(self, self.running)
        yield self.client.call("rpc", "auth", {"username": "root", "password": "pw"})
        self.bridge = FakeBridge([crypto.load_public_key(bridgekey.public_key_pem(self.state))])
        self.bridge.start()
        self.addCleanup(self.bridge.stop)

    def settings(self, **args):
        return self.client.call("rpc", "settings", args)

    @defer.inlineCallbacks
    def test_add_list_remove_at_run_time(self):
        empty = yield self.settings(action="list_bridges")
        self.assertEqual(empty["args"], {"bridges": {}})
        added = yield self.settings(action="add_bridge", nickname="rt", url=f"127.0.0.1:{self.bridge.port}", verify="none")
        self.assertEqual(added["name"], "response", added)
        self.assertEqual(added["args"]["bridges"]["rt"]["url"], f"wss://127.0.0.1:{self.bridge.port}")
        yield wait_until(lambda: self.bridge.server is not None, 10, "the added link to authenticate")
        listed = yield self.settings(action="list_bridges")
        entry = listed["args"]["bridges"]["rt"]
        self.assertEqual(set(entry), {"url", "verify", "fingerprint", "connected", "authenticated", "peers",
                                      "last_error", "next_retry_in"})
        self.assertEqual((entry["verify"], entry["connected"], entry["authenticated"]), ("none", True, True))
        self.assertEqual(entry["fingerprint"], self.bridge.fingerprint)
        removed = yield self.settings(action="remove_bridge", nickname="rt")
        self.assertEqual(removed["args"], {"removed": "rt"})
        yield wait_until(lambda: not self.bridge.connections, 10, "the removed link to disconnect")
        listed = yield self.settings(action="list_bridges")
        self.assertEqual(listed["args"], {"bridges": {}})

    @defer.inlineCallbacks
    def test_bad_requests_get_400_naming_the_field(self):
        cases = [
            ({"action": "add_bridge", "url": "x"}, "'nickname' is required"),
            ({"action": "add_bridge", "nickname": "n"}, "'url' is required"),
            ({"action": "add_bridge", "nickname": "n", "url": "ftp://h"}, "url: scheme 'ftp'"),
            ({"action": "add_bridge", "nickname": "n", "url": "h", "verify": "maybe"}, "verify: expected one of none, pin, ca"),
            ({"action": "add_bridge", "nickname": "a b", "url": "h"}, "nickname: expected"),
            ({"action": "remove_bridge"}, "'nickname' is required"),
            ({"action": "remove_bridge", "nickname": "ghost"}, "no bridge link named 'ghost'"),
        ]
        for args, detail in cases:
            reply = yield self.client.call("rpc", "settings", args)
            self.assertEqual(reply["args"]["code"], "400", args)
            self.assertIn(detail, reply["args"]["detail"])
        listed = yield self.settings(action="list_bridges")
        self.assertEqual(listed["args"], {"bridges": {}})

    def test_limited_users_may_list_but_not_change(self):
        session = self.server.open_session("wss", "127.0.0.1", RecordingChannel(), timers=False,
                                           identity=Identity("operator1", False, "password"))
        self.addCleanup(session.lost)
        reply = ks.call(self.server, session, "settings", {"action": "list_bridges"})
        self.assertEqual(reply["args"], {"bridges": {}})
        for args in ({"action": "add_bridge", "nickname": "n", "url": "h"}, {"action": "remove_bridge", "nickname": "n"}):
            reply = ks.call(self.server, session, "settings", args)
            self.assertEqual(reply["args"]["code"], "403")
            self.assertIn("full access", reply["args"]["detail"])
        self.assertEqual(self.running.daemon.bridge_links.store.list(), [])
