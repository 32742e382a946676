"""The relay's own cost: work done once per relayed request, on both sides of the bridge.

Server side: a bridged request is parsed once (the parsed envelope goes into the request
pipeline). Bridge side: see the frame-level tests further down.
"""

import base64
import json

from twisted.trial import unittest

from sysadmd.bridgelink.clients import BASE64, BridgedClients
from sysadmd.wire import envelope
from sysadmd.wire.envelope import encode
from tests import keys_support as ks


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
