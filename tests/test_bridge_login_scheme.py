"""Issue 14 item 6: the bridge's second answer to its auth_ssl challenge, a digest signature
``{"encrypted_string": S, "scheme": "pkcs1-sha256"}`` (S: RSASSA-PKCS1-v1_5 SHA-256 over
``"sysadm-bridge-login/1\\n" + test_string``), which a browser's WebCrypto can make while
upstream's raw no-digest signature it cannot (docs/protocol.md §8.1).  Same challenge rules,
same role binding, same blacklist strikes as upstream's answer."""

import base64
import json

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from twisted.internet import defer
from twisted.trial import unittest

from bridge.api import LIST_KEYS_REQUEST
from bridge.relay import CLIENT, SERVER
from sysadmd.runtime import crypto
from tests.test_bridge_relay import make_peer, private_key, set_up_api
from tests.test_bridge_wss import connect_peer, register, start_bridge


def scheme_signature(key, challenge, prefix="sysadm-bridge-login/1\n"):
    signature = key.sign((prefix + challenge).encode("utf-8"), padding.PKCS1v15(), hashes.SHA256())
    return base64.b64encode(signature).decode("ascii")


class SchemeApiTests(unittest.TestCase):
    def setUp(self):
        set_up_api(self)
        self.key = private_key("a")
        self.keys.import_key("browser", crypto.public_pem(self.key), role="client")

    def peer(self, role=CLIENT):
        p = make_peer(self.d)
        self.api.handle(p, json.dumps({"args": {"hostname": "h", "type": role}, "id": "sysadm_bridge_request_ident",
                                       "name": "response", "namespace": "rpc"}))
        return p

    def last(self, peer):
        return json.loads(peer.link.sent[-1])

    def stage1(self, peer):
        self.api.handle(peer, json.dumps({"args": "", "id": "a1", "name": "auth_ssl", "namespace": "rpc"}))
        return self.last(peer)["args"]["test_string"]

    def stage2(self, peer, args):
        self.api.handle(peer, json.dumps({"args": args, "id": "a2", "name": "auth_ssl", "namespace": "rpc"}))

    def test_digest_signature_logs_in_with_the_key_and_role(self):
        p = self.peer()
        self.stage2(p, {"encrypted_string": scheme_signature(self.key, self.stage1(p)), "scheme": "pkcs1-sha256"})
        reply = json.loads(p.link.sent[-2])
        self.assertEqual((reply["name"], reply["id"], reply["args"][1]), ("response", "a2", 0))
        self.assertEqual(p.link.sent[-1], LIST_KEYS_REQUEST)
        self.assertEqual((p.authenticated, p.key_nickname, p.role), (True, "browser", CLIENT))

    def test_refusals_are_strikes(self):
        unauthorized = {"args": "unauthorized", "id": "a2", "name": "error", "namespace": "rpc"}
        self.blacklist.limit = 100
        p = self.peer()
        # Without the prefix (a signature of the bare challenge) it is not a login.
        self.stage2(p, {"encrypted_string": scheme_signature(self.key, self.stage1(p), prefix=""), "scheme": "pkcs1-sha256"})
        self.assertEqual(self.last(p), unauthorized)
        # The digest signature sent as upstream's raw one (no scheme), and the raw one with the scheme.
        self.stage2(p, {"encrypted_string": scheme_signature(self.key, self.stage1(p))})
        self.assertEqual(self.last(p), unauthorized)
        self.stage2(p, {"encrypted_string": crypto.sign_challenge(self.key, self.stage1(p)), "scheme": "pkcs1-sha256"})
        self.assertEqual(self.last(p), unauthorized)
        # Another key, an unknown scheme, garbage, a reused challenge, an expired one.
        self.stage2(p, {"encrypted_string": scheme_signature(private_key("b"), self.stage1(p)), "scheme": "pkcs1-sha256"})
        self.assertEqual(self.last(p), unauthorized)
        challenge = self.stage1(p)
        self.stage2(p, {"encrypted_string": scheme_signature(self.key, challenge), "scheme": "pss-sha256"})
        self.assertEqual(self.last(p), unauthorized)
        self.stage2(p, {"encrypted_string": scheme_signature(self.key, challenge), "scheme": "pkcs1-sha256"})
        self.assertEqual(self.last(p), unauthorized)  # that challenge was used by the failed try
        self.stage2(p, {"encrypted_string": "A" * 100000, "scheme": "pkcs1-sha256"})
        self.assertEqual(self.last(p), unauthorized)
        challenge = self.stage1(p)
        self.clock.advance(31)
        self.stage2(p, {"encrypted_string": scheme_signature(self.key, challenge), "scheme": "pkcs1-sha256"})
        self.assertEqual(self.last(p), unauthorized)
        self.assertFalse(p.authenticated)

    def test_two_failures_block_the_address(self):
        p = self.peer()
        self.stage2(p, {"encrypted_string": scheme_signature(private_key("b"), self.stage1(p)), "scheme": "pkcs1-sha256"})
        self.assertEqual(self.blacklist.blocked_for("192.0.2.1"), 0)
        self.stage2(p, {"encrypted_string": scheme_signature(self.key, self.stage1(p)), "scheme": 7})
        self.assertGreater(self.blacklist.blocked_for("192.0.2.1"), 0)
        self.assertEqual(p.link.closed[0], 1008)

    def test_role_binding_applies(self):
        self.keys.import_key("srv", crypto.public_pem(private_key("c")), role="server")
        p = self.peer(CLIENT)
        self.stage2(p, {"encrypted_string": scheme_signature(private_key("c"), self.stage1(p)), "scheme": "pkcs1-sha256"})
        self.assertEqual(self.last(p)["args"], "unauthorized")
        q = self.peer(SERVER)
        self.stage2(q, {"encrypted_string": scheme_signature(private_key("c"), self.stage1(q)), "scheme": "pkcs1-sha256"})
        self.assertEqual((q.authenticated, q.role), (True, SERVER))


