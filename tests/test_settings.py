"""rpc/settings over real TLS WebSockets: the four key actions in upstream's shapes."""

import base64
import re

import hypothesis
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.trial import unittest

from sysadmd.runtime import crypto
from sysadmd.auth.keys import KeyStore
from sysadmd.runtime.db import database_path, open_database
from sysadmd.session import Identity
from tests.keys_support import (
    call, call_async, clock_server, error_code, key_login, md5_of, pem_of, private_key, register, stored_of,
)
from tests.support import FakePasswords, RecordingChannel, make_config, open_client, short_tempdir, start_daemon

LIMITED_USER = "daemon"  # made a limited user by LIMITED_ACCESS_GROUPS=daemon below
DESCRIPTION = re.compile(r"^Nickname: (.*)\nEmail: (.*)\nDate Registered: \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d$")


class SettingsOverWss(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def setUp(self):
        cfg = make_config(short_tempdir(self), LIMITED_ACCESS_GROUPS=LIMITED_USER)
        self.running = yield start_daemon(self, cfg, passwords=FakePasswords({"root": "pw", LIMITED_USER: "pw2"}))

    @defer.inlineCallbacks
    def login(self, user="root", password=None):
        client = yield open_client(self, self.running)
        reply = yield client.call("rpc", "auth", {"username": user, "password": password or ("pw" if user == "root" else "pw2")})
        self.assertEqual(reply["name"], "response", reply)
        return client

    def settings(self, client, **args):
        return client.call("rpc", "settings", args)

    @defer.inlineCallbacks
    def test_bad_args_are_400_naming_the_actions(self):
        client = yield self.login()
        for args in ("", [], {"action": 3}, {}):
            reply = yield client.call("rpc", "settings", args)
            self.assertEqual(error_code(reply), "400", args)
            self.assertIn("register_ssl_cert", reply["args"]["detail"])
        reply = yield self.settings(client, action="frobnicate")
        self.assertEqual(error_code(reply), "400")
        self.assertIn("unknown action 'frobnicate'", reply["args"]["detail"])
        for name in ("list_ssl_certs", "list_ssl_checksums", "register_ssl_cert", "revoke_ssl_cert"):
            self.assertIn(name, reply["args"]["detail"])

    @defer.inlineCallbacks
    def test_settings_needs_a_login(self):
        client = yield open_client(self, self.running)
        reply = yield self.settings(client, action="list_ssl_checksums")
        self.assertEqual(error_code(reply), "401")

    @defer.inlineCallbacks
    def test_register_list_checksums_revoke(self):
        client = yield self.login()
        reply = yield client.call("rpc", "settings", {"action": "register_ssl_cert", "pub_key": stored_of("alice"),
                                                      "nickname": "laptop", "email": "alice@example.org"}, request_id="r1")
        self.assertEqual(reply, {"args": {}, "id": "r1", "name": "response", "namespace": "rpc"})

        listed = yield self.settings(client, action="list_ssl_certs")
        self.assertEqual(list(listed["args"]), ["root"])
        self.assertEqual(list(listed["args"]["root"]), [stored_of("alice")])
        match = DESCRIPTION.match(listed["args"]["root"][stored_of("alice")])
        self.assertIsNotNone(match, listed)
        self.assertEqual(match.groups(), ("laptop", "alice@example.org"))

        sums = yield self.settings(client, action="list_ssl_checksums")
        self.assertEqual(sums["args"], {"md5_keys": [md5_of("alice")]})
        self.assertEqual(len(md5_of("alice")), 24)

        revoked = yield self.settings(client, action="revoke_ssl_cert", pub_key=stored_of("alice"))
        self.assertEqual(revoked["args"], {})
        listed = yield self.settings(client, action="list_ssl_certs")
        self.assertEqual(listed["args"], {})
        sums = yield self.settings(client, action="list_ssl_checksums")
        self.assertEqual(sums["args"], {"md5_keys": []})
        again = yield self.settings(client, action="revoke_ssl_cert", pub_key=stored_of("alice"))
        self.assertEqual(error_code(again), "400")
        self.assertIn("no registered key with that pub_key", again["args"]["detail"])

    @defer.inlineCallbacks
    def test_registered_key_can_log_in(self):
        client = yield self.login()
        yield self.settings(client, action="register_ssl_cert", pub_key=stored_of("alice"), nickname="n", email="e")
        other = yield open_client(self, self.running)
        reply = yield key_login(other, "alice")
        self.assertEqual(reply["name"], "response")

    @defer.inlineCallbacks
    def test_register_refuses_bad_input(self):
        client = yield self.login()
        cases = [
            ({}, "'pub_key' is required"),
            ({"pub_key": ""}, "'pub_key' is required"),
            ({"pub_key": 5}, "'pub_key' must be a string"),
            ({"pub_key": "bm90IGEga2V5"}, "pub_key: not a PEM public key"),
            ({"pub_key": "%%%"}, "pub_key:"),
            ({"pub_key": stored_of("alice"), "nickname": ["x"]}, "'nickname' must be a string"),
        ]
        for args, detail in cases:
            reply = yield self.settings(client, action="register_ssl_cert", **args)
            self.assertEqual(error_code(reply), "400", args)
            self.assertIn(detail, reply["args"]["detail"], args)
        yield self.settings(client, action="register_ssl_cert", pub_key=stored_of("alice"), nickname="one")
        # The same key for another user: 409, naming the owner.
        limited = yield self.login(LIMITED_USER)
        dup = yield self.settings(limited, action="register_ssl_cert", pub_key=stored_of("alice"), nickname="two")
        self.assertEqual(error_code(dup), "409")
        self.assertIn("already registered for user root (one)", dup["args"]["detail"])
        self.assertIn("one user only", dup["args"]["detail"])

    @defer.inlineCallbacks
    def test_limited_user_sees_own_keys_and_gets_403_for_others(self):
        root = yield self.login()
        limited = yield self.login(LIMITED_USER)
        yield self.settings(root, action="register_ssl_cert", pub_key=stored_of("alice"), nickname="a")
        reply = yield self.settings(limited, action="register_ssl_cert", pub_key=stored_of("carol"), nickname="c")
        self.assertEqual(reply["args"], {})

        mine = yield self.settings(limited, action="list_ssl_certs")
        self.assertEqual(list(mine["args"]), [LIMITED_USER])
        everyone = yield self.settings(root, action="list_ssl_certs")
        self.assertEqual(sorted(everyone["args"]), [LIMITED_USER, "root"])
        # A limited user sees only its own checksums (issue 7, item 17); full access sees all.
        sums = yield self.settings(limited, action="list_ssl_checksums")
        self.assertEqual(sums["args"], {"md5_keys": [md5_of("carol")]})
        sums = yield self.settings(root, action="list_ssl_checksums")
        self.assertEqual(sorted(sums["args"]["md5_keys"]), sorted([md5_of("alice"), md5_of("carol")]))

        forbidden = yield self.settings(limited, action="revoke_ssl_cert", pub_key=stored_of("alice"), user="root")
        self.assertEqual(error_code(forbidden), "403")
        self.assertEqual(forbidden["args"]["message"], "Forbidden")
        self.assertIn("needs full access", forbidden["args"]["detail"])
        # The connection keeps serving after a 403 (upstream closed it).
        still = yield self.settings(limited, action="list_ssl_certs")
        self.assertEqual(list(still["args"]), [LIMITED_USER])
        self.assertEqual(len(self.running.daemon.keys.list()), 2)

        # Without "user" the own user is meant: root's key is not found for the limited user.
        own = yield self.settings(limited, action="revoke_ssl_cert", pub_key=stored_of("alice"))
        self.assertEqual(error_code(own), "400")
        theirs = yield self.settings(root, action="revoke_ssl_cert", pub_key=stored_of("carol"), user=LIMITED_USER)
        self.assertEqual(theirs["args"], {})

    @defer.inlineCallbacks
    def test_revoke_ends_the_keys_live_sessions(self):
        register(self.running, "root", "alice")
        register(self.running, "root", "bob")
        alice = yield open_client(self, self.running)
        reply = yield key_login(alice, "alice")
        alice_token = reply["args"][0]
        bob = yield open_client(self, self.running)
        yield key_login(bob, "bob")
        admin = yield self.login()

        revoked = yield self.settings(admin, action="revoke_ssl_cert", pub_key=stored_of("alice"))
        self.assertEqual(revoked["args"], {})
        code, reason = yield alice.closed
        self.assertEqual(code, 1008)
        self.assertIn("was revoked", reason)
        # Her token is gone too, so it cannot be resumed elsewhere.
        other = yield open_client(self, self.running)
        resumed = yield other.call("rpc", "auth_token", {"token": alice_token})
        self.assertEqual(error_code(resumed), "401")
        # Sessions of other keys and of passwords are untouched.
        for client in (bob, admin):
            alive = yield client.call("rpc", "query", {})
            self.assertEqual(alive["name"], "response")

    @defer.inlineCallbacks
    def test_revoking_own_key_answers_before_closing(self):
        register(self.running, "root", "alice")
        alice = yield open_client(self, self.running)
        yield key_login(alice, "alice")
        reply = yield self.settings(alice, action="revoke_ssl_cert", pub_key=stored_of("alice"))
        self.assertEqual(reply["args"], {})
        code, _ = yield alice.closed
        self.assertEqual(code, 1008)

    @defer.inlineCallbacks
    def test_other_subsystems_add_actions(self):
        actions = self.running.daemon.settings
        actions.add("whoami_test", lambda session, args: {"user": session.identity.user})
        self.addCleanup(actions.remove, "whoami_test")
        with self.assertRaises(ValueError) as cm:  # one owner per action
            actions.add("list_bridges", lambda session, args: {})
        self.assertIn("'list_bridges' is added twice", str(cm.exception))
        client = yield self.login()
        reply = yield self.settings(client, action="whoami_test")
        self.assertEqual(reply["args"], {"user": "root"})
        unknown = yield self.settings(client, action="nope")
        self.assertIn("whoami_test", unknown["args"]["detail"])
        self.assertIn("list_bridges", unknown["args"]["detail"])

    @defer.inlineCallbacks
    def test_query_lists_settings_read_write_for_limited_users(self):
        limited = yield self.login(LIMITED_USER)
        reply = yield limited.call("rpc", "query", {})
        self.assertEqual(reply["args"]["rpc/settings"], "read/write")


class RevokedElsewhere(unittest.TestCase):
    """A key removed by another process (the admin command) ends its logins: Clock-driven."""

    def setUp(self):
        self.server, self.clock = clock_server(self)
        register(self, "root", "alice")
        register(self, "root", "bob")
        self.other = open_database(database_path(self.server.config.state_dir))
        self.addCleanup(self.other.close)

    @defer.inlineCallbacks
    def key_session(self, name):
        channel = RecordingChannel()
        session = self.server.open_session("wss", "192.0.2.9", channel, timers=False)
        challenge = call(self.server, session, "auth_ssl", "")["args"]["test_string"]
        answer = crypto.sign_challenge(private_key(name), challenge)
        reply = yield call_async(self.server, session, "auth_ssl", {"encrypted_string": answer})
        self.assertEqual(reply["name"], "response")
        return session, channel, reply["args"][0]

    @defer.inlineCallbacks
    def test_watcher_ends_sessions_of_a_key_removed_by_another_connection(self):
        alice, alice_channel, alice_token = yield self.key_session("alice")
        bob, bob_channel, _ = yield self.key_session("bob")
        KeyStore(self.other).revoke("root", stored_of("alice"))
        self.clock.advance(1)  # the watcher's tick
        self.assertIsNone(self.server.tokens.check(alice_token))
        self.assertIsNone(alice.identity)
        self.clock.advance(0)  # closes go out on the next turn
        self.assertEqual(alice_channel.closed_with, (1008, "the key used to log in was revoked"))
        self.assertIsNone(bob_channel.closed_with)
        self.assertEqual(bob.identity.user, "root")

    @defer.inlineCallbacks
    def test_watcher_is_idle_while_nothing_changes(self):
        _, channel, _ = yield self.key_session("alice")
        self.clock.advance(5)
        self.assertIsNone(channel.closed_with)
        # A key moved to another user (revoked, re-registered) does not keep root's login.
        store = KeyStore(self.other)
        store.revoke("root", stored_of("alice"))
        store.register("daemon", pem_of("alice"), "moved")
        self.clock.advance(1)
        self.clock.advance(0)
        self.assertEqual(channel.closed_with[0], 1008)

    def test_watcher_stops_with_the_server(self):
        self.assertTrue(self.clock.getDelayedCalls())
        self.server.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])



class UntrustedKeys(unittest.TestCase):
    """register_ssl_cert with any pub_key text: {} or a 400, never a 500."""

    def setUp(self):
        self.server, self.clock = clock_server(self)
        self.session = self.server.open_session("wss", "198.51.100.2", RecordingChannel(), timers=False)
        self.session.login(Identity("root", True, "peer-uid"), None)

    @hypothesis.settings(max_examples=80, deadline=None)
    @hypothesis.given(pub_key=st.text(max_size=200) | st.binary(max_size=200).map(lambda b: base64.b64encode(b).decode()))
    def test_any_pub_key(self, pub_key):
        reply = call(self.server, self.session, "settings", {"action": "register_ssl_cert", "pub_key": pub_key})
        self.assertEqual(reply["args"]["code"], "400", reply)
        self.assertTrue(reply["args"]["detail"])
