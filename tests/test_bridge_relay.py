"""The bridge core without sockets: pairing, announcements, routing, the API, backpressure."""

import json
import os
import shutil
import tempfile

from twisted.internet import task
from twisted.trial import unittest

from bridge.api import IDENT_ID, IDENTIFY_REQUEST, LIST_KEYS_ID, LIST_KEYS_REQUEST, BridgeApi
from bridge.flow import PeerFlow
from bridge.keys import KeyStore, KeyStoreError
from bridge.relay import CLIENT, SERVER, Peer, PeerDirectory, new_peer_id
from sysadmd.runtime import crypto
from sysadmd.runtime.blacklist import Blacklist
from sysadmd.runtime.db import open_database

PRIVATE = {}


def private_key(name):
    if name not in PRIVATE:
        PRIVATE[name] = crypto.generate_private_key(2048)
    return PRIVATE[name]


def temp_database(testcase):
    """A fresh SQLite file in /tmp, removed at cleanup."""
    path = tempfile.mkdtemp(prefix="brdb", dir="/tmp")
    testcase.addCleanup(shutil.rmtree, path, True)
    db = open_database(os.path.join(path, "bridge.sqlite"))
    testcase.addCleanup(db.close)
    return db


class FakeLink:
    def __init__(self):
        self.sent = []
        self.closed = None

    def send_text(self, text):
        self.sent.append(text)

    def close(self, code, reason):
        self.closed = (code, reason)

    def announcements(self):
        out = []
        for text in self.sent:
            obj = json.loads(text)
            if obj.get("name") == "bridge" and obj.get("namespace") == "events":
                out.append(obj["args"]["available_connections"])
        return out


def make_peer(directory, role=None, authenticated=False, md5s=None, name=None, proven=None):
    """A peer; an authenticated client has proved the keys of *md5s* unless *proven* says otherwise."""
    peer = Peer(id=new_peer_id(), link=FakeLink(), address="192.0.2.1", role=role)
    directory.add(peer)
    if authenticated:
        own = "md5-of-" + peer.id
        if proven is None:
            proven = [own] + list(md5s or [])
        directory.authenticate(peer, name or peer.id, own, role, proven)
    if md5s is not None:
        directory.set_keys(peer, md5s)
    return peer


