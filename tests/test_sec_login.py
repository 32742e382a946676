"""Issue 7, login path: implausible credentials (1), blocks on every attempt (3), requests
parked behind a login (7), untrusted text in logs and rows (15).

Real daemons on loopback (TLS WebSockets, HTTPS, SQLite); Clock-driven Server units where
the order of events is the point.
"""

import base64
import json

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.trial import unittest

from sysadmd.auth.passwords import MAX_PASSWORD_BYTES, MAX_USER_NAME_BYTES, credential_problem
from sysadmd.runtime.db import open_database
from sysadmd.wire.envelope import encode
from tests.support import (FakePasswords, RecordingChannel, add_key_login, http_client, make_config, open_client,
                           short_tempdir, start_daemon, unit_server)

HUGE = 5 * 1024 * 1024  # the name length that made the systemd NSS module abort the daemon


class HeldPasswords:
    """A checker whose answers the test releases; records every check it was asked for."""

    def __init__(self, accounts):
        self.accounts = accounts
        self.started = []  # (user, Deferred)

    @property
    def calls(self):
        return len(self.started)

    def check(self, user, password):
        d = defer.Deferred()
        self.started.append((user, d))
        d.answer = self.accounts.get(user) == password
        return d

    def release(self, index):
        user, d = self.started[index]
        if not d.called:
            d.callback(d.answer)


def auth_text(user, password, request_id="a1"):
    return encode({"namespace": "rpc", "name": "auth", "id": request_id, "args": {"username": user, "password": password}})


def replies(channel):
    return [json.loads(t) for t in channel.sent]


class ServerUnit(unittest.TestCase):
    """A Server on a Clock with hand-made sessions (no sockets)."""

    def make_server(self, passwords, **overrides):
        state = short_tempdir(self)
        options = dict(BLACKLIST_EXEMPT_LOOPBACK="false", BLACKLIST_AUTH_FAIL_LIMIT=3)
        options.update(overrides)
        cfg = make_config(state, **options)
        db = open_database(state + "/s.sqlite")
        self.addCleanup(db.close)
        self.clock = Clock()
        self.clock.advance(1_000_000)
        server = unit_server(cfg, db, self.clock, passwords=passwords)
        self.addCleanup(server.logs.flush)
        return server

    def session(self, server, peer="203.0.113.7", kind="wss"):
        channel = RecordingChannel()
        return server.open_session(kind, peer, channel, timers=False), channel


# --- item 1: implausible user names and passwords --------------------------------------
class CredentialRules(unittest.TestCase):
    def test_plausible_names_pass(self):
        for name in ("root", "alice", "j.doe@example.org", "Zoë-Ødegård", "DOMAIN+user", "u" * MAX_USER_NAME_BYTES):
            self.assertIsNone(credential_problem(name, "pw"), name)
        self.assertIsNone(credential_problem("alice", "p" * MAX_PASSWORD_BYTES))
        self.assertIsNone(credential_problem("alice", ""))

    def test_implausible_names_are_named_without_echoing_them(self):
        cases = {
            "x" * HUGE: "5242880 characters long",
            "é" * 200: "longer than 255 bytes",
            "ro\x00ot": "control",
            "root\n": "whitespace",
            "ro ot": "whitespace",
            "ro\tot": "whitespace",
            "ro\x1bot": "control",
            "ro\u202eot": "control",
            "ro\ud800ot": "surrogate",
            "root:x": "':'",
            "../root": "'/'",
            "": "non-empty",
        }
        for name, expected in cases.items():
            problem = credential_problem(name, "pw")
            self.assertIsNotNone(problem, repr(name[:20]))
            self.assertIn(expected, problem)
            self.assertLess(len(problem), 120)
        self.assertIn("non-empty string", credential_problem(None, "pw"))

    def test_implausible_passwords(self):
        self.assertIn("4096", credential_problem("alice", "p" * (MAX_PASSWORD_BYTES + 1)))
        self.assertIn("bytes of UTF-8", credential_problem("alice", "é" * 3000))
        self.assertIn("NUL", credential_problem("alice", "a\x00b"))
        self.assertIn("surrogate", credential_problem("alice", "a\udc80"))
        self.assertIn("string", credential_problem("alice", 42))


