"""End-to-end encrypted bridged sessions, server side (docs/protocol.md §8.6): a
BridgedClients on a Clock-driven server with real key logins; frames are captured
instead of sent, and the client's half is sysadmd.wire.e2e's ClientHandshake."""

from __future__ import annotations

import base64
import json

from twisted.internet import defer
from twisted.trial import unittest

from sysadmd.auth import boundlogin
from sysadmd.bridgelink.clients import BASE64, E2E, BridgedClients
from sysadmd.wire import e2e
from sysadmd.wire.envelope import encode
from tests import keys_support as ks
from tests.bridge_processes import wait_until

CLIENT = "::{c1}"


class E2ESessionTests(unittest.TestCase):
    timeout = 30

    def setUp(self):
        self.server, self.clock = ks.clock_server(self, blacklist_auth_fail_limit=3)
        self.frames = []
        self.clients = BridgedClients(self.server, "t", lambda data, key: self.frames.append(data.decode()) or True,
                                      key_login=self.key_login)
        self.addCleanup(self.clients.close_all, "test over")
        ks.register(self, "root", "e2e-client")

    # --- helpers ------------------------------------------------------------------------
    def send(self, body, client_id=CLIENT):
        self.clients.deliver(f"{client_id}\n{body}")

    def bodies(self, client_id=CLIENT):
        return [f.partition("\n")[2] for f in self.frames if f.partition("\n")[0] == client_id]

    def plain(self, body):
        self.assertTrue(body.startswith("{"), body[:80])
        return json.loads(body)

    @defer.inlineCallbacks
    def next_body(self, before, client_id=CLIENT):
        """The first body sent to *client_id* after the first *before* (waits for it: hello
        accepts are signed in the key checker's threads)."""
        yield wait_until(lambda: len(self.bodies(client_id)) > before, 10, "the server's reply")
        return self.bodies(client_id)[before]

    @defer.inlineCallbacks
    def plain_hello(self, hs, request_id="h", client_id=CLIENT):
        before = len(self.bodies(client_id))
        self.send(encode({"namespace": "rpc", "name": "e2e", "id": request_id, "args": hs.hello()}), client_id)
        body = yield self.next_body(before, client_id)
        return self.plain(body)

    @defer.inlineCallbacks
    def hello(self, name="e2e-client", client_id=CLIENT):
        """Hello and accept; returns (ClientHandshake, client Session, finish args)."""
        hs = e2e.ClientHandshake(ks.private_key(name), ks.md5_of(name))
        reply = yield self.plain_hello(hs, "h1", client_id)
        self.assertEqual((reply["name"], reply["id"]), ("response", "h1"), reply)
        channel, server_id, finish = hs.accept(reply["args"])
        self.assertEqual(hs.server_connection_id, "")  # this link's bridge never said our ID
        self.assertEqual(server_id, e2e.agent_id_of(boundlogin.server_identity(self.server).public_key()))
        return hs, channel, finish

    @defer.inlineCallbacks
    def reply_to(self, channel, message, client_id=CLIENT):
        """Send *message* encrypted; fires with the next reply, opened."""
        before = len(self.bodies(client_id))
        self.send(channel.seal(encode(message).encode()), client_id)
        yield wait_until(lambda: len(self.bodies(client_id)) > before, 10, "the server's reply")
        body = self.bodies(client_id)[before]
        self.assertTrue(e2e.is_frame(body), body[:120])
        return json.loads(channel.open(body))

    @defer.inlineCallbacks
    def logged_in(self, client_id=CLIENT):
        _, channel, finish = yield self.hello(client_id=client_id)
        reply = yield self.reply_to(channel, {"namespace": "rpc", "name": "e2e", "id": "f1", "args": finish}, client_id)
        self.assertEqual(reply["name"], "response", reply)
        self.assertIsInstance(reply["args"][0], str)
        return channel

    # --- tests --------------------------------------------------------------------------
    @defer.inlineCallbacks
    def test_finish_logs_in_and_everything_after_is_encrypted(self):
        channel = yield self.logged_in()
        session = self.clients.get(CLIENT)
        self.assertEqual((session.identity.user, session.identity.method), ("root", "key"))
        query = yield self.reply_to(channel, {"namespace": "rpc", "name": "query", "id": "q1", "args": {}})
        self.assertEqual(query["id"], "q1")
        self.assertIn("rpc/settings", query["args"])
        # Every body the server sent after its accept is a "!" frame.
        self.assertTrue(all(e2e.is_frame(b) for b in self.bodies()[1:]), self.bodies())

    @defer.inlineCallbacks
    def test_hello_naming_an_unknown_key_is_refused_naming_key(self):
        hs = e2e.ClientHandshake(ks.private_key("stranger"), ks.md5_of("stranger"))
        reply = yield self.plain_hello(hs)
        self.assertEqual((reply["name"], reply["args"]["code"], reply["args"]["e2e"]), ("error", "401", 1), reply)
        self.assertIn("key:", reply["args"]["detail"])
        self.assertNotIn(E2E, self.clients.get(CLIENT).attributes)
        bad = dict(hs.hello(), eph="AAAA", key=ks.md5_of("e2e-client"))
        before = len(self.bodies())
        self.send(encode({"namespace": "rpc", "name": "e2e", "id": "h2", "args": bad}))
        reply = self.plain((yield self.next_body(before)))
        self.assertEqual(reply["args"]["code"], "400")
        self.assertIn("eph:", reply["args"]["detail"])

    @defer.inlineCallbacks
    def test_wrong_client_key_finish_is_a_failed_login(self):
        # The hello names the registered key, but the finish is signed by another key.
        hs = e2e.ClientHandshake(ks.private_key("other-key"), ks.md5_of("e2e-client"))
        channel, _, finish = hs.accept((yield self.plain_hello(hs))["args"])
        key = self.server.failure_key(self.clients.get(CLIENT))
        self.assertEqual(self.server.blacklist.blocked_for(key), 0)
        reply = yield self.reply_to(channel, {"namespace": "rpc", "name": "e2e", "id": "f", "args": finish})
        self.assertEqual((reply["name"], reply["args"]["code"]), ("error", "401"), reply)
        self.assertIn("does not match", reply["args"]["detail"])
        session = self.clients.get(CLIENT)
        self.assertIsNone(session.identity)
        self.assertNotIn(E2E, session.attributes)
        # Counted: three failures (BLACKLIST_AUTH_FAIL_LIMIT=3) block this client.
        for _ in range(2):
            hs = e2e.ClientHandshake(ks.private_key("other-key"), ks.md5_of("e2e-client"))
            channel, _, finish = hs.accept((yield self.plain_hello(hs))["args"])
            yield self.reply_to(channel, {"namespace": "rpc", "name": "e2e", "id": "f", "args": finish})
        self.assertGreater(self.server.blacklist.blocked_for(key), 0)

    @defer.inlineCallbacks
    def test_tampered_replayed_or_foreign_frames_end_the_session(self):
        for attack in ("tamper", "replay", "garbage"):
            client_id = f"::{{{attack}}}"
            channel = yield self.logged_in(client_id)
            frame = channel.seal(encode({"namespace": "rpc", "name": "query", "id": "q", "args": {}}).encode())
            if attack == "tamper":
                raw = bytearray(base64.b64decode(frame[1:]))
                raw[3] ^= 0x40
                frame = "!" + base64.b64encode(bytes(raw)).decode()
            elif attack == "replay":
                self.send(frame, client_id)
                yield wait_until(lambda: len(self.bodies(client_id)) >= 3, 10, "the query reply")
            else:
                frame = "!not base64 at all"
            session = self.clients.get(client_id)
            token = session.token
            self.send(frame, client_id)
            ended = self.plain(self.bodies(client_id)[-1])
            self.assertEqual((ended["name"], ended["args"]["code"]), ("error", "400"), ended)
            self.assertIn("end-to-end session ended", ended["args"]["detail"])
            self.assertTrue(session.closed)
            self.assertIsNone(self.clients.get(client_id))
            self.assertFalse(self.server.tokens.alive(token))
            # The client ID's next frame is a new session, which has no keys.
            self.send(channel.seal(b'{"namespace":"rpc","name":"query","id":"q2","args":{}}'), client_id)
            self.assertIn("no end-to-end keys", self.plain(self.bodies(client_id)[-1])["args"]["detail"])

    @defer.inlineCallbacks
    def test_a_plain_frame_in_an_encrypted_session_is_refused_and_drops_the_login(self):
        channel = yield self.logged_in()
        session = self.clients.get(CLIENT)
        self.send(encode({"namespace": "rpc", "name": "query", "id": "inject", "args": {}}))
        refused = self.plain(self.bodies()[-1])
        self.assertEqual((refused["name"], refused["id"], refused["args"]["code"]), ("error", "inject", "400"), refused)
        self.assertNotIn("rpc/settings", self.bodies()[-1])
        self.assertIsNone(session.identity)
        self.assertNotIn(E2E, session.attributes)
        # Base64 bodies are plain frames too.
        channel = yield self.logged_in()
        self.send(base64.b64encode(b'{"namespace":"rpc","name":"query","id":"b64","args":{}}').decode())
        self.assertIn("plain frame", self.plain(self.bodies()[-1])["args"]["detail"])
        self.assertIsNone(self.clients.get(CLIENT).identity)
        del channel

    @defer.inlineCallbacks
    def test_a_plain_frame_before_the_finish_drops_the_unfinished_handshake_only(self):
        _, channel, finish = yield self.hello()
        before = len(self.bodies())
        self.send(encode({"namespace": "rpc", "name": "identify", "id": "i", "args": {}}))
        reply = self.plain((yield self.next_body(before)))
        self.assertEqual((reply["id"], reply["name"]), ("i", "response"), reply)  # answered, in plain mode
        self.assertNotIn(E2E, self.clients.get(CLIENT).attributes)
        self.send(channel.seal(encode({"namespace": "rpc", "name": "e2e", "id": "f", "args": finish}).encode()))
        self.assertIn("no end-to-end keys", self.plain(self.bodies()[-1])["args"]["detail"])
        self.assertIsNone(self.clients.get(CLIENT).identity)

    @defer.inlineCallbacks
    def test_a_new_hello_starts_over_and_drops_the_login(self):
        yield self.logged_in()
        session = self.clients.get(CLIENT)
        token = session.token
        _, channel, finish = yield self.hello()
        self.assertIsNone(session.identity)
        self.assertFalse(self.server.tokens.alive(token))
        reply = yield self.reply_to(channel, {"namespace": "rpc", "name": "e2e", "id": "f", "args": finish})
        self.assertEqual(reply["name"], "response")

    @defer.inlineCallbacks
    def test_the_first_encrypted_frame_must_be_the_finish(self):
        _, channel, _ = yield self.hello()
        session = self.clients.get(CLIENT)
        self.send(channel.seal(b'{"namespace":"rpc","name":"query","id":"q","args":{}}'))
        ended = self.plain(self.bodies()[-1])
        self.assertIn("must be the rpc/e2e finish", ended["args"]["detail"])
        self.assertTrue(session.closed)
        # Requests sent right behind the finish wait for it and run logged in.
        _, channel, finish = yield self.hello()
        self.send(channel.seal(encode({"namespace": "rpc", "name": "e2e", "id": "f", "args": finish}).encode()))
        self.send(channel.seal(b'{"namespace":"rpc","name":"query","id":"q","args":{}}'))
        yield wait_until(lambda: len(self.bodies()) >= 5, 10, "both replies")
        first, second = (json.loads(channel.open(b)) for b in self.bodies()[-2:])
        self.assertEqual((first["id"], first["name"], second["id"], second["name"]), ("f", "response", "q", "response"))

    @defer.inlineCallbacks
    def test_a_hello_superseded_while_it_is_signed_gets_no_accept(self):
        first = e2e.ClientHandshake(ks.private_key("e2e-client"), ks.md5_of("e2e-client"))
        second = e2e.ClientHandshake(ks.private_key("e2e-client"), ks.md5_of("e2e-client"))
        self.send(encode({"namespace": "rpc", "name": "e2e", "id": "one", "args": first.hello()}))
        self.send(encode({"namespace": "rpc", "name": "e2e", "id": "two", "args": second.hello()}))
        body = yield self.next_body(0)
        reply = self.plain(body)
        self.assertEqual(reply["id"], "two", reply)
        channel, _, finish = second.accept(reply["args"])
        login = yield self.reply_to(channel, {"namespace": "rpc", "name": "e2e", "id": "f", "args": finish})
        self.assertEqual(login["name"], "response", login)
        self.assertEqual(len(self.bodies()), 2, self.bodies())  # nothing ever answered the first hello

    def test_upstream_base64_mode_is_unchanged(self):
        self.send(encode({"namespace": "rpc", "name": "auth_ssl", "id": "s1", "args": {"md5_key": ks.md5_of("e2e-client")}}))
        reply = self.plain(self.bodies()[-1])
        self.assertIn("new_ssl_key", reply["args"])
        self.assertTrue(self.clients.get(CLIENT).attributes[BASE64])
        self.send(base64.b64encode(b'{"namespace":"rpc","name":"identify","id":"i","args":{}}').decode())
        self.assertEqual(json.loads(base64.b64decode(self.bodies()[-1]))["id"], "i")

    def test_without_a_key_login_the_link_says_so(self):  # answered at once, no signing
        clients = BridgedClients(self.server, "u", lambda data, key: self.frames.append(data.decode()) or True)
        self.addCleanup(clients.close_all, "test over")
        hs = e2e.ClientHandshake(ks.private_key("e2e-client"), ks.md5_of("e2e-client"))
        clients.deliver("::x\n" + encode({"namespace": "rpc", "name": "e2e", "id": "h", "args": hs.hello()}))
        reply = json.loads(self.frames[-1].partition("\n")[2])
        self.assertEqual((reply["args"]["code"], reply["args"]["e2e"]), ("501", 1))


