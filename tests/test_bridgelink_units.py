"""Bridge link parts without sockets: URLs, the link table, the bridge key, the send
queue, the retry policy and the per-client payload handling."""

import base64
import json
import os
import stat

from hypothesis import given, settings, strategies as st
from twisted.internet.task import Clock
from twisted.trial import unittest

from sysadmd.runtime import crypto
from sysadmd.bridgelink import key as bridgekey
from sysadmd.bridgelink.clients import BASE64, BridgedClients
from sysadmd.bridgelink.link import BridgeLink
from sysadmd.bridgelink.outbox import LinkOutbox
from sysadmd.bridgelink.store import BridgeLinkError, BridgeLinkStore, normalize_url
from sysadmd.runtime.db import data_version, database_path, open_database
from sysadmd.wire.envelope import encode
from tests import keys_support as ks
from tests.support import short_tempdir


class UrlTests(unittest.TestCase):
    def test_normalization_like_upstream(self):
        cases = {
            "bridge.example.org": "wss://bridge.example.org:12149",
            "127.0.0.1:4000": "wss://127.0.0.1:4000",
            "wss://h": "wss://h:12149",
            "WSS://h:5/relay": "wss://h:5/relay",
            "wss://h:5/": "wss://h:5",
            "[::1]": "wss://[::1]:12149",
            "wss://[::1]:7": "wss://[::1]:7",
            "  spaced.example  ": "wss://spaced.example:12149",
        }
        for given_url, expected in cases.items():
            self.assertEqual(normalize_url(given_url), expected, given_url)

    def test_refusals_name_the_problem(self):
        cases = {
            "": "expected an address such as",
            "ws://h": "scheme 'ws' is not supported",
            "https://h": "scheme 'https'",
            "wss://": "names no host",
            "h:99999": "not a valid address",
            "wss://u@h": "must be just",
            "wss://h/?q=1": "must be just",
        }
        for bad, detail in cases.items():
            with self.assertRaises(BridgeLinkError) as ctx:
                normalize_url(bad)
            self.assertIn(detail, str(ctx.exception), bad)
            self.assertTrue(str(ctx.exception).startswith("url: "))

    @settings(max_examples=300, deadline=None)
    @given(st.text(max_size=60))
    def test_any_text_is_normalized_or_refused_cleanly(self, text):
        try:
            url = normalize_url(text)
        except BridgeLinkError:
            return
        self.assertTrue(url.startswith("wss://"))
        self.assertEqual(normalize_url(url), url)  # idempotent


class StoreTests(unittest.TestCase):
    def setUp(self):
        path = database_path(short_tempdir(self))
        self.db = open_database(path)
        self.other = open_database(path)
        self.addCleanup(self.db.close)
        self.addCleanup(self.other.close)
        self.clock = Clock()
        self.clock.advance(1000)
        self.store = BridgeLinkStore(self.db, clock=self.clock)

    def test_add_list_replace_pin_remove(self):
        row = self.store.add("home", "bridge.example.org")
        self.assertEqual((row.url, row.verify, row.fingerprint, row.created), ("wss://bridge.example.org:12149", "pin", None, 1000))
        self.store.pin("home", "AA:BB")
        self.store.pin("home", "CC:DD")  # only the first certificate is pinned
        self.assertEqual(self.store.get("home").fingerprint, "AA:BB")
        self.clock.advance(5)
        self.store.add("home", "wss://other:1", "ca")  # adding again replaces and forgets the pin
        again = self.store.get("home")
        self.assertEqual((again.url, again.verify, again.fingerprint, again.created), ("wss://other:1", "ca", None, 1005))
        self.store.add("away", "h2", "none")
        self.assertEqual([r.nickname for r in self.store.list()], ["away", "home"])
        self.assertTrue(self.store.remove("home"))
        self.assertFalse(self.store.remove("home"))
        self.assertIsNone(self.store.get("home"))

    def test_bad_fields_are_refused(self):
        for args, detail in [(("", "h"), "nickname:"), (("a/b", "h"), "nickname:"), (("n", "h", "trust"), "verify:")]:
            with self.assertRaises(BridgeLinkError) as ctx:
                self.store.add(*args)
            self.assertIn(detail, str(ctx.exception))
        self.assertEqual(self.store.list(), [])

    def test_edits_from_another_connection_change_data_version(self):
        before = data_version(self.db)
        BridgeLinkStore(self.other).add("cli", "h")
        self.assertNotEqual(data_version(self.db), before)
        self.assertEqual(self.store.get("cli").url, "wss://h:12149")


