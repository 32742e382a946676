"""End-to-end encrypted bridged sessions with real processes (issue 13 item 6; docs/protocol.md
§8.6): a sysadm-bridge and a sysadmd as twistd children, the sysadm CLI, and raw bridge peers
that play a client (the wire by hand) or a server that is not the one pinned.

* a session works E2E (rpc/query, a dispatcher job's events) and the bridge's files and
  memory hold no marker sent in a request or in a reply, while a marker sent in base64 mode
  (--no-e2e) in the same test is found there by the same searches;
* what the bridge relays from the server after the accept is only "!" frames;
* a tampered or replayed frame ends the session; a plain frame inside it is never run;
* a finish signed by another key than the one the hello named is a failed login (blocked after
  BLACKLIST_AUTH_FAIL_LIMIT of them);
* a second server claiming the pinned name with its own key is refused; one with the real
  key that answers the hello like upstream (a downgrade) is refused once known_servers records
  E2E, and with --require-e2e; without either, the client falls back with a note.
"""

from __future__ import annotations

import base64
import json
import os
import secrets

import pytest
from twisted.internet import defer
from twisted.trial import unittest

from sysadmd.bridgelink import key as bridgekey
from sysadmd.runtime import crypto
from sysadmd.wire import bound, e2e
from tests import keys_support as ks
from tests.bridge_processes import Cluster, body_from, bridge_login, compact, reply_from
from tests.plaintext_search import marker_forms, search_files_many, search_process_memory_many


def hello_message(handshake: e2e.ClientHandshake, request_id: str = "h") -> str:
    return compact({"args": handshake.hello(), "id": request_id, "name": "e2e", "namespace": "rpc"})


class E2EClient:
    """The client's half of an E2E session, by hand, over a RawPeer."""

    def __init__(self, peer, server_id: str):
        self.peer, self.server_id = peer, server_id
        self.channel = None

    @defer.inlineCallbacks
    def handshake(self, hello_key: str, signing_key: str = ""):
        """hello naming *hello_key*, finish signed by *signing_key* (default the same);
        fires with the finish's reply, opened."""
        hs = e2e.ClientHandshake(ks.private_key(signing_key or hello_key), ks.md5_of(hello_key))
        mark = len(self.peer.frames)
        self.peer.send(f"{self.server_id}\n" + hello_message(hs))
        accept, _ = yield self.peer.wait_for(reply_from(self.server_id, "h"), "the accept", start=mark)
        assert accept["name"] == "response", accept
        self.channel, _, finish = hs.accept(accept["args"])
        assert hs.server_connection_id == self.server_id, (hs.server_connection_id, self.server_id)
        reply = yield self.call("rpc", "e2e", finish, "f")
        return reply

    @defer.inlineCallbacks
    def call(self, namespace, name, args, request_id):
        mark = len(self.peer.frames)
        self.send_sealed({"args": args, "id": request_id, "name": name, "namespace": namespace})
        body, _ = yield self.peer.wait_for(body_from(self.server_id), f"the reply to {namespace}/{name}", start=mark)
        return self.open(body)

    def send_sealed(self, message):
        frame = self.channel.seal(compact(message).encode())
        self.peer.send(f"{self.server_id}\n{frame}")
        return frame

    def open(self, body):
        if not e2e.is_frame(body):
            return {"plain": json.loads(body)}
        return json.loads(self.channel.open(body))

    @defer.inlineCallbacks
    def next_plain(self, mark):
        body, _ = yield self.peer.wait_for(body_from(self.server_id), "a plain reply", start=mark)
        assert body.startswith("{"), body[:100]
        return json.loads(body)


