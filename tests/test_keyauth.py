"""rpc/auth_ssl: key logins over real TLS WebSockets, and challenge expiry on a Clock."""

import os
import re
import stat

import hypothesis
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.trial import unittest

from sysadmd.runtime import crypto
from tests.keys_support import (
    b64decode_text, call, call_async, clock_server, error_code, key_login, md5_of, private_key, register,
)
from tests.support import FakePasswords, RecordingChannel, make_config, open_client, short_tempdir, start_daemon

# "daemon" (uid 1, primary group daemon) exists on every Debian-like system: it is made a
# limited user; "nobody" is in no access group at all.
LIMITED_USER = "daemon"
NO_RIGHTS_USER = "nobody"

_SCALARS = st.none() | st.booleans() | st.integers() | st.text(max_size=40)
JSON_VALUES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)
# Objects shaped like real requests, with hostile values.
JSON_VALUES = (JSON_VALUES | st.fixed_dictionaries({"encrypted_string": JSON_VALUES}) | st.fixed_dictionaries({"md5_key": JSON_VALUES})
               | st.fixed_dictionaries({"checksum": JSON_VALUES}))


class KeyLoginOverWss(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def setUp(self):
        cfg = make_config(short_tempdir(self), LIMITED_ACCESS_GROUPS=LIMITED_USER)
        self.running = yield start_daemon(self, cfg, passwords=FakePasswords({}))

    @defer.inlineCallbacks
    def test_registered_key_logs_in(self):
        register(self.running, "root", "alice")
        client = yield open_client(self, self.running)
        stage1 = yield client.call("rpc", "auth_ssl", "", request_id="s1")
        self.assertEqual(stage1["name"], "response")
        self.assertEqual(stage1["id"], "s1")
        challenge = stage1["args"]["test_string"]
        self.assertRegex(challenge, r"^[A-Za-z0-9]{40}$")
        answer = crypto.sign_challenge(private_key("alice"), challenge)
        stage2 = yield client.call("rpc", "auth_ssl", {"encrypted_string": answer}, request_id="s2")
        self.assertEqual(stage2["name"], "response")
        token, ttl = stage2["args"]
        self.assertEqual(len(token), 40)
        self.assertEqual(ttl, 900)
        identity = self.running.server.tokens.check(token)
        self.assertEqual((identity.user, identity.full_access, identity.method), ("root", True, "key"))
        self.assertEqual(identity.key_checksum, md5_of("alice"))
        query = yield client.call("rpc", "query", {})
        self.assertEqual(query["args"]["rpc/settings"], "read/write")

    @defer.inlineCallbacks
    def test_unregistered_key_is_refused(self):
        register(self.running, "root", "alice")
        client = yield open_client(self, self.running)
        reply = yield key_login(client, "mallory")
        self.assertEqual(error_code(reply), "401")
        self.assertIn("does not match any registered key", reply["args"]["detail"])
        query = yield client.call("rpc", "query", {})
        self.assertEqual(error_code(query), "401")

    @defer.inlineCallbacks
    def test_challenge_answers_once(self):
        register(self.running, "root", "alice")
        client = yield open_client(self, self.running)
        stage1 = yield client.call("rpc", "auth_ssl", "")
        answer = crypto.sign_challenge(private_key("alice"), stage1["args"]["test_string"])
        first = yield client.call("rpc", "auth_ssl", {"encrypted_string": answer})
        self.assertEqual(first["name"], "response")
        replay = yield client.call("rpc", "auth_ssl", {"encrypted_string": answer})
        self.assertEqual(error_code(replay), "401")
        self.assertIn("no challenge outstanding", replay["args"]["detail"])
        # The replay logged the session out (every auth* request does).
        query = yield client.call("rpc", "query", {})
        self.assertEqual(error_code(query), "401")

    @defer.inlineCallbacks
    def test_wrong_answer_uses_up_the_challenge(self):
        register(self.running, "root", "alice")
        client = yield open_client(self, self.running)
        stage1 = yield client.call("rpc", "auth_ssl", "")
        challenge = stage1["args"]["test_string"]
        wrong = yield client.call("rpc", "auth_ssl", {"encrypted_string": crypto.sign_challenge(private_key("mallory"), challenge)})
        self.assertEqual(error_code(wrong), "401")
        right = yield client.call("rpc", "auth_ssl", {"encrypted_string": crypto.sign_challenge(private_key("alice"), challenge)})
        self.assertEqual(error_code(right), "401")

    @defer.inlineCallbacks
    def test_challenge_of_another_connection_is_refused(self):
        register(self.running, "root", "alice")
        asker = yield open_client(self, self.running)
        thief = yield open_client(self, self.running)
        stage1 = yield asker.call("rpc", "auth_ssl", "")
        answer = crypto.sign_challenge(private_key("alice"), stage1["args"]["test_string"])
        without_own = yield thief.call("rpc", "auth_ssl", {"encrypted_string": answer})
        self.assertEqual(error_code(without_own), "401")
        yield thief.call("rpc", "auth_ssl", "")  # the thief's own, different challenge
        with_own = yield thief.call("rpc", "auth_ssl", {"encrypted_string": answer})
        self.assertEqual(error_code(with_own), "401")
        self.assertIn("does not match", with_own["args"]["detail"])
        # The asker's challenge is still good for the asker.
        ok = yield asker.call("rpc", "auth_ssl", {"encrypted_string": answer})
        self.assertEqual(ok["name"], "response")

    @defer.inlineCallbacks
    def test_any_non_object_args_start_stage_one(self):
        client = yield open_client(self, self.running)
        for args in ("", {}, [], 5, {"action": "auth_ssl"}):
            reply = yield client.call("rpc", "auth_ssl", args)
            self.assertRegex(reply["args"]["test_string"], r"^[A-Za-z0-9]{40}$", args)

    @defer.inlineCallbacks
    def test_stage_one_logs_the_session_out(self):
        register(self.running, "root", "alice")
        client = yield open_client(self, self.running)
        reply = yield key_login(client, "alice")
        token = reply["args"][0]
        yield client.call("rpc", "auth_ssl", "")
        query = yield client.call("rpc", "query", {})
        self.assertEqual(error_code(query), "401")
        self.assertIsNone(self.running.server.tokens.check(token))

    @defer.inlineCallbacks
    def test_md5_key_variant(self):
        register(self.running, "root", "alice")
        register(self.running, "root", "bob")
        client = yield open_client(self, self.running)
        stage1 = yield client.call("rpc", "auth_ssl", {"md5_key": md5_of("alice")}, request_id="sysadm-client-auth-auto")
        self.assertEqual(stage1["id"], "sysadm-client-auth-auto")
        self.assertEqual(sorted(stage1["args"]), ["new_ssl_key", "test_string"])
        server_pem = b64decode_text(stage1["args"]["new_ssl_key"])
        self.assertIn(" PUBLIC KEY--", server_pem)
        crypto.load_public_key(server_pem)  # a real key, as Qt clients need
        challenge = b64decode_text(stage1["args"]["test_string"])
        self.assertRegex(challenge, r"^[A-Za-z0-9]{40}$")
        answer = crypto.sign_challenge(private_key("alice"), challenge)
        stage2 = yield client.call("rpc", "auth_ssl", {"encrypted_string": answer})
        self.assertEqual(stage2["name"], "response")
        self.assertEqual(self.running.server.tokens.check(stage2["args"][0]).key_checksum, md5_of("alice"))

        # The exchange key is static: the same PEM every time, kept in the state dir.
        again = yield client.call("rpc", "auth_ssl", {"md5_key": md5_of("bob")})
        self.assertEqual(b64decode_text(again["args"]["new_ssl_key"]), server_pem)
        state_dir = self.running.config.state_dir
        with open(os.path.join(state_dir, "enc_pub.pem")) as f:
            self.assertEqual(f.read(), server_pem)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(state_dir, "enc.key")).st_mode), 0o600)

    @defer.inlineCallbacks
    def test_md5_key_variant_accepts_only_that_key(self):
        register(self.running, "root", "alice")
        register(self.running, "root", "bob")
        client = yield open_client(self, self.running)
        stage1 = yield client.call("rpc", "auth_ssl", {"md5_key": md5_of("alice")})
        challenge = b64decode_text(stage1["args"]["test_string"])
        # bob is registered too, but the challenge was issued for alice's key.
        reply = yield client.call("rpc", "auth_ssl", {"encrypted_string": crypto.sign_challenge(private_key("bob"), challenge)})
        self.assertEqual(error_code(reply), "401")
        self.assertIn("the key named by its checksum", reply["args"]["detail"])

    @defer.inlineCallbacks
    def test_unknown_md5_key_gets_a_challenge_and_fails_only_at_stage_two(self):
        # Stage 1 must not tell whether a checksum is registered (issue 7, item 17).
        register(self.running, "root", "alice")
        client = yield open_client(self, self.running)
        known = yield client.call("rpc", "auth_ssl", {"md5_key": md5_of("alice")})
        unknown = yield client.call("rpc", "auth_ssl", {"md5_key": md5_of("mallory")})
        self.assertEqual((known["name"], unknown["name"]), ("response", "response"))
        self.assertEqual(sorted(unknown["args"]), sorted(known["args"]))
        self.assertEqual(unknown["args"]["new_ssl_key"], known["args"]["new_ssl_key"])
        self.assertEqual(len(b64decode_text(unknown["args"]["test_string"])), 40)
        challenge = b64decode_text(unknown["args"]["test_string"])
        reply = yield client.call("rpc", "auth_ssl", {"encrypted_string": crypto.sign_challenge(private_key("mallory"), challenge)})
        self.assertEqual(error_code(reply), "401")
        # The same words as a known key with a wrong signature.
        yield client.call("rpc", "auth_ssl", {"md5_key": md5_of("alice")})
        wrong = yield client.call("rpc", "auth_ssl", {"encrypted_string": crypto.sign_challenge(private_key("mallory"), challenge)})
        self.assertEqual(wrong["args"], reply["args"])
        # Malformed checksums are refused (this says nothing about registered keys).
        for bad in (42, "", "bm9wZQ==", "x" * 5000):
            reply = yield client.call("rpc", "auth_ssl", {"md5_key": bad})
            self.assertEqual(error_code(reply), "401")
            self.assertIn("md5_key must be a key checksum", reply["args"]["detail"])

    @defer.inlineCallbacks
    def test_limited_user_gets_limited_rights(self):
        register(self.running, LIMITED_USER, "carol")
        client = yield open_client(self, self.running)
        reply = yield key_login(client, "carol")
        identity = self.running.server.tokens.check(reply["args"][0])
        self.assertEqual((identity.user, identity.full_access), (LIMITED_USER, False))
        query = yield client.call("rpc", "query", {})
        self.assertEqual(query["args"]["rpc/settings"], "read/write")

    @defer.inlineCallbacks
    def test_user_without_rights_is_refused(self):
        register(self.running, NO_RIGHTS_USER, "dave")
        client = yield open_client(self, self.running)
        reply = yield key_login(client, "dave")
        self.assertEqual(error_code(reply), "401")
        self.assertIn(f"user {NO_RIGHTS_USER} has no access rights", reply["args"]["detail"])

    @defer.inlineCallbacks
    def test_garbage_answers_are_401_not_500(self):
        register(self.running, "root", "alice")
        client = yield open_client(self, self.running)
        for answer in ("", "!!!not base64!!!", 17, None, "QUJD"):
            yield client.call("rpc", "auth_ssl", "")
            reply = yield client.call("rpc", "auth_ssl", {"encrypted_string": answer})
            self.assertEqual(error_code(reply), "401", answer)
            self.assertTrue(reply["args"]["detail"], answer)