class PairingTests(unittest.TestCase):
    def setUp(self):
        self.d = PeerDirectory()

    def test_ids_have_upstream_form(self):
        pid = new_peer_id()
        self.assertTrue(pid.startswith("::{") and pid.endswith("}"))
        self.assertEqual(len(pid), 2 + 38)
        self.assertNotEqual(pid, new_peer_id())

    def test_server_and_client_with_shared_checksum_pair(self):
        s = make_peer(self.d, SERVER, True, ["m1", "m2"])
        c = make_peer(self.d, CLIENT, True, ["m2"])
        self.assertEqual(s.link.announcements(), [[], [c.id]])
        self.assertEqual(c.link.announcements(), [[s.id]])
        text = c.link.sent[-1]
        self.assertEqual(text, '{"args":{"available_connections":["%s"]},"id":"","name":"bridge","namespace":"events"}' % s.id)

    def test_same_role_or_disjoint_lists_do_not_pair(self):
        s1 = make_peer(self.d, SERVER, True, ["m1"])
        s2 = make_peer(self.d, SERVER, True, ["m1"])
        c = make_peer(self.d, CLIENT, True, ["m9"])
        for peer in (s1, s2, c):
            self.assertEqual(peer.partners, set())
            self.assertEqual(peer.link.announcements(), [[]])

    def test_unauthenticated_peers_never_count(self):
        s = make_peer(self.d, SERVER, True, ["m1"])
        ghost = make_peer(self.d, CLIENT)
        with self.assertRaises(ValueError):
            self.d.set_keys(ghost, ["m1"])
        self.assertEqual(s.partners, set())
        self.assertEqual(ghost.link.sent, [])

    def test_full_sorted_list_to_every_affected_peer(self):
        s = make_peer(self.d, SERVER, True, ["k"])
        clients = [make_peer(self.d, CLIENT, True, ["k"]) for _ in range(3)]
        self.assertEqual(s.link.announcements()[-1], sorted(c.id for c in clients))
        self.assertEqual(len(s.link.announcements()), 4)  # [], then one per new client

    def test_disconnect_announces_to_former_partners(self):
        s = make_peer(self.d, SERVER, True, ["k"])
        c1 = make_peer(self.d, CLIENT, True, ["k"])
        c2 = make_peer(self.d, CLIENT, True, ["k"])
        self.d.remove(s)
        self.assertEqual(c1.link.announcements()[-1], [])
        self.assertEqual(c2.link.announcements()[-1], [])
        self.assertNotIn(s.id, self.d.peers)
        self.d.remove(c1)
        self.assertEqual(len(c2.link.announcements()), 2)  # nothing changed for c2

    def test_key_list_change_pairs_and_unpairs(self):
        s = make_peer(self.d, SERVER, True, ["a"])
        c = make_peer(self.d, CLIENT, True, ["b"])
        self.d.set_keys(s, ["a", "b"])
        self.assertEqual(c.link.announcements()[-1], [s.id])
        count = len(c.link.sent)
        self.d.set_keys(s, ["b", "a"])  # same set: no news
        self.assertEqual(len(c.link.sent), count)
        self.d.set_keys(s, ["a"])
        self.assertEqual(c.link.announcements()[-1], [])
        self.assertEqual(s.link.announcements()[-1], [])

    def test_role_is_locked_after_authentication(self):
        p = make_peer(self.d, None)
        self.assertTrue(self.d.set_role(p, CLIENT))
        self.assertTrue(self.d.set_role(p, SERVER))
        self.d.authenticate(p, "nick", "md5", SERVER)
        self.assertFalse(self.d.set_role(p, CLIENT))
        self.assertEqual(p.role, SERVER)

    def test_with_key_finds_live_authenticated_peers(self):
        a = make_peer(self.d, SERVER, True, ["k"], name="srv")
        make_peer(self.d, CLIENT, True, ["k"], name="cli")
        self.assertEqual(self.d.with_key("srv"), [a])


class RoutingTests(unittest.TestCase):
    def setUp(self):
        self.d = PeerDirectory()
        self.s = make_peer(self.d, SERVER, True, ["k"])
        self.c = make_peer(self.d, CLIENT, True, ["k"])

    def test_frame_between_partners_swaps_the_id(self):
        payload = "\n{\"x\": \"é\\n\"}\nline2\n"
        dest, out = self.d.route(self.c, self.s.id + payload)
        self.assertIs(dest, self.s)
        self.assertEqual(out, self.c.id + payload)
        dest, out = self.d.route(self.s, self.c.id + "\nreply")
        self.assertIs(dest, self.c)
        self.assertEqual(out, self.s.id + "\nreply")

    def test_unpaired_unknown_and_malformed_frames_drop_and_reannounce(self):
        other = make_peer(self.d, CLIENT, True, ["zzz"])
        before = len(self.c.link.announcements())
        self.assertIsNone(self.d.route(self.c, other.id + "\nhi"))  # not a partner (same role)
        self.assertIsNone(self.d.route(self.c, "::{nope}\nhi"))  # unknown
        self.assertIsNone(self.d.route(self.c, self.s.id))  # no newline
        self.assertIsNone(self.d.route(self.c, "\nhi"))  # empty destination
        ann = self.c.link.announcements()
        self.assertEqual(len(ann), before + 4)
        self.assertEqual(ann[-1], [self.s.id])
        self.assertEqual(other.link.announcements(), [[]])

    def test_no_relay_after_partner_left(self):
        self.d.remove(self.s)
        self.assertIsNone(self.d.route(self.c, self.s.id + "\nhi"))
        self.assertEqual(self.c.link.announcements()[-1], [])


