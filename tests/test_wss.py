"""The TLS WebSocket transport end to end on loopback, with the upstream reply shapes."""

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from tests.support import FakePasswords, open_client, start_daemon


class WebSocketTests(unittest.TestCase):
    timeout = 20

    @defer.inlineCallbacks
    def setUp(self):
        self.passwords = FakePasswords({"root": "pw"})
        self.running = yield start_daemon(self, passwords=self.passwords)

    @defer.inlineCallbacks
    def test_identify_without_auth(self):
        client = yield open_client(self, self.running)
        reply = yield client.call("rpc", "identify", "", request_id="i1")
        self.assertEqual(reply["name"], "response")
        self.assertEqual(reply["id"], "i1")
        self.assertEqual(reply["namespace"], "rpc")
        self.assertEqual(reply["args"]["type"], "server")
        self.assertIsInstance(reply["args"]["hostname"], str)

    @defer.inlineCallbacks
    def test_query_needs_auth_then_works(self):
        client = yield open_client(self, self.running)
        reply = yield client.call("rpc", "query", {}, request_id="q1")
        self.assertEqual(reply["name"], "error")
        self.assertEqual(reply["namespace"], "error")
        self.assertEqual(reply["args"]["code"], "401")
        self.assertEqual(reply["args"]["message"], "Unauthorized")
        auth = yield client.call("rpc", "auth", {"username": "root", "password": "pw"}, request_id="a1")
        token, ttl = auth["args"]
        self.assertGreaterEqual(len(token), 20)
        self.assertEqual(ttl, 900)
        reply = yield client.call("rpc", "query", {}, request_id="q2")
        self.assertEqual(reply["name"], "response")
        self.assertIsInstance(reply["args"], dict)

    @defer.inlineCallbacks
    def test_raw_text_replies_are_compact_sorted(self):
        client = yield open_client(self, self.running)
        got = defer.Deferred()
        client.unsolicited_listeners.append(got.callback)
        client.send_text('{"namespace":"rpc","name":"identify","id":7}')
        # A numeric id is not a string: the reply has id "" and echoes the name; it is not
        # matched to a pending call, so it arrives as unsolicited text.
        text = yield got
        self.assertTrue(text.startswith('{"args":{"hostname":'))
        self.assertTrue(text.endswith(',"id":"","name":"identify","namespace":"rpc"}'))
        self.assertNotIn(" ", text.split('"hostname":')[0])

    @defer.inlineCallbacks
    def test_bad_json_and_utf8_get_400_and_connection_stays(self):
        client = yield open_client(self, self.running)
        texts = []
        client.unsolicited_listeners.append(texts.append)
        client.send_text("{not json")
        client.sendMessage(b"\xff\xfe{", isBinary=True)
        client.send_text("hello")
        yield task.deferLater(reactor, 0.3, lambda: None)
        self.assertEqual(len(texts), 3, texts)
        for text in texts:
            self.assertIn('"code":"400"', text)
            self.assertIn('"detail":', text)
        reply = yield client.call("rpc", "identify", "")
        self.assertEqual(reply["name"], "response")

    @defer.inlineCallbacks
    def test_auth_then_request_back_to_back(self):
        self.passwords.delay = 0.2
        client = yield open_client(self, self.running)
        d_auth = client.call("rpc", "auth", {"username": "root", "password": "pw"})
        d_query = client.call("rpc", "query", {})
        auth, query = yield defer.gatherResults([d_auth, d_query])
        self.assertEqual(auth["name"], "response")
        self.assertEqual(query["name"], "response")

    @defer.inlineCallbacks
    def test_unknown_api_is_404_after_auth(self):
        client = yield open_client(self, self.running)
        yield client.call("rpc", "auth", {"username": "root", "password": "pw"})
        reply = yield client.call("sysadm", "nosuchclass", {"action": "x"}, request_id="n1")
        self.assertEqual(reply["args"]["code"], "404")
        self.assertEqual(reply["id"], "n1")