class ChallengeExpiry(unittest.TestCase):
    """The challenge's time to live, on a Clock."""

    def setUp(self):
        self.server, self.clock = clock_server(self, CHALLENGE_TTL=30)
        self.key = register(self, "root", "alice")  # clock_server set self.keys

    def session(self, peer="192.0.2.7"):
        return self.server.open_session("wss", peer, RecordingChannel(), timers=False)

    def answer(self, session):
        challenge = call(self.server, session, "auth_ssl", "")["args"]["test_string"]
        return crypto.sign_challenge(private_key("alice"), challenge)

    @defer.inlineCallbacks
    def test_answer_within_ttl_succeeds(self):
        session = self.session()
        answer = self.answer(session)
        self.clock.advance(29.5)
        reply = yield call_async(self.server, session, "auth_ssl", {"encrypted_string": answer})
        self.assertEqual(reply["name"], "response")
        self.assertEqual(session.identity.user, "root")

    def test_expired_challenge_is_refused_and_counted(self):
        session = self.session()
        answer = self.answer(session)
        self.clock.advance(30)
        reply = call(self.server, session, "auth_ssl", {"encrypted_string": answer})
        self.assertEqual(error_code(reply), "401")
        self.assertIn("the challenge expired (answer within 30 s)", reply["args"]["detail"])
        self.assertIsNone(session.identity)
        row = self.server.db.execute("SELECT count FROM auth_failures WHERE address = ?", ("192.0.2.7",)).fetchone()
        self.assertEqual(row["count"], 1)

    @defer.inlineCallbacks
    def test_new_stage_one_replaces_the_old_challenge(self):
        session = self.session()
        old = self.answer(session)
        self.answer(session)
        reply = yield call_async(self.server, session, "auth_ssl", {"encrypted_string": old})
        self.assertEqual(error_code(reply), "401")

    @defer.inlineCallbacks
    def test_success_clears_the_failure_count(self):
        session = self.session()
        call(self.server, session, "auth_ssl", {"encrypted_string": "QUJD"})
        answer = self.answer(session)
        reply = yield call_async(self.server, session, "auth_ssl", {"encrypted_string": answer})
        self.assertEqual(reply["name"], "response")
        self.assertIsNone(self.server.db.execute("SELECT count FROM auth_failures").fetchone())

    @defer.inlineCallbacks
    def test_login_log_names_the_method(self):
        session = self.session()
        answer = self.answer(session)
        yield call_async(self.server, session, "auth_ssl", {"encrypted_string": answer})
        entries = [e for _, _, e in self.server.logs.read(["hostinfo"], 0, 1e12)]
        self.assertTrue(any(re.search(r"User Login Attempt: root\s+Success: true.*Method: key", e) for e in entries), entries)


class UntrustedAnswers(unittest.TestCase):
    """Whatever a peer sends to auth_ssl, the reply is a response or a 401, never a 500."""

    def setUp(self):
        self.server, self.clock = clock_server(self)
        register(self, "root", "alice")

    @hypothesis.settings(max_examples=60, deadline=None)
    @hypothesis.given(args=JSON_VALUES)
    def test_any_args(self, args):
        session = self.server.open_session("wss", "198.51.100.1", RecordingChannel(), timers=False)
        call(self.server, session, "auth_ssl", "")
        reply = call(self.server, session, "auth_ssl", args)
        if reply["name"] == "error":
            self.assertEqual(reply["args"]["code"], "401", reply)
        self.assertIsNone(session.identity)