class ConnectionBindingTests(unittest.TestCase):
    def test_the_tag_binds_the_connection_id_and_cannot_be_moved(self):
        client = e2e.ClientHandshake(ks.private_key("e2e-client"), ks.md5_of("e2e-client"))
        _, reply = e2e.ServerHandshake(ks.private_key("e2e-server")).accept(client.hello(), "::{real}")
        self.assertEqual(reply["server_connection_id"], "::{real}")
        for change in ({"server_connection_id": "::{relay}"}, {"connection_tag": reply["sig"][:44]},
                       {"connection_tag": None}):
            again = e2e.ClientHandshake(ks.private_key("e2e-client"), ks.md5_of("e2e-client"))
            _, fresh = e2e.ServerHandshake(ks.private_key("e2e-server")).accept(again.hello(), "::{real}")
            with self.assertRaisesRegex(e2e.E2EError, "connection_tag"):
                again.accept(dict(fresh, **change))
        client.accept(reply)
        self.assertEqual(client.server_connection_id, "::{real}")
        # Without the binding (a server that does not send it): None, nothing checked.
        plain = e2e.ClientHandshake(ks.private_key("e2e-client"), ks.md5_of("e2e-client"))
        _, reply = e2e.ServerHandshake(ks.private_key("e2e-server")).accept(plain.hello())
        plain.accept(reply)
        self.assertIsNone(plain.server_connection_id)