def set_up_api(testcase, **api_options):
    """A BridgeApi on a Clock (at t=1000) with a real key store and blacklist in a temp
    SQLite file, as the test case's ``clock``, ``keys``, ``blacklist``, ``d`` and ``api``."""
    testcase.clock = task.Clock()
    testcase.clock.advance(1000)
    db = temp_database(testcase)
    testcase.keys = KeyStore(db)
    testcase.blacklist = Blacklist(db, testcase.clock, limit=2, reset_minutes=60, block_minutes=60,
                                   exempt_loopback=True)
    testcase.d = PeerDirectory()
    testcase.api = BridgeApi(testcase.d, testcase.keys, testcase.blacklist, testcase.clock, hostname="relayhost",
                             challenge_ttl=30, **api_options)


class ApiTests(unittest.TestCase):
    def setUp(self):
        self.authed = []
        set_up_api(self, on_authenticated=self.authed.append)

    def peer(self, role=None):
        p = make_peer(self.d)
        if role:
            self.api.handle(p, json.dumps({"args": {"hostname": "h", "type": role}, "id": IDENT_ID, "name": "response", "namespace": "rpc"}))
        return p

    def last(self, peer):
        return json.loads(peer.link.sent[-1])

    def stage1(self, peer, rid="a1"):
        self.api.handle(peer, json.dumps({"args": "", "id": rid, "name": "auth_ssl", "namespace": "rpc"}))
        return self.last(peer)["args"]["test_string"]

    def stage2(self, peer, signature, rid="a1"):
        self.api.handle(peer, json.dumps({"args": {"encrypted_string": signature}, "id": rid, "name": "auth_ssl", "namespace": "rpc"}))

    def test_greeting_and_identify(self):
        p = self.peer()
        self.api.greet(p)
        self.assertEqual(p.link.sent[-1], '{"args":"","id":"sysadm_bridge_request_ident","name":"identify","namespace":"rpc"}')
        self.assertEqual(p.link.sent[-1], IDENTIFY_REQUEST)
        self.api.handle(p, '{"args":"","id":"i9","name":"identify","namespace":"rpc"}')
        self.assertEqual(p.link.sent[-1], '{"args":{"hostname":"relayhost","type":"bridge"},"id":"i9","name":"response","namespace":"rpc"}')

    def test_identify_reply_sets_role_only_for_our_id(self):
        p = self.peer()
        self.api.handle(p, '{"args":{"type":"server"},"id":"other","name":"response","namespace":"rpc"}')
        self.assertIsNone(p.role)
        self.api.handle(p, '{"args":{"type":"server"},"id":"%s","name":"response","namespace":"rpc"}' % IDENT_ID)
        self.assertEqual(p.role, SERVER)
        self.api.handle(p, '{"args":{"type":"gui"},"id":"%s","name":"response","namespace":"rpc"}' % IDENT_ID)
        self.assertEqual(p.role, CLIENT)

    def test_auth_success_then_key_request(self):
        priv = private_key("a")
        self.keys.import_key("laptop", crypto.public_pem(priv))
        p = self.peer(CLIENT)
        challenge = self.stage1(p)
        self.assertEqual(len(challenge), 40)
        self.assertTrue(challenge.isalnum())
        self.stage2(p, crypto.sign_challenge(priv, challenge))
        reply = json.loads(p.link.sent[-2])
        self.assertEqual(reply["name"], "response")
        self.assertEqual(reply["id"], "a1")
        token, ttl = reply["args"]
        self.assertEqual((len(token), ttl), (40, 0))
        self.assertEqual(p.link.sent[-1], LIST_KEYS_REQUEST)
        self.assertTrue(p.authenticated)
        self.assertEqual((p.key_nickname, p.role), ("laptop", CLIENT))
        self.assertEqual(self.authed, [p])

    def test_wrong_signature_expired_and_reused_challenges_fail(self):
        priv, other = private_key("a"), private_key("b")
        self.keys.import_key("laptop", crypto.public_pem(priv))
        self.blacklist.limit = 10  # three failures here; blocking is test_failures_feed_the_blacklist's
        p = self.peer(CLIENT)
        unauthorized = {"args": "unauthorized", "id": "a1", "name": "error", "namespace": "rpc"}
        challenge = self.stage1(p)
        self.stage2(p, crypto.sign_challenge(other, challenge))
        self.assertEqual(self.last(p), unauthorized)
        self.stage2(p, crypto.sign_challenge(priv, challenge))  # used up by the failed try
        self.assertEqual(self.last(p), unauthorized)
        challenge = self.stage1(p)
        self.clock.advance(31)
        self.stage2(p, crypto.sign_challenge(priv, challenge))
        self.assertEqual(self.last(p), unauthorized)
        self.assertFalse(p.authenticated)

    def test_challenge_is_bound_to_its_connection(self):
        priv = private_key("a")
        self.keys.import_key("laptop", crypto.public_pem(priv))
        a, b = self.peer(CLIENT), self.peer(CLIENT)
        challenge = self.stage1(a)
        self.stage2(b, crypto.sign_challenge(priv, challenge))
        self.assertEqual(self.last(b)["args"], "unauthorized")
        self.stage2(a, crypto.sign_challenge(priv, challenge))
        self.assertTrue(a.authenticated)

    def test_role_binding(self):
        priv = private_key("a")
        self.keys.import_key("srv", crypto.public_pem(priv), role="server")
        p = self.peer(CLIENT)
        self.stage2(p, crypto.sign_challenge(priv, self.stage1(p)))
        self.assertEqual(self.last(p)["args"], "unauthorized")
        q = self.peer()  # never answered identify: a server-bound key makes it a server
        self.stage2(q, crypto.sign_challenge(priv, self.stage1(q)))
        self.assertEqual((q.authenticated, q.role), (True, SERVER))

    def test_key_list_only_from_authenticated_and_validated(self):
        priv = private_key("a")
        self.keys.import_key("k", crypto.public_pem(priv))
        p = self.peer(SERVER)
        reply = '{"args":{"md5_keys":["m1"]},"id":"%s","name":"response","namespace":"rpc"}' % LIST_KEYS_ID
        self.api.handle(p, reply)
        self.assertFalse(p.keys_reported)
        self.stage2(p, crypto.sign_challenge(priv, self.stage1(p)))
        self.api.handle(p, '{"args":{"md5_keys":"m1"},"id":"%s","name":"response","namespace":"rpc"}' % LIST_KEYS_ID)
        self.api.handle(p, '{"args":{"md5_keys":[1]},"id":"%s","name":"response","namespace":"rpc"}' % LIST_KEYS_ID)
        self.api.handle(p, '{"args":{"md5_keys":["m1"]},"id":"elsewhere","name":"response","namespace":"rpc"}')
        self.assertFalse(p.keys_reported)
        self.api.handle(p, reply)
        self.assertEqual(p.md5s, frozenset(["m1"]))
        self.assertEqual(p.link.announcements(), [[]])

    def test_other_requests_and_bad_input(self):
        p = self.peer()
        self.api.handle(p, '{"args":{},"id":"q","name":"query","namespace":"sysadm"}')
        self.assertEqual(p.link.sent[-1], '{"args":null,"id":"q","name":"error","namespace":"sysadm"}')
        self.api.handle(p, "::{x}\nhello")
        self.assertEqual(self.last(p)["args"]["code"], "401")
        self.api.handle(p, "{broken")
        self.assertIn("invalid JSON", self.last(p)["args"]["detail"])
        self.api.handle(p, '{"id":"z","name":"identify","namespace":"rpc"}')
        self.assertEqual(self.last(p)["args"]["code"], "400")
        self.assertIn("'args'", self.last(p)["args"]["detail"])
        count = len(p.link.sent)
        self.api.handle(p, '{"args":null,"id":"z","name":"error","namespace":"rpc"}')
        self.assertEqual(len(p.link.sent), count)
        self.d.authenticate(p, "n", "m", CLIENT)
        self.api.handle(p, '{"args":{},"id":"q","name":"query","namespace":"rpc"}')
        self.assertEqual(p.link.sent[-1], '{"args":null,"id":"q","name":"response","namespace":"rpc"}')

    def test_failures_feed_the_blacklist(self):
        p = self.peer(CLIENT)
        self.stage2(p, "AAAA", rid="x")  # no challenge issued
        self.assertEqual(self.blacklist.blocked_for("192.0.2.1"), 0)
        self.stage1(p)
        self.stage2(p, "AAAA")  # garbage signature: second strike
        self.assertGreater(self.blacklist.blocked_for("192.0.2.1"), 0)
        # The block closes the open connection, and any later auth_ssl of the address is refused.
        self.assertEqual(p.link.closed[0], 1008)
        q = self.peer(CLIENT)
        self.api.handle(q, json.dumps({"args": "", "id": "late", "name": "auth_ssl", "namespace": "rpc"}))
        self.assertEqual(self.last(q)["args"], "unauthorized")
        self.assertEqual(q.link.closed[0], 1008)