class ImplausibleNamesNeverReachALookup(ServerUnit):
    def test_no_check_no_lookup_bounded_log_and_row(self):
        passwords = HeldPasswords({"root": "pw"})
        server = self.make_server(passwords, BLACKLIST_AUTH_FAIL_LIMIT=5)
        looked_up = []
        server.rights.for_user = lambda user: looked_up.append(user)
        session, channel = self.session(server)
        name = "a\nUser Login Attempt: root   Success: true" + "x" * HUGE
        server.api.handle_text(session, auth_text(name, "pw"))
        [reply] = replies(channel)
        self.assertEqual(reply["args"]["code"], "401")
        self.assertIn(f"username is {len(name)} characters long", reply["args"]["detail"])
        self.assertEqual((passwords.calls, looked_up), (0, []))
        server.logs.flush()
        entries = [e for _, _, e in server.logs.read(["hostinfo"], 0, 2e6)]
        attempt = [e for e in entries if "Success: false" in e]
        self.assertEqual(len(attempt), 1)
        self.assertNotIn("\n", attempt[0])
        self.assertIn("a\\nUser Login Attempt", attempt[0])
        self.assertLess(len(attempt[0]), 300)
        # The failure is counted against the address; no row holds the name.
        rows = server.db.execute("SELECT address FROM auth_failures").fetchall()
        self.assertEqual([r["address"] for r in rows], ["203.0.113.7"])
        total = server.db.execute("SELECT SUM(LENGTH(entry)) FROM logs").fetchone()[0]
        self.assertLess(total, 4096)


class HugeNamesOverTheWire(unittest.TestCase):
    """The attack of item 1, on a daemon with the real PAM checker: it must keep serving."""

    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        # MAX_MESSAGE_BYTES raised so the 5 MiB message reaches the login code at all.
        cfg = make_config(short_tempdir(self), MAX_MESSAGE_BYTES=16 * 1024 * 1024,
                          MAX_UNAUTH_MESSAGE_BYTES=16 * 1024 * 1024)  # let the name reach the login code
        self.running = yield start_daemon(self, cfg)

    @defer.inlineCallbacks
    def test_wss_and_rest_refuse_a_5_mib_name_with_401_and_keep_serving(self):
        client = yield open_client(self, self.running)
        reply = yield client.call("rpc", "auth", {"username": "x" * HUGE, "password": "pw"})
        self.assertEqual(reply["args"]["code"], "401")
        self.assertIn("username is 5242880 characters long; at most 255 bytes", reply["args"]["detail"])
        for i, bad in enumerate(("ro\x00ot", "root\nforged", "\ud800")):
            # json.dumps escapes the lone surrogate as \\ud800, as a hostile client would.
            answer = client.pending[f"b{i}"] = defer.Deferred()
            client.send_text(json.dumps({"namespace": "rpc", "name": "auth", "id": f"b{i}",
                                         "args": {"username": bad, "password": "pw"}}))
            reply = yield answer
            if bad == "\ud800":  # refused earlier still, by the envelope (no lookup either)
                self.assertEqual(reply["args"]["code"], "400", repr(bad))
                self.assertIn("surrogate", reply["args"]["detail"])
                continue
            self.assertEqual(reply["args"]["code"], "401", repr(bad))
            self.assertIn("login refused: username contains", reply["args"]["detail"])
        # Same connection and a new one still served.
        alive = yield client.call("rpc", "identify", "")
        self.assertEqual(alive["name"], "response")

        http = http_client(self, self.running)
        body = json.dumps({"username": "y" * HUGE, "password": "pw"}).encode()
        response = yield http.post(f"https://127.0.0.1:{self.running.port}/rpc/auth", data=body,
                                   headers={"Content-Type": "application/json"})
        self.assertEqual(response.code, 401)
        parsed = json.loads((yield response.text("utf-8")))
        self.assertIn("username is 5242880 characters long", parsed["args"]["detail"])
        # Basic credentials take the same check.
        basic = base64.b64encode("ro\x00ot\nforged:pw".encode()).decode()
        response = yield http.get(f"https://127.0.0.1:{self.running.port}/rpc/query",
                                  headers={"Authorization": f"Basic {basic}"})
        self.assertEqual(response.code, 401)
        parsed = json.loads((yield response.text("utf-8")))
        self.assertIn("login refused: username contains a control", parsed["args"]["detail"])

        other = yield open_client(self, self.running)
        alive = yield other.call("rpc", "identify", "")
        self.assertEqual(alive["name"], "response")
        self.running.server.logs.flush()
        size = self.running.server.db.execute("SELECT MAX(LENGTH(entry)) FROM logs").fetchone()[0]
        self.assertLess(size, 1024)