class BridgeKeyTests(unittest.TestCase):
    def test_created_once_private_and_reused(self):
        state = os.path.join(short_tempdir(self), "state")
        key, created = bridgekey.load_or_create(state)
        self.assertTrue(created)
        self.assertEqual(key.key_size, 2048)
        mode = stat.S_IMODE(os.stat(bridgekey.key_path(state)).st_mode)
        self.assertEqual(mode, 0o600)
        again, created = bridgekey.load_or_create(state)
        self.assertFalse(created)
        self.assertEqual(crypto.public_pem(again), crypto.public_pem(key))
        self.assertEqual(bridgekey.public_key_pem(state), crypto.public_pem(key))
        self.assertEqual(sorted(os.listdir(state)), ["bridge_key.pem"])  # no temporary files left


class OutboxTests(unittest.TestCase):
    def setUp(self):
        self.written = []
        self.overflows = []
        self.outbox = LinkOutbox(self.written.append, 10, lambda key, n: self.overflows.append((key, n)))

    def test_writes_at_once_then_queues_while_paused_in_order(self):
        self.assertTrue(self.outbox.send(b"1", "a"))
        self.outbox.pauseProducing()
        self.outbox.send(b"22", "a")
        self.outbox.send(b"333", "b")
        self.outbox.send(b"link", None)
        self.assertEqual(self.written, [b"1"])
        self.assertEqual(self.outbox.pending_for("a"), 2)
        self.outbox.resumeProducing()
        self.assertEqual(self.written, [b"1", b"22", b"333", b"link"])
        self.assertEqual((self.outbox.pending_for("a"), self.outbox.queued_bytes), (0, 0))

    def test_one_flooding_session_is_cut_off_alone(self):
        self.outbox.pauseProducing()
        self.outbox.send(b"bbbb", "b")
        self.outbox.send(b"aaaaaa", "a")
        self.assertFalse(self.outbox.send(b"aaaaaa", "a"))
        self.assertEqual(self.overflows, [("a", 12)])
        self.assertEqual(self.outbox.pending_for("a"), 0)
        self.outbox.resumeProducing()
        self.assertEqual(self.written, [b"bbbb"])

    def test_the_links_own_messages_are_bounded_too(self):
        self.outbox.pauseProducing()
        self.outbox.send(b"x" * 6, None)
        self.assertFalse(self.outbox.send(b"y" * 6, None))
        self.assertEqual(self.overflows, [(None, 12)])

    def test_nothing_is_sent_after_the_connection_stops(self):
        self.outbox.pauseProducing()
        self.outbox.send(b"x", "a")
        self.outbox.stopProducing()
        self.assertFalse(self.outbox.send(b"y", "a"))
        self.outbox.resumeProducing()
        self.assertEqual(self.written, [])


class RetryPolicyTests(unittest.TestCase):
    def make_link(self, jitter):
        server, clock = ks.clock_server(self, BRIDGE_RETRY_MAX="60")
        store = BridgeLinkStore(server.db, clock=clock)
        row = store.add("b", "127.0.0.1:1")
        return BridgeLink(server, row, store, None, clock, jitter=jitter), clock

    def test_doubles_from_one_second_up_to_the_cap(self):
        link, clock = self.make_link(lambda: 0.0)
        delays = [link.retry_delay(attempt) for attempt in range(9)]
        self.assertEqual(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60])
        self.assertEqual(link.status()["next_retry_in"], 60)
        clock.advance(15)
        self.assertEqual(link.status()["next_retry_in"], 45)
        link.authenticated_ok()  # only an accepted key restarts the count
        self.assertEqual(link.retry_delay(0), 1)

    def test_jitter_shortens_by_at_most_a_fifth(self):
        link, _ = self.make_link(lambda: 1.0)
        self.assertAlmostEqual(link.retry_delay(0), 0.8)
        for _ in range(10):
            delay = link.retry_delay(0)
        self.assertAlmostEqual(delay, 48.0)