class FlowTests(unittest.TestCase):
    def make(self, label, limit=1000):
        record = {"written": [], "closed": None, "reading": True}

        def pause():
            record["reading"] = False

        def resume():
            record["reading"] = True

        flow = PeerFlow(self.clock, label=label, limit=limit, stall_timeout=5,
                        write=record["written"].append, close=lambda c, r: record.__setitem__("closed", (c, r)),
                        pause_reading=pause, resume_reading=resume)
        return flow, record

    def setUp(self):
        self.clock = task.Clock()

    def test_congested_receiver_pauses_sender_until_drained(self):
        recv, r = self.make("recv")
        send, s = self.make("send")
        recv.relay_from(send, b"one")
        self.assertEqual(r["written"], [b"one"])
        recv.pauseProducing()
        recv.relay_from(send, b"two")
        self.assertFalse(s["reading"])
        self.assertTrue(send.reading_paused)
        self.assertEqual(recv.queued_bytes, 3)
        recv.resumeProducing()
        self.assertEqual(r["written"], [b"one", b"two"])
        self.assertTrue(s["reading"])
        self.assertEqual(send.pauses, 1)

    def test_sender_held_by_two_receivers_resumes_after_both(self):
        r1, _ = self.make("r1")
        r2, _ = self.make("r2")
        send, s = self.make("send")
        r1.pauseProducing()
        r2.pauseProducing()
        r1.relay_from(send, b"a")
        r2.relay_from(send, b"b")
        r1.resumeProducing()
        self.assertFalse(s["reading"])
        r2.resumeProducing()
        self.assertTrue(s["reading"])

    def test_queue_cap_closes_receiver_and_frees_sender(self):
        recv, r = self.make("recv", limit=10)
        send, s = self.make("send")
        recv.pauseProducing()
        recv.relay_from(send, b"123456")
        self.assertFalse(s["reading"])
        recv.relay_from(send, b"7890123")
        self.assertEqual(r["closed"][0], 1008)
        self.assertIn("too slow", r["closed"][1])
        self.assertEqual(recv.queued_bytes, 0)
        self.assertTrue(s["reading"])

    def test_stalled_receiver_is_closed(self):
        recv, r = self.make("recv")
        send, s = self.make("send")
        recv.pauseProducing()
        recv.relay_from(send, b"x")
        self.clock.advance(4)
        self.assertIsNone(r["closed"])
        self.clock.advance(2)
        self.assertIn("stopped reading", r["closed"][1])
        self.assertTrue(s["reading"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_lost_sender_is_forgotten(self):
        recv, _ = self.make("recv")
        send, s = self.make("send")
        recv.pauseProducing()
        recv.relay_from(send, b"x")
        send.lost()
        self.assertEqual(recv.held, set())
        recv.resumeProducing()
        self.assertFalse(s["reading"])  # a closed sender is not resumed
        recv.lost()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class UntrustedInputTests(unittest.TestCase):
    """Whatever a peer sends, the API and the router answer or drop; they never raise."""

    def test_api_and_route_never_raise(self):
        from hypothesis import given, settings, strategies as st

        db = temp_database(self)
        d = PeerDirectory()
        api = BridgeApi(d, KeyStore(db), None, task.Clock(), hostname="h", challenge_ttl=30)
        s = make_peer(d, SERVER, True, ["k"])
        c = make_peer(d, CLIENT, True, ["k"])
        u = make_peer(d)
        envelopes = st.fixed_dictionaries({
            "namespace": st.sampled_from(["rpc", "RPC", "events", 1, None]),
            "name": st.sampled_from(["auth_ssl", "identify", "response", "error", "settings", 3]),
            "id": st.one_of(st.sampled_from([IDENT_ID, LIST_KEYS_ID, "x"]), st.integers(), st.none()),
            "args": st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                                 lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                                     st.sampled_from(["type", "md5_keys", "encrypted_string", "x"]), inner, max_size=3),
                                 max_leaves=8),
        })

        @settings(max_examples=200, deadline=None)
        @given(st.one_of(st.text(max_size=40), envelopes.map(json.dumps)), st.sampled_from([s, c, u]))
        def check(text, peer):
            api.handle(peer, text)
            if peer.authenticated and not text.startswith("{"):
                d.route(peer, text)
            for p in (s, c, u):
                for sent in p.link.sent:
                    self.assertIsInstance(json.loads(sent), dict)

        check()