# --- item 3: the blacklist on every attempt ------------------------------------------------
class BlockOnEveryAttempt(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        self.passwords = FakePasswords({"root": "pw"}, delay=0.2)
        cfg = make_config(short_tempdir(self), BLACKLIST_EXEMPT_LOOPBACK="false", BLACKLIST_AUTH_FAIL_LIMIT=3)
        self.running = yield start_daemon(self, cfg, passwords=self.passwords)

    @defer.inlineCallbacks
    def test_30_preopened_connections_get_at_most_3_checks(self):
        clients = []
        for _ in range(30):
            clients.append((yield self.running.connect()))
        for client in clients:
            self.addCleanup(client.close)
        # 29 wrong guesses at once; the 30th connection holds the right password.
        calls = [client.call("rpc", "auth", {"username": "root", "password": "wrong"}) for client in clients[:29]]
        results = yield defer.DeferredList(calls, consumeErrors=True)
        self.assertEqual(self.passwords.calls, 3)
        for ok, reply in results:
            if ok:
                self.assertEqual(reply["name"], "error", reply)
                self.assertIn(reply["args"]["code"], ("401", "429"))
        # Every connection from the address is closed, the 30th included: it gets no try.
        closes = yield defer.gatherResults([c.closed for c in clients])
        self.assertEqual({code for code, _ in closes}, {1008})
        self.assertTrue(all("blocked after repeated failed logins" in reason for _, reason in closes))
        self.assertEqual(len(self.running.server.sessions), 0)
        late = yield self.running.connect()
        code, _ = yield late.closed
        self.assertEqual(code, 1008)
        self.assertEqual(self.passwords.calls, 3)
        self.assertEqual(len(self.running.server.tokens), 0)

    @defer.inlineCallbacks
    def test_an_open_connection_is_refused_at_its_next_attempt_without_a_check(self):
        client = yield open_client(self, self.running)
        reply = yield client.call("rpc", "identify", "")
        self.assertEqual(reply["name"], "response")
        # Blocked behind its back (e.g. by another daemon process's guesses): no callback ran.
        now = reactor.seconds()
        self.running.server.db.execute("INSERT INTO blacklist (address, blocked_at, until) VALUES (?, ?, ?)",
                                       ("127.0.0.1", now, now + 600))
        reply = yield client.call("rpc", "auth", {"username": "root", "password": "pw"})
        self.assertEqual(reply["args"]["code"], "401")
        self.assertIn("address blocked", reply["args"]["detail"])
        code, reason = yield client.closed
        self.assertEqual(code, 1008)
        self.assertEqual(self.passwords.calls, 0)


class BlockUnits(ServerUnit):
    def test_block_drops_queued_checks_and_closes_every_connection_of_the_address(self):
        passwords = HeldPasswords({"root": "pw"})
        server = self.make_server(passwords, BLACKLIST_AUTH_FAIL_LIMIT=2, PASSWORD_CHECKS_PER_ADDRESS=10)
        sessions = [self.session(server) for _ in range(6)]
        bystander, bystander_channel = self.session(server, peer="203.0.113.99")
        for i, (session, _) in enumerate(sessions):
            server.api.handle_text(session, auth_text("root", "wrong" if i < 5 else "pw"))
        # Two failures left before the block: only two checks run, the rest wait.
        self.assertEqual(passwords.calls, 2)
        passwords.release(0)
        passwords.release(1)
        self.clock.advance(0)
        self.assertEqual(passwords.calls, 2)  # the queued four were dropped, never checked
        for session, channel in sessions:
            [reply] = replies(channel)
            self.assertEqual(reply["args"]["code"], "401")
            self.assertEqual(channel.closed_with[0], 1008)
            self.assertIn("blocked after repeated failed logins", channel.closed_with[1])
        self.assertIsNone(bystander_channel.closed_with)
        self.assertEqual(len(server.tokens), 0)

    def test_bridged_clients_failures_count_per_client_and_a_blocked_client_is_refused(self):
        passwords = HeldPasswords({})
        server = self.make_server(passwords, BLACKLIST_AUTH_FAIL_LIMIT=3)
        peer = "bridge:lab/client-7"
        session, channel = self.session(server, peer=peer, kind="bridge")
        neighbour, neighbour_channel = self.session(server, peer="bridge:lab/client-8", kind="bridge")
        add_key_login(server)
        for i in range(3):
            # A bridged client may only use auth_ssl; each wrong answer counts.
            server.api.handle_text(session, encode({"namespace": "rpc", "name": "auth_ssl", "id": f"t{i}",
                                                    "args": {"encrypted_string": "bm9wZQ=="}}))
        self.clock.advance(0)
        self.assertEqual(channel.closed_with[0], 1008)
        self.assertIsNone(neighbour_channel.closed_with)
        self.assertEqual([e[0] for e in server.blacklist.entries()], [peer])
        again, again_channel = self.session(server, peer=peer, kind="bridge")
        server.api.handle_text(again, encode({"namespace": "rpc", "name": "auth_ssl", "id": "s1", "args": {}}))
        [reply] = replies(again_channel)
        self.assertEqual(reply["args"]["code"], "401")
        self.assertIn("address blocked", reply["args"]["detail"])
        self.clock.advance(0)
        self.assertEqual(again_channel.closed_with[0], 1008)


# --- item 7: requests parked behind a pending login -------------------------------------
class ParkedRequests(ServerUnit):
    def test_past_the_request_cap_the_connection_closes_with_1008(self):
        passwords = HeldPasswords({"root": "pw"})
        server = self.make_server(passwords, AUTH_PENDING_MAX_REQUESTS=10)
        session, channel = self.session(server)
        server.api.handle_text(session, auth_text("root", "pw"))
        for i in range(10):
            server.api.handle_text(session, encode({"namespace": "rpc", "name": "identify", "id": f"i{i}", "args": ""}))
        self.assertIsNone(channel.closed_with)
        self.assertEqual(session.parked_requests, 10)
        server.api.handle_text(session, encode({"namespace": "rpc", "name": "identify", "id": "over", "args": ""}))
        self.assertEqual(channel.closed_with[0], 1008)
        self.assertIn("AUTH_PENDING_MAX_REQUESTS", channel.closed_with[1])

    def test_past_the_byte_cap_the_connection_closes_with_1008(self):
        passwords = HeldPasswords({"root": "pw"})
        server = self.make_server(passwords, AUTH_PENDING_MAX_BYTES=4096)
        session, channel = self.session(server)
        server.api.handle_text(session, auth_text("root", "pw"))
        padded = encode({"namespace": "rpc", "name": "identify", "id": "p", "args": "z" * 1800})
        server.api.handle_text(session, padded)
        server.api.handle_text(session, padded)
        self.assertIsNone(channel.closed_with)
        server.api.handle_text(session, padded)
        self.assertEqual(channel.closed_with[0], 1008)
        self.assertIn("4096 bytes", channel.closed_with[1])

    def test_under_the_cap_parked_requests_run_in_order_after_the_login(self):
        passwords = HeldPasswords({"root": "pw"})
        server = self.make_server(passwords)
        server.rights.for_user = lambda user: True
        session, channel = self.session(server)
        server.api.handle_text(session, auth_text("root", "pw"))
        for i in range(5):
            server.api.handle_text(session, encode({"namespace": "rpc", "name": "query", "id": f"q{i}", "args": {}}))
        self.assertEqual(channel.sent, [])
        passwords.release(0)
        got = replies(channel)
        self.assertEqual([m["id"] for m in got], ["a1", "q0", "q1", "q2", "q3", "q4"])
        self.assertTrue(all(m["name"] == "response" for m in got))
        self.assertEqual((session.parked_requests, session.parked_bytes), (0, 0))


class ParkedRequestsOverWss(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_a_flood_behind_a_slow_login_is_cut_off(self):
        passwords = HeldPasswords({"root": "pw"})
        cfg = make_config(short_tempdir(self), AUTH_PENDING_MAX_REQUESTS=50)
        running = yield start_daemon(self, cfg, passwords=passwords)
        self.addCleanup(lambda: [passwords.release(i) for i in range(passwords.calls)])
        client = yield open_client(self, running)
        client.call("rpc", "auth", {"username": "root", "password": "wrong"}).addErrback(lambda f: None)
        for i in range(200):
            client.call("rpc", "identify", "").addErrback(lambda f: None)
        code, reason = yield client.closed
        self.assertEqual(code, 1008)
        self.assertIn("while the login was being checked", reason)
        other = yield open_client(self, running)
        alive = yield other.call("rpc", "identify", "")
        self.assertEqual(alive["name"], "response")


# --- item 15: untrusted text in logs -------------------------------------------------------
class ForgedLogLines(ServerUnit):
    def test_newlines_in_names_and_token_failures_forge_nothing(self):
        server = self.make_server(FakePasswords({}), BLACKLIST_AUTH_FAIL_LIMIT=50)
        session, channel = self.session(server, peer="203.0.113.9")
        server.api.handle_text(session, auth_text("bob\rUser Login Attempt: root", "pw"))
        server.logs.flush()
        entries = [e for _, _, e in server.logs.read(["hostinfo"], 0, 2e6)]
        self.assertFalse(any("\n" in e or "\r" in e for e in entries))
        self.assertTrue(any("bob\\rUser Login Attempt: root" in e for e in entries))