class SchemeOverTls(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_login_over_a_real_bridge_then_pairing(self):
        daemon = yield start_bridge(self)
        register(daemon, "browser", private_key("a"), "client")
        peer = yield connect_peer(self, daemon, role="client")
        start = len(peer.frames)
        peer.send_json({"args": "", "id": "s1", "name": "auth_ssl", "namespace": "rpc"})
        challenge = (yield peer.wait_reply("s1", start))["args"]["test_string"]
        start = len(peer.frames)
        peer.send_json({"args": {"encrypted_string": scheme_signature(private_key("a"), challenge),
                                 "scheme": "pkcs1-sha256"}, "id": "s2", "name": "auth_ssl", "namespace": "rpc"})
        reply = yield peer.wait_reply("s2", start)
        self.assertEqual(reply["name"], "response")
        yield peer.wait_for(lambda text: text == LIST_KEYS_REQUEST, start)
        start = len(peer.frames)
        peer.send_json({"args": "", "id": "i1", "name": "identify", "namespace": "rpc"})
        reply = yield peer.wait_reply("i1", start)
        self.assertTrue(reply["args"]["connection_id"].startswith("::{"))


class BrowsersReachTheBridge(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_a_client_offering_alpn_gets_http_1_1(self):
        """Browsers offer ALPN; the bridge used to select nothing, and OpenSSL then ended
        every such handshake with an internal-error alert (net::ERR_SSL_PROTOCOL_ERROR)."""
        import socket
        import ssl

        from twisted.internet import threads

        daemon = yield start_bridge(self)
        port = daemon.listener.port.getHost().port

        def handshake(protocols):
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            context.set_alpn_protocols(protocols)
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                with context.wrap_socket(raw) as tls:
                    return tls.selected_alpn_protocol()

        self.assertEqual((yield threads.deferToThread(handshake, ["h2", "http/1.1"])), "http/1.1")
        # A client without ALPN (our CLI, Qt peers) still connects, with no protocol chosen.
        self.assertIsNone((yield threads.deferToThread(handshake, [])))