class FakeServer:
    """A server peer on the bridge: ``e2e`` answers hellos with its own key (an impostor);
    ``downgrade`` answers them like upstream and proves *key* in the bound stage 1 (a peer
    holding the real server's key, or a bridge forging the hello's answer)."""

    def __init__(self, peer, claimed, mode, key):
        self.peer, self.claimed, self.mode, self.key = peer, claimed, mode, key
        self.own_id = None
        self.received = []  # every payload after identify
        peer.on_frame = self.frame

    def frame(self, text):
        source, newline, body = text.partition("\n")
        if not newline or not source.startswith("::"):
            return
        if e2e.is_frame(body):
            self.received.append(body)
            return
        message = json.loads(body if body.startswith("{") else base64.b64decode(body))
        args = message.get("args")
        if message.get("name") != "identify":
            self.received.append(message)
        if message.get("name") == "identify":
            self.reply(source, message, {"hostname": self.claimed, "type": "server"})
        elif message.get("name") == "e2e" and self.mode == "e2e":
            _, accept = e2e.ServerHandshake(self.key).accept(args)
            self.reply(source, message, accept)
        elif message.get("name") == "e2e":
            self.peer.send(f"{source}\n" + compact({"args": {"code": "401", "message": "Unauthorized"},
                                                    "id": message["id"], "name": "error", "namespace": "error"}))
        elif message.get("name") == "auth_ssl" and isinstance(args, dict) and "encrypted_string" in args:
            text = compact({"args": ["token-" + "x" * 20, 900], "id": message["id"], "name": "response", "namespace": "rpc"})
            self.peer.send(f"{source}\n" + base64.b64encode(text.encode()).decode())
        elif message.get("name") == "auth_ssl":
            challenge = "T" * 40
            reply = {"new_ssl_key": base64.b64encode(crypto.public_pem(self.key).encode()).decode(),
                     "test_string": base64.b64encode(challenge.encode()).decode()}
            reply.update(bound.server_proof(self.key, args["client_nonce"], challenge, args["md5_key"], self.own_id))
            self.reply(source, message, reply)

    def reply(self, dest, message, args):
        self.peer.send(f"{dest}\n" + compact({"args": args, "id": message["id"], "name": "response",
                                              "namespace": message["namespace"]}))

    def finishes(self):
        """Encrypted frames and bound logins it was sent (what a client signs for it)."""
        return [m for m in self.received if isinstance(m, str) or "encrypted_string" in (m.get("args") or {})]


