"""The end-to-end constructions of issue 13 item 6 (sysadmd/wire/seal.py, sysadmd/wire/e2e.py):
both ends of each, and everything a bridge in the middle could try."""

from __future__ import annotations

import base64
import hashlib
import unittest

from cryptography.hazmat.primitives.asymmetric import rsa

from sysadmd.runtime import crypto
from sysadmd.wire import e2e, seal

_KEYS = {}


def key(name: str) -> rsa.RSAPrivateKey:
    if name not in _KEYS:
        _KEYS[name] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return _KEYS[name]


def md5_of(private_key) -> str:
    return crypto.md5_checksum(crypto.public_pem(private_key.public_key()))


class SealTests(unittest.TestCase):
    def test_round_trip_and_bound_to_key_and_context(self):
        agent = key("agent")
        context = seal.fleet_context("command", "a" * 32, "b" * 64)
        text = seal.seal(agent.public_key(), b'{"marker":"UNIQUE-1"}', context)
        self.assertTrue(seal.is_sealed(text))
        self.assertNotIn("UNIQUE", text)
        self.assertEqual(seal.open_sealed(agent, text, context), b'{"marker":"UNIQUE-1"}')
        # Another key, another command id, another agent, another kind: none opens it.
        with self.assertRaisesRegex(seal.SealError, "another key"):
            seal.open_sealed(key("other"), text, context)
        for other in (seal.fleet_context("command", "c" * 32, "b" * 64), seal.fleet_context("command", "a" * 32, "d" * 64),
                      seal.fleet_context("result", "a" * 32, "b" * 64)):
            with self.assertRaisesRegex(seal.SealError, "altered"):
                seal.open_sealed(agent, text, other)
        # Two seals of the same text differ (fresh key and nonce).
        self.assertNotEqual(text, seal.seal(agent.public_key(), b'{"marker":"UNIQUE-1"}', context))

    def test_tampering_and_malformed_text_are_refused(self):
        agent = key("agent")
        context = seal.fleet_context("event", "e" * 32, "b" * 64)
        text = seal.seal(agent.public_key(), b"x" * 100, context)
        head, body = text[len(seal.PREFIX):].split(".")
        raw = bytearray(base64.b64decode(body))
        raw[-1] ^= 1
        with self.assertRaisesRegex(seal.SealError, "altered"):
            seal.open_sealed(agent, seal.PREFIX + head + "." + base64.b64encode(bytes(raw)).decode(), context)
        for bad, why in (("plain", "not sealed"), (seal.PREFIX + "abc", "'.'"), (seal.PREFIX + "@@.@@", "base64"),
                         (seal.PREFIX + head + ".AAAA", "too short"),
                         (seal.PREFIX + "A" * (seal.MAX_SEALED_CHARS), "over")):
            with self.assertRaisesRegex(seal.SealError, why):
                seal.open_sealed(agent, bad, context)


class SessionTests(unittest.TestCase):
    def handshake(self, client_key=None, server_key=None):
        client_key = client_key or key("client")
        server_key = server_key or key("server")
        client = e2e.ClientHandshake(client_key, md5_of(client_key))
        server = e2e.ServerHandshake(server_key)
        server_session, reply = server.accept(client.hello())
        client_session, server_id, finish = client.accept(reply)
        return client, server, client_session, server_session, server_id, finish

    def test_both_ends_agree_and_frames_flow_both_ways(self):
        client, server, cs, ss, server_id, finish = self.handshake()
        self.assertEqual(server_id, e2e.agent_id_of(key("server").public_key()))
        server.finish(key("client").public_key(), finish)
        for i in range(3):
            frame = cs.seal(f'{{"n":{i},"m":"MARKER-XYZ"}}'.encode())
            self.assertTrue(e2e.is_frame(frame))
            self.assertNotIn("MARKER", frame)
            self.assertEqual(ss.open(frame), f'{{"n":{i},"m":"MARKER-XYZ"}}'.encode())
            self.assertEqual(cs.open(ss.seal(b"reply")), b"reply")

    def test_replayed_reordered_altered_or_plain_frames_do_not_open(self):
        _, _, cs, ss, _, _ = self.handshake()
        first, second = cs.seal(b"1"), cs.seal(b"2")
        with self.assertRaisesRegex(e2e.E2EError, "out of order"):
            ss.open(second)
        self.assertEqual(ss.open(first), b"1")
        with self.assertRaisesRegex(e2e.E2EError, "out of order"):
            ss.open(first)  # replayed
        with self.assertRaisesRegex(e2e.E2EError, "plain frame"):
            ss.open('{"namespace":"rpc"}')
        raw = bytearray(base64.b64decode(second[1:]))
        raw[0] ^= 1
        with self.assertRaises(e2e.E2EError):
            ss.open("!" + base64.b64encode(bytes(raw)).decode())
        # A frame sealed for the other direction does not open either.
        with self.assertRaises(e2e.E2EError):
            cs.open(cs.seal(b"mine"))

    def test_a_bridge_cannot_substitute_keys(self):
        client_key, server_key, bridge_key = key("client"), key("server"), key("bridge")
        client = e2e.ClientHandshake(client_key, md5_of(client_key))
        server = e2e.ServerHandshake(server_key)
        _, reply = server.accept(client.hello())
        # The bridge swaps in its own ephemeral key: the server's signature no longer matches.
        forged = dict(reply, eph=e2e.ClientHandshake(bridge_key, md5_of(bridge_key)).eph)
        with self.assertRaisesRegex(e2e.E2EError, "server's signature"):
            client.accept(forged)
        # The bridge answers as itself, signing with its own key: the handshake completes but
        # names the bridge's id, which is not the agent the client asked for.
        client2 = e2e.ClientHandshake(client_key, md5_of(client_key))
        _, bridge_reply = e2e.ServerHandshake(bridge_key).accept(client2.hello())
        _, server_id, _ = client2.accept(bridge_reply)
        self.assertEqual(server_id, hashlib.sha256(e2e.spki_der(bridge_key.public_key())).hexdigest())
        self.assertNotEqual(server_id, e2e.agent_id_of(server_key.public_key()))
        # A finish signed by another key than the one the hello named is refused by the server.
        client3 = e2e.ClientHandshake(client_key, md5_of(client_key))
        server3 = e2e.ServerHandshake(server_key)
        _, reply3 = server3.accept(client3.hello())
        _, _, finish3 = client3.accept(reply3)
        with self.assertRaisesRegex(e2e.E2EError, "client's signature"):
            server3.finish(bridge_key.public_key(), finish3)
        server3.finish(client_key.public_key(), finish3)

    def test_malformed_handshake_messages_name_the_field(self):
        server = e2e.ServerHandshake(key("server"))
        good = e2e.ClientHandshake(key("client"), md5_of(key("client"))).hello()
        for change, field in ((dict(v=2), "v:"), (dict(key="x"), "key:"), (dict(eph="AAAA"), "eph:"),
                              (dict(nonce="@"), "nonce:"), (dict(step="finish"), "hello")):
            with self.assertRaisesRegex(e2e.E2EError, field):
                server.accept(dict(good, **change))
        client = e2e.ClientHandshake(key("client"), md5_of(key("client")))
        _, reply = e2e.ServerHandshake(key("server")).accept(client.hello())
        for change, field in ((dict(server_key="AAAA"), "server_key"), (dict(sig="A" * 3000), "sig"),
                              (dict(eph="A" * 44), "eph")):
            with self.assertRaisesRegex(e2e.E2EError, field):
                e2e.ClientHandshake(key("client"), md5_of(key("client"))).accept(dict(reply, **change))


if __name__ == "__main__":
    unittest.main()