class BridgedPayloadTests(unittest.TestCase):
    """BridgedClients on a Clock-driven server; frames are captured instead of sent."""

    def setUp(self):
        self.server, self.clock = ks.clock_server(self)
        self.frames = []
        self.clients = BridgedClients(self.server, "t", lambda data, key: self.frames.append(data.decode()) or True)
        self.addCleanup(self.clients.close_all, "test over")

    def last(self, client_id="::1"):
        prefix, _, body = self.frames[-1].partition("\n")
        self.assertEqual(prefix, client_id)
        return body

    def test_frames_without_an_id_line_are_dropped(self):
        self.clients.deliver('{"namespace":"rpc"}')
        self.clients.deliver("\n{}")
        self.assertEqual((self.frames, len(self.clients)), ([], 0))

    def test_unreadable_bodies_get_400_in_the_session_mode(self):
        self.clients.deliver("::1\nnot json")
        self.assertEqual(json.loads(self.last())["args"]["code"], "400")
        session = self.clients.get("::1")
        session.attributes[BASE64] = True
        self.clients.deliver("::1\n%%%not-base64")
        reply = json.loads(base64.b64decode(self.last()))
        self.assertEqual(reply["args"]["code"], "400")
        self.assertIn("neither JSON nor base64", reply["args"]["detail"])

    def test_plain_json_in_base64_mode_means_the_client_started_over(self):
        self.clients.deliver("::1\n" + encode({"namespace": "rpc", "name": "identify", "id": "i", "args": ""}))
        session = self.clients.get("::1")
        session.attributes[BASE64] = True
        self.clients.deliver("::1\n" + encode({"namespace": "rpc", "name": "identify", "id": "i2", "args": ""}))
        self.assertEqual(json.loads(self.last())["id"], "i2")
        self.assertFalse(session.attributes[BASE64])

    def test_unknown_md5_key_is_refused_plain_and_stays_plain(self):
        self.clients.deliver("::1\n" + encode({"namespace": "rpc", "name": "auth_ssl", "id": "a", "args": {"md5_key": "bm9wZQ=="}}))
        reply = json.loads(self.last())
        self.assertEqual(reply["args"]["code"], "401")
        self.assertFalse(self.clients.get("::1").attributes.get(BASE64))

    def test_overflow_closes_only_that_session(self):
        self.clients.update(["::1", "::2"])
        doomed = self.clients.get("::1")
        self.clients.overflow(doomed.id, 123)
        self.assertTrue(doomed.closed)
        self.assertIsNone(self.clients.get("::1"))
        self.assertFalse(self.clients.get("::2").closed)

    def test_announced_clients_stay_listed_after_their_auth_deadline(self):
        self.clients.update(["::1"])
        session = self.clients.get("::1")
        self.clock.advance(self.server.config.auth_timeout + 1)
        self.assertTrue(session.closed)
        self.assertIsNone(self.clients.get("::1"))
        self.assertEqual(self.clients.ids(), ["::1"])
        # Its next frame gets a fresh session.
        self.clients.deliver("::1\n" + encode({"namespace": "rpc", "name": "identify", "id": "i", "args": ""}))
        self.assertEqual(json.loads(self.last())["id"], "i")
        self.assertIsNot(self.clients.get("::1"), session)
        self.clients.update([])
        self.assertEqual((self.clients.ids(), len(self.clients)), ([], 0))