class ClaimedKeyTests(unittest.TestCase):
    """Issue 7 item 2: pairing trusts only keys a client proved; one role per key."""

    def setUp(self):
        self.clock = task.Clock()
        self.clock.advance(1000)
        db = temp_database(self)
        self.keys = KeyStore(db)
        self.d = PeerDirectory()
        self.api = BridgeApi(self.d, self.keys, None, self.clock, hostname="relayhost", challenge_ttl=30)

    def login(self, key, role, reported):
        p = make_peer(self.d)
        if role:
            self.api.handle(p, json.dumps({"args": {"hostname": "h", "type": role}, "id": IDENT_ID, "name": "response",
                                           "namespace": "rpc"}))
        self.api.handle(p, json.dumps({"args": "", "id": "a", "name": "auth_ssl", "namespace": "rpc"}))
        challenge = json.loads(p.link.sent[-1])["args"]["test_string"]
        self.api.handle(p, json.dumps({"args": {"encrypted_string": crypto.sign_challenge(key, challenge)}, "id": "a",
                                       "name": "auth_ssl", "namespace": "rpc"}))
        if p.authenticated and reported is not None:
            self.api.handle(p, json.dumps({"args": {"md5_keys": reported}, "id": LIST_KEYS_ID, "name": "response",
                                           "namespace": "rpc"}))
        return p

    def md5(self, name):
        return crypto.md5_checksum(crypto.public_pem(private_key(name)))

    def test_client_claiming_the_victims_checksum_is_not_paired(self):
        for name, role in (("srv", "server"), ("mallory-srv", "server"), ("mallory-cli", "client"), ("victim", "client")):
            self.keys.import_key(name, crypto.public_pem(private_key(name)), role)
        victim = self.md5("victim")
        real = self.login(private_key("srv"), SERVER, [victim, "x"])
        fake = self.login(private_key("mallory-srv"), SERVER, [victim])       # M: claims the victim's key
        relay = self.login(private_key("mallory-cli"), CLIENT, [victim])      # M': claims it too
        self.assertTrue(real.authenticated and fake.authenticated and relay.authenticated)
        self.assertEqual(relay.md5s, frozenset())  # the claim beyond its own key is dropped
        self.assertEqual(relay.partners, set())
        self.assertNotIn(relay.id, real.partners)
        self.assertIsNone(self.d.route(relay, real.id + "\n{}"))
        # The victim itself, having proved its key, is paired with both servers (and the
        # client decides which one it trusts: sysadmd.client.bridged).
        victim_peer = self.login(private_key("victim"), CLIENT, [victim, self.md5("srv")])
        self.assertEqual(victim_peer.md5s, frozenset([victim]))
        self.assertEqual(victim_peer.partners, {real.id, fake.id})

    def test_pairs_with_vouches_for_a_second_client_key(self):
        self.keys.import_key("srv", crypto.public_pem(private_key("srv")), "server")
        self.keys.import_key("qt", crypto.public_pem(private_key("qt-bridge")), "client",
                             pairs_with=[crypto.public_pem(private_key("qt-server"))])
        server = self.login(private_key("srv"), SERVER, [self.md5("qt-server")])
        qt = self.login(private_key("qt-bridge"), CLIENT, [self.md5("qt-server"), "other"])
        self.assertEqual(qt.md5s, frozenset([self.md5("qt-server")]))
        self.assertEqual(qt.partners, {server.id})
        with self.assertRaises(KeyStoreError):  # a server reports its keys itself
            self.keys.import_key("srv2", crypto.public_pem(private_key("srv")), "server",
                                 pairs_with=[crypto.public_pem(private_key("qt-server"))])

    def test_unbound_key_is_bound_on_first_login_and_refused_in_the_other_role(self):
        from twisted.logger import globalLogPublisher
        seen = []
        globalLogPublisher.addObserver(seen.append)
        self.addCleanup(globalLogPublisher.removeObserver, seen.append)
        self.keys.import_key("k", crypto.public_pem(private_key("k")))  # upstream verbs: no role
        self.assertEqual(self.keys.get("k").role, "unbound")
        first = self.login(private_key("k"), SERVER, None)
        self.assertTrue(first.authenticated)
        self.assertEqual(self.keys.get("k").role, "server")  # stored: survives a restart
        self.assertEqual(KeyStore(self.keys.db).get("k").role, "server")
        from twisted.logger import formatEvent
        texts = [formatEvent(e) for e in seen]
        self.assertTrue(any("key k bound to role server on first use" in t for t in texts), texts)
        second = self.login(private_key("k"), CLIENT, None)
        self.assertFalse(second.authenticated)
        self.assertEqual(json.loads(second.link.sent[-1])["args"], "unauthorized")
        texts = [formatEvent(e) for e in seen]
        self.assertTrue(any("is bound to role server; refused as client" in t for t in texts), texts)
        again = self.login(private_key("k"), SERVER, None)
        self.assertTrue(again.authenticated)

    def test_unbound_key_needs_an_identify_reply_and_both_is_explicit(self):
        self.keys.import_key("k", crypto.public_pem(private_key("k")))
        silent = self.login(private_key("k"), None, None)
        self.assertFalse(silent.authenticated)
        self.assertEqual(self.keys.get("k").role, "unbound")
        self.keys.import_key("k2", crypto.public_pem(private_key("k2")), "both")
        self.assertTrue(self.login(private_key("k2"), SERVER, None).authenticated)
        self.assertTrue(self.login(private_key("k2"), CLIENT, None).authenticated)
        self.assertEqual(self.keys.get("k2").role, "both")

    def test_legacy_any_rows_read_as_unbound(self):
        self.keys.import_key("old", crypto.public_pem(private_key("k")))
        self.keys.db.execute("UPDATE bridge_keys SET role = 'any'")
        self.assertEqual(self.keys.get("old").role, "unbound")
        self.keys.db.execute("PRAGMA user_version = 1")  # as the release that stored 'any' left it
        self.assertEqual(KeyStore(self.keys.db).get("old").role, "unbound")  # migration 2 ran
        self.assertEqual(self.keys.db.execute("SELECT role FROM bridge_keys").fetchone()[0], "unbound")