class KnownServersE2EFlagTests(unittest.TestCase):
    def test_the_e2e_flag_is_a_fourth_field_written_once_and_kept(self):
        import os

        from sysadmd.client.knownservers import KnownServers
        from tests.support import short_tempdir

        path = os.path.join(short_tempdir(self, "ks"), "known_servers")
        known = KnownServers(path)
        known.pin("nas.lan", "a" * 64)
        known.pin("other", "b" * 64)
        self.assertFalse(known.by_name("nas.lan").e2e)
        marked = known.mark_e2e("nas.lan")
        self.assertTrue(marked.e2e)
        self.assertEqual(known.mark_e2e("nas.lan"), marked)  # once
        self.assertIsNone(known.mark_e2e("nobody"))
        with open(path) as f:
            lines = [line.split() for line in f if not line.startswith("#")]
        self.assertEqual([(line[0], line[3:]) for line in lines], [("nas.lan", ["e2e"]), ("other", [])])
        entry = known.by_name("nas.lan")
        self.assertEqual((entry.fingerprint, entry.first_seen, entry.e2e), ("a" * 64, marked.first_seen, True))
        self.assertTrue(known.by_fingerprint("a" * 64)[0].e2e)
        self.assertFalse(known.by_name("other").e2e)


class E2EOptionTests(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_e2e_options_need_a_bridge_and_exclude_each_other(self):
        from tests.support import short_tempdir
        from tests.test_client_cli import run_cli

        home = short_tempdir(self, "opt")
        for argv, words in ((("--url", "wss://127.0.0.1:9", "--no-e2e", "identify"), "need --bridge"),
                            (("--socket", "/nonexistent", "--require-e2e", "identify"), "need --bridge"),
                            (("--bridge", "127.0.0.1:9", "--key", "/nonexistent", "--no-e2e", "--require-e2e",
                              "identify"), "contradict")):
            result = yield run_cli(home, *argv)
            self.assertEqual(result.code, 2, result.err)
            self.assertIn(words, result.err)