class E2ESessionProcessTests(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def start(self, fail_limit=None):
        cluster = Cluster(self)
        if fail_limit is not None:
            cluster.server_config = os.path.join(cluster.base, "sysadmd.conf")
            with open(cluster.server_config, "w") as f:
                f.write(f"BLACKLIST_AUTH_FAIL_LIMIT={fail_limit}\n")
        yield cluster.start("laptop")
        return cluster

    @defer.inlineCallbacks
    def test_raw_session_frames_tampering_replay_plain_injection_and_wrong_key(self):
        cluster = yield self.start(fail_limit=2)
        peer = yield cluster.peer()
        [server_id] = yield bridge_login(peer, "laptop", ["laptop"])
        client = E2EClient(peer, server_id)
        mark = len(peer.frames)
        login = yield client.handshake("laptop")
        self.assertEqual(login["name"], "response", login)
        token, ttl = login["args"]
        self.assertIsInstance(token, str)
        query = yield client.call("rpc", "query", {}, "q")
        self.assertIn("rpc/dispatcher", query["args"])
        # Everything the bridge passed on from the server after its accept: "!" frames only.
        bodies = [b for b in map(body_from(server_id), peer.frames[mark:]) if b is not None]
        self.assertGreaterEqual(len(bodies), 3)
        self.assertTrue(bodies[0].startswith("{") and all(e2e.is_frame(b) for b in bodies[1:]), bodies)
        # The token is the session's alone: not usable as a plain request in the session.
        mark = len(peer.frames)
        peer.send(f"{server_id}\n" + compact({"args": {}, "id": "inject", "name": "query", "namespace": "rpc"}))
        refused = yield client.next_plain(mark)
        self.assertEqual((refused["name"], refused["args"]["code"], refused["args"]["e2e"]), ("error", "400", 1))
        self.assertIn("plain frame", refused["args"]["detail"])

        # Tampered: the session ends; its keys are gone on the server.
        yield client.handshake("laptop")
        frame = client.channel.seal(compact({"args": {}, "id": "t", "name": "query", "namespace": "rpc"}).encode())
        raw = bytearray(base64.b64decode(frame[1:]))
        raw[0] ^= 1
        mark = len(peer.frames)
        peer.send(f"{server_id}\n!" + base64.b64encode(bytes(raw)).decode())
        ended = yield client.next_plain(mark)
        self.assertIn("end-to-end session ended", ended["args"]["detail"])
        mark = len(peer.frames)
        peer.send(f"{server_id}\n{frame}")  # the genuine frame, too late
        gone = yield client.next_plain(mark)
        self.assertIn("no end-to-end keys", gone["args"]["detail"])

        # Replayed: the first copy runs, the second ends the session.
        yield client.handshake("laptop")
        mark = len(peer.frames)
        frame = client.send_sealed({"args": {}, "id": "r", "name": "query", "namespace": "rpc"})
        body, _ = yield peer.wait_for(body_from(server_id), "the first copy's reply", start=mark)
        self.assertEqual(client.open(body)["id"], "r")
        mark = len(peer.frames)
        peer.send(f"{server_id}\n{frame}")
        ended = yield client.next_plain(mark)
        self.assertIn("out of order", ended["args"]["detail"])

        # A finish signed by another key than the hello named: a failed login, twice → blocked.
        for _ in range(2):
            refused = yield client.handshake("laptop", signing_key="intruder")
            self.assertEqual((refused["name"], refused["args"]["code"]), ("error", "401"), refused)
            self.assertIn("does not match", refused["args"]["detail"])
        mark = len(peer.frames)
        peer.send(f"{server_id}\n" + hello_message(e2e.ClientHandshake(ks.private_key("laptop"), ks.md5_of("laptop"))))
        blocked = yield client.next_plain(mark)
        self.assertEqual(blocked["args"]["code"], "401", blocked)
        self.assertIn("blocked", blocked["args"]["detail"])

    @pytest.mark.slow
    @defer.inlineCallbacks
    def test_cli_session_is_encrypted_and_the_bridge_never_holds_its_plaintext(self):
        cluster = yield self.start()
        request_marker = f"E2EREQ{secrets.token_hex(10)}"
        reply_a, reply_b = f"E2EREPA{secrets.token_hex(6)}", f"B{secrets.token_hex(6)}"
        control = f"E2ECTL{secrets.token_hex(10)}"

        query = yield cluster.bridged("laptop", "call", "rpc", "query")
        self.assertEqual(query.exit_code, 0, query.output)
        self.assertIn("rpc/dispatcher", json.loads(query.out))
        self.assertIn("Pinned server", query.err)
        self.assertNotIn("base64", query.err)
        with open(os.path.join(cluster.home, "cfg", "sysadm", "known_servers")) as f:
            [entry] = [line.split() for line in f if not line.startswith("#")]
        self.assertEqual(entry[3:], ["e2e"], entry)

        # A dispatcher job: the command holds the request marker; its output (the reply
        # marker, made by the shell, never sent as such) comes back in the job's events.
        job = yield cluster.bridged("laptop", "run", f'sh -c "printf %s%s {reply_a} {reply_b}; echo" {request_marker}')
        self.assertEqual(job.exit_code, 0, job.output)
        self.assertEqual(job.out, f"{reply_a}{reply_b}\n")

        # Control: the same through base64 mode.
        plain = yield cluster.bridged("laptop", "--no-e2e", "run", f"echo {control}")
        self.assertEqual((plain.exit_code, plain.out), (0, f"{control}\n"), plain.output)

        hidden = marker_forms(request_marker) + marker_forms(reply_a + reply_b)
        needles = hidden + marker_forms(control)
        in_files = search_files_many(cluster.bridge_state, needles)
        in_memory = search_process_memory_many(cluster.bridge.transport.pid, needles)
        self.assertTrue(any(in_memory[form] for form in marker_forms(control)),
                        "the control marker (base64 mode) is not in the bridge's memory: the search proves nothing")
        for form in hidden:
            self.assertEqual(in_files[form], [], f"{form!r} in the bridge's files")
            self.assertEqual(in_memory[form], [], f"{form!r} in the bridge's memory")

    @defer.inlineCallbacks
    def fake_server(self, cluster, claimed, mode, key_name, key=None):
        peer = yield cluster.peer()
        yield bridge_login(peer, key_name, [], hostname=claimed, role="server")
        peer.key_list = None
        peer.send(compact({"args": {"md5_keys": [ks.md5_of("laptop")]}, "id": "bridge_request_list_keys",
                           "name": "response", "namespace": "rpc"}))
        peer.send(compact({"args": "", "id": "me", "name": "identify", "namespace": "rpc"}))
        reply, _ = yield peer.wait_for(lambda f: json.loads(f) if f.startswith("{") and '"me"' in f else None, "own id")
        fake = FakeServer(peer, claimed, mode, key or ks.private_key(key_name))
        fake.own_id = reply["args"]["connection_id"]
        return fake

    @defer.inlineCallbacks
    def test_forged_server_key_and_downgrade_are_refused(self):
        cluster = yield self.start()
        yield cluster.bridge_admin("import_ssl_file", "impostor", cluster.public_file("impostor"), "--role", "server")
        first = yield cluster.bridged("laptop", "--json", "peers")
        [real] = json.loads(first.out)
        self.assertIs(real["e2e"], True, real)
        name = real["hostname"]
        pinned = yield cluster.bridged("laptop", "--server", name, "identify")
        self.assertEqual(pinned.exit_code, 0, pinned.output)

        # Another server claims the pinned name with its own key: refused, nothing signed for it.
        impostor = yield self.fake_server(cluster, name, "e2e", "impostor")
        refused = yield cluster.bridged("laptop", "--server", impostor.own_id, "call", "rpc", "query")
        self.assertEqual(refused.exit_code, 3, refused.output)
        self.assertIn(f"claims to be {name}, but its key is not the one pinned", refused.err)
        self.assertEqual(impostor.finishes(), [])

        # A peer with the real server's key answers the hello like upstream: a downgrade.
        real_key, _ = bridgekey.load_or_create(cluster.server_state)
        ks._KEYS["office-copy"] = real_key  # bridge_login signs with tests.keys_support's keys by name
        downgrader = yield self.fake_server(cluster, name, "downgrade", "office-copy", key=real_key)
        refused = yield cluster.bridged("laptop", "--server", downgrader.own_id, "call", "rpc", "query")
        self.assertEqual(refused.exit_code, 5, refused.output)
        self.assertIn("refusing the downgrade", refused.err)
        self.assertEqual(downgrader.finishes(), [])
        # --require-e2e refuses it even where nothing was pinned; without either the client falls back.
        fresh = os.path.join(cluster.base, "fresh_known_servers")
        strict = yield cluster.bridged("laptop", "--known-servers", fresh, "--require-e2e", "--server",
                                       downgrader.own_id, "call", "rpc", "identify")
        self.assertEqual(strict.exit_code, 5, strict.output)
        self.assertIn("--require-e2e", strict.err)
        self.assertEqual(downgrader.finishes(), [])
        loose = yield cluster.bridged("laptop", "--known-servers", fresh, "--server", downgrader.own_id,
                                      "call", "rpc", "identify")
        self.assertIn("does not do end-to-end sessions", loose.err)
        self.assertEqual(len(downgrader.finishes()), 1)  # the bound base64 login
        # The real server still works E2E.
        ok = yield cluster.bridged("laptop", "--server", real["id"], "call", "rpc", "query")
        self.assertEqual(ok.exit_code, 0, ok.output)
