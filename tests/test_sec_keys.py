"""Issue 7 items 6 and 17, issue 8 item 3: poison keys, key logins off the reactor thread,
no probing of registered checksums, and re-registering a key like upstream.

The attack of item 6: a limited user registered 500 keys with random moduli and
~3,070-bit public exponents, then one anonymous ``auth_ssl`` answer froze the daemon for
seconds because every key was tried on the reactor thread.  Keys outside RSA 2048-4096
bits with e = 65537 are now refused when registered (and skipped if an older database
has them), a user may have ``MAX_KEYS_PER_USER`` keys, a login checks the key the client
names or a bounded number of keys, and always in a thread pool.
"""

import base64
import io
import os
import secrets
import threading
import time

from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.internet import defer, reactor, task
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from sysadmd.runtime import crypto
from sysadmd.admin import main as admin_main
from sysadmd.auth.keys import CheckerBusy, RegisteredKey, SignatureChecker, raw_signature_of
from tests.keys_support import b64decode_text, error_code, key_login, md5_of, pem_of, private_key, register, stored_of
from tests.support import FakePasswords, make_config, open_client, short_tempdir, start_daemon

LIMITED_USER = "daemon"  # made a limited user through LIMITED_ACCESS_GROUPS below
RULE = "2048 to 4096 bits with public exponent 65537"


def random_public_pem(bits: int, exponent: int = 65537) -> str:
    """A public key with a random odd modulus of *bits* bits: nobody holds its private
    half, but it parses like any key (what the attacker registered, cheaply)."""
    n = secrets.randbits(bits) | (1 << (bits - 1)) | 1
    return crypto.public_pem(rsa.RSAPublicNumbers(exponent, n).public_key())


def poison_pem() -> str:
    """The attack's key: a 3,072-bit random modulus (OpenSSL refuses huge exponents only
    above 3,072 bits) with a ~3,070-bit public exponent: each check costs milliseconds."""
    return random_public_pem(3072, secrets.randbits(3070) | (1 << 3069) | 1)


def answer_for_3072_bits() -> str:
    """A random answer as long as a 3,072-bit key's signature (and below its modulus)."""
    return base64.b64encode(b"\0" + os.urandom(383)).decode()


def insert_raw_key(db, user: str, pem: str, nickname: str) -> str:
    """Store a key the way an older daemon (without the rules) would have; returns its md5."""
    md5 = crypto.md5_checksum(pem)
    db.execute("INSERT INTO registered_keys (user, pub_key, pem, md5, nickname, email, registered) VALUES (?, ?, ?, ?, ?, ?, ?)",
               (user, crypto.stored_form(pem), pem, md5, nickname, "", time.time()))
    return md5


def capture_log(testcase) -> list:
    lines: list = []

    def observer(event):
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observer)
    testcase.addCleanup(globalLogPublisher.removeObserver, observer)
    return lines


def wait_for(predicate, timeout: float = 10.0, what: str = "a condition"):
    @defer.inlineCallbacks
    def poll():
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            yield task.deferLater(reactor, 0.01, lambda: None)

    return poll()


class KeyDaemonCase(unittest.TestCase):
    timeout = 60
    overrides: dict = {}

    @defer.inlineCallbacks
    def setUp(self):
        cfg = make_config(short_tempdir(self), LIMITED_ACCESS_GROUPS=LIMITED_USER, **self.overrides)
        self.running = yield start_daemon(self, cfg, passwords=FakePasswords({"root": "pw", LIMITED_USER: "pw2"}))
        self.server = self.running.server
        self.keys = self.running.daemon.keys

    @defer.inlineCallbacks
    def login(self, user="root"):
        client = yield open_client(self, self.running)
        reply = yield client.call("rpc", "auth", {"username": user, "password": "pw" if user == "root" else "pw2"})
        self.assertEqual(reply["name"], "response", reply)
        return client

    def register_call(self, client, pem: str, nickname: str = "k", email: str = ""):
        return client.call("rpc", "settings", {"action": "register_ssl_cert", "pub_key": crypto.stored_form(pem),
                                               "nickname": nickname, "email": email})

    def key_count(self, user=None) -> int:
        return len(self.keys.list(user))


class PoisonKeysAreRefused(KeyDaemonCase):
    overrides = {"MAX_KEYS_PER_USER": 4}

    @defer.inlineCallbacks
    def test_keys_outside_the_rule_are_refused_naming_it(self):
        client = yield self.login(LIMITED_USER)
        cases = [
            (random_public_pem(1024), "an RSA key of 1024 bits is refused"),
            (random_public_pem(8192), "an RSA key of 8192 bits is refused"),
            (random_public_pem(2048, 3), "public exponent 3 is refused"),
            (poison_pem(), "public exponent a 3070-bit number is refused"),
        ]
        for pem, detail in cases:
            reply = yield self.register_call(client, pem)
            self.assertEqual(error_code(reply), "400", detail)
            self.assertIn(detail, reply["args"]["detail"])
            self.assertIn(RULE, reply["args"]["detail"])
            self.assertIn("pub_key", reply["args"]["detail"])
        self.assertEqual(self.key_count(), 0)

    @defer.inlineCallbacks
    def test_500_key_flood_is_stopped_by_the_rule_and_the_cap(self):
        # The attack, replayed: 500 registrations pipelined on one connection, half of
        # them poison keys, half keys of an accepted shape.
        client = yield self.login(LIMITED_USER)
        pems = [poison_pem() if i % 2 else random_public_pem(2048) for i in range(500)]
        replies = yield defer.gatherResults([self.register_call(client, pem, f"k{i}") for i, pem in enumerate(pems)])
        accepted = [r for r in replies if r["name"] == "response"]
        by_rule = [r for r in replies if r["name"] == "error" and RULE in r["args"]["detail"]]
        by_cap = [r for r in replies if r["name"] == "error" and "MAX_KEYS_PER_USER=4" in r["args"]["detail"]]
        self.assertEqual((len(accepted), len(by_rule), len(by_cap)), (4, 250, 246))
        self.assertIn(f"user {LIMITED_USER} already has 4 registered keys", by_cap[0]["args"]["detail"])
        self.assertEqual({r["args"]["code"] for r in by_rule + by_cap}, {"400"})
        self.assertEqual(self.key_count(LIMITED_USER), 4)

        # Re-registering one of the own keys at the cap is an update, not a fifth key.
        again = yield self.register_call(client, pems[0], "renamed")
        self.assertEqual(again["args"], {})
        self.assertEqual(self.key_count(LIMITED_USER), 4)
        # The cap is per user: root still registers.
        root = yield self.login()
        reply = yield self.register_call(root, pem_of("alice"))
        self.assertEqual(reply["args"], {})

        # An anonymous answer is checked against the few stored keys, quickly.
        anon = yield open_client(self, self.running)
        yield anon.call("rpc", "auth_ssl", "")
        started = time.monotonic()
        reply = yield anon.call("rpc", "auth_ssl", {"encrypted_string": base64.b64encode(os.urandom(256)).decode()})
        self.assertEqual(error_code(reply), "401")
        self.assertLess(time.monotonic() - started, 2.0)

    @defer.inlineCallbacks
    def test_admin_command_refuses_poison_keys(self):
        state = self.running.config.state_dir
        directory = short_tempdir(self, "kf")
        for name, pem in (("small.pub", random_public_pem(1024)), ("poison.pub", poison_pem())):
            path = os.path.join(directory, name)
            with open(path, "w") as f:
                f.write(pem)
            out, err = io.StringIO(), io.StringIO()
            code = yield defer.maybeDeferred(admin_main.main, ["--state-dir", state, "import_ssl_file", "root", path, "n"], out, err)
            self.assertEqual(code, 1, out.getvalue())
            self.assertIn(f"{path}: an RSA key", err.getvalue())
            self.assertIn(RULE, err.getvalue())
        self.assertEqual(self.key_count(), 0)


class RegisteringTwice(KeyDaemonCase):
    """Issue 8 item 3: upstream's Qt GUI re-sends its key on every connection set-up."""

    @defer.inlineCallbacks
    def test_same_key_same_user_replaces_another_user_gets_409(self):
        root = yield self.login()
        first = yield root.call("rpc", "settings", {"action": "register_ssl_cert", "pub_key": stored_of("alice"),
                                                    "nickname": "laptop", "email": "a@example.org"})
        self.assertEqual(first["args"], {})
        again = yield root.call("rpc", "settings", {"action": "register_ssl_cert", "pub_key": stored_of("alice"),
                                                    "nickname": "new laptop", "email": "b@example.org"}, request_id="r2")
        self.assertEqual(again, {"args": {}, "id": "r2", "name": "response", "namespace": "rpc"})
        listed = yield root.call("rpc", "settings", {"action": "list_ssl_certs"})
        self.assertEqual(list(listed["args"]["root"]), [stored_of("alice")])
        self.assertTrue(listed["args"]["root"][stored_of("alice")].startswith("Nickname: new laptop\nEmail: b@example.org\n"))

        limited = yield self.login(LIMITED_USER)
        taken = yield limited.call("rpc", "settings", {"action": "register_ssl_cert", "pub_key": stored_of("alice"),
                                                       "nickname": "mine"})
        self.assertEqual(error_code(taken), "409")
        self.assertEqual(taken["args"]["message"], "Conflict")
        self.assertIn("already registered for user root (new laptop)", taken["args"]["detail"])
        self.assertEqual([(k.user, k.nickname) for k in self.keys.list()], [("root", "new laptop")])
        # The key still logs in as root, and nothing was logged in for the limited user.
        other = yield open_client(self, self.running)
        reply = yield key_login(other, "alice")
        self.assertEqual(self.server.tokens.check(reply["args"][0]).user, "root")

    @defer.inlineCallbacks
    def test_revoke_accepts_any_encoding_of_the_key(self):
        root = yield self.login()
        yield root.call("rpc", "settings", {"action": "register_ssl_cert", "pub_key": stored_of("alice"), "nickname": "n"})
        other_form = crypto.stored_form(pem_of("alice").replace("\n", "\r\n"))
        self.assertNotEqual(other_form, stored_of("alice"))
        again = yield root.call("rpc", "settings", {"action": "register_ssl_cert", "pub_key": other_form, "nickname": "m"})
        self.assertEqual(again["args"], {})
        self.assertEqual(self.key_count(), 1)
        revoked = yield root.call("rpc", "settings", {"action": "revoke_ssl_cert", "pub_key": other_form})
        self.assertEqual(revoked["args"], {})
        self.assertEqual(self.key_count(), 0)


class NoProbingOfChecksums(KeyDaemonCase):
    """Issue 7 item 17: stage 1 answers alike for registered and unknown checksums."""

    @defer.inlineCallbacks
    def test_direct_stage_one_may_name_the_key(self):
        register(self.running, "root", "alice")
        register(self.running, "root", "bob")
        client = yield open_client(self, self.running)
        stage1 = yield client.call("rpc", "auth_ssl", {"checksum": md5_of("alice")})
        self.assertEqual(list(stage1["args"]), ["test_string"])
        challenge = stage1["args"]["test_string"]
        self.assertRegex(challenge, r"^[A-Za-z0-9]{40}$")
        # bob is registered, but the challenge was issued for alice's key only.
        wrong = yield client.call("rpc", "auth_ssl", {"encrypted_string": crypto.sign_challenge(private_key("bob"), challenge)})
        self.assertEqual(error_code(wrong), "401")
        self.assertIn("does not match the key named by its checksum", wrong["args"]["detail"])
        stage1 = yield client.call("rpc", "auth_ssl", {"checksum": md5_of("alice")})
        reply = yield client.call("rpc", "auth_ssl", {"encrypted_string": crypto.sign_challenge(private_key("alice"), stage1["args"]["test_string"])})
        self.assertEqual(reply["name"], "response", reply)
        self.assertEqual(self.server.tokens.check(reply["args"][0]).key_checksum, md5_of("alice"))

    @defer.inlineCallbacks
    def test_unknown_checksums_look_like_known_ones_until_stage_two(self):
        register(self.running, "root", "alice")
        client = yield open_client(self, self.running)
        for field in ("checksum", "md5_key"):
            known = yield client.call("rpc", "auth_ssl", {field: md5_of("alice")})
            unknown = yield client.call("rpc", "auth_ssl", {field: md5_of("mallory")})
            self.assertEqual((known["name"], unknown["name"]), ("response", "response"), field)
            self.assertEqual(sorted(known["args"]), sorted(unknown["args"]), field)
            self.assertEqual(len(known["args"]["test_string"]), len(unknown["args"]["test_string"]))
            if field == "md5_key":  # the decoy key is the same static key for every checksum
                self.assertEqual(known["args"]["new_ssl_key"], unknown["args"]["new_ssl_key"])
            text = unknown["args"]["test_string"]
            challenge = b64decode_text(text) if field == "md5_key" else text
            failed = yield client.call("rpc", "auth_ssl", {"encrypted_string": crypto.sign_challenge(private_key("mallory"), challenge)})
            self.assertEqual(error_code(failed), "401")
            self.assertEqual(failed["args"]["detail"], "the signature does not match the key named by its checksum")
        bad = yield client.call("rpc", "auth_ssl", {"checksum": "not a checksum"})
        self.assertEqual(error_code(bad), "401")
        self.assertIn("checksum must be a key checksum", bad["args"]["detail"])

    @defer.inlineCallbacks
    def test_limited_users_list_only_their_own_checksums(self):
        register(self.running, "root", "alice")
        register(self.running, LIMITED_USER, "carol")
        limited = yield self.login(LIMITED_USER)
        sums = yield limited.call("rpc", "settings", {"action": "list_ssl_checksums"})
        self.assertEqual(sums["args"], {"md5_keys": [md5_of("carol")]})
        root = yield self.login()
        sums = yield root.call("rpc", "settings", {"action": "list_ssl_checksums"})
        self.assertEqual(sorted(sums["args"]["md5_keys"]), sorted([md5_of("alice"), md5_of("carol")]))
        # A bridge link reports every checksum (sysadmd.bridgelink.link asks the key
        # store directly, not this action).
        self.assertEqual(sorted(self.keys.checksums()["md5_keys"]), sorted([md5_of("alice"), md5_of("carol")]))


class VerificationOffTheReactor(KeyDaemonCase):
    overrides = {"KEY_LOGIN_MAX_TRIED": 6}

    def block_checks(self):
        """Make the key checks wait for a release; returns (entered, release, threads)."""
        login = self.running.daemon.key_login
        original = login.signature_matcher
        entered, release = threading.Event(), threading.Event()
        threads: list = []
        self.addCleanup(release.set)  # never leave a pool thread blocked

        def blocking_matcher(session, challenge, mode=None):
            inner = original(session, challenge, mode)

            def matches(public, signature):
                threads.append(threading.current_thread())
                entered.set()
                release.wait(20)
                return inner(public, signature)

            return matches

        login.signature_matcher = blocking_matcher
        self.addCleanup(setattr, login, "signature_matcher", original)
        return entered, release, threads

    @defer.inlineCallbacks
    def test_reactor_answers_others_while_a_signature_is_checked(self):
        register(self.running, "root", "alice")
        entered, release, threads = self.block_checks()
        client = yield open_client(self, self.running)
        stage1 = yield client.call("rpc", "auth_ssl", "")
        answer = crypto.sign_challenge(private_key("alice"), stage1["args"]["test_string"])
        pending = client.call("rpc", "auth_ssl", {"encrypted_string": answer})
        yield wait_for(entered.is_set, what="the check to start")
        # The check is stuck in its thread; another client is served meanwhile.
        other = yield open_client(self, self.running)
        started = time.monotonic()
        identify = yield other.call("rpc", "identify", "")
        self.assertEqual(identify["name"], "response")
        self.assertLess(time.monotonic() - started, 5)
        self.assertFalse(pending.called)
        release.set()
        reply = yield pending
        self.assertEqual(reply["name"], "response", reply)
        self.assertTrue(threads)
        self.assertTrue(all(t is not threading.main_thread() for t in threads), threads)
        self.assertTrue(all("sysadmd-key-checks" in t.name for t in threads), threads)

    @defer.inlineCallbacks
    def test_key_revoked_while_its_signature_is_checked_does_not_log_in(self):
        register(self.running, "root", "alice")
        entered, release, _ = self.block_checks()
        client = yield open_client(self, self.running)
        stage1 = yield client.call("rpc", "auth_ssl", "")
        answer = crypto.sign_challenge(private_key("alice"), stage1["args"]["test_string"])
        pending = client.call("rpc", "auth_ssl", {"encrypted_string": answer})
        yield wait_for(entered.is_set, what="the check to start")
        self.assertIsNotNone(self.keys.revoke("root", stored_of("alice")))
        release.set()
        reply = yield pending
        self.assertEqual(error_code(reply), "401")
        self.assertEqual(len(self.server.tokens), 0)

    @defer.inlineCallbacks
    def test_old_poison_rows_are_skipped_with_one_warning_and_tries_are_bounded(self):
        lines = capture_log(self)
        db = self.server.db
        poison = [insert_raw_key(db, "root", poison_pem(), f"p{i}") for i in range(3)]
        insert_raw_key(db, "root", random_public_pem(1024), "small")
        for i in range(5):
            insert_raw_key(db, "root", random_public_pem(2048), f"shape{i}")
        register(self.running, "root", "alice")  # the newest key: beyond KEY_LOGIN_MAX_TRIED=6
        checker = self.running.daemon.key_login.checker
        results = []
        original = checker.find_signer

        def recording(*args, **kwargs):
            return original(*args, **kwargs).addCallback(lambda r: results.append(r) or r)

        checker.find_signer = recording
        self.addCleanup(setattr, checker, "find_signer", original)

        client = yield open_client(self, self.running)
        reply = yield key_login(client, "alice")
        self.assertEqual(error_code(reply), "401")
        self.assertEqual(results[-1].tried, 2)  # 6 oldest: 3 poison and the 1024-bit one skipped
        self.assertEqual(len(results[-1].skipped), 4)
        self.assertTrue(any("10 keys are registered" in line and "KEY_LOGIN_MAX_TRIED" in line for line in lines), lines)
        skipped_lines = [line for line in lines if "cannot log in and are skipped" in line]
        self.assertEqual(len(skipped_lines), 1, skipped_lines)
        for md5 in poison:
            self.assertIn(md5, skipped_lines[0])
        self.assertIn("public exponent a 3070-bit number", skipped_lines[0])

        # Naming the key checks that key alone.
        stage1 = yield client.call("rpc", "auth_ssl", {"checksum": md5_of("alice")})
        answer = crypto.sign_challenge(private_key("alice"), stage1["args"]["test_string"])
        reply = yield client.call("rpc", "auth_ssl", {"encrypted_string": answer})
        self.assertEqual(reply["name"], "response", reply)
        self.assertEqual((results[-1].tried, results[-1].skipped), (1, ()))

        # The daemon kept going, and a second try does not warn again.
        again = yield open_client(self, self.running)
        yield key_login(again, "alice")
        self.assertEqual(len([line for line in lines if "cannot log in and are skipped" in line]), 1)

    @defer.inlineCallbacks
    def test_500_poison_rows_cost_no_reactor_time(self):
        # A database filled by the attack before the fix: an anonymous answer is refused
        # quickly, and the reactor is never busy with it.
        db = self.server.db
        pems = [poison_pem() for _ in range(500)]
        db.execute("BEGIN")
        for i, pem in enumerate(pems):
            insert_raw_key(db, LIMITED_USER, pem, f"p{i}")
        db.execute("COMMIT")
        self.server.config._values["KEY_LOGIN_MAX_TRIED"] = 1024
        lags = []

        def tick(last=[time.monotonic()]):
            now = time.monotonic()
            lags.append(now - last[0])
            last[0] = now

        loop = task.LoopingCall(tick)
        loop.start(0.01)
        self.addCleanup(lambda: loop.running and loop.stop())
        clients = []
        for _ in range(4):
            client = yield open_client(self, self.running)
            yield client.call("rpc", "auth_ssl", "")
            clients.append(client)
        lags.clear()
        started = time.monotonic()
        replies = yield defer.gatherResults([c.call("rpc", "auth_ssl", {"encrypted_string": answer_for_3072_bits()})
                                             for c in clients])
        elapsed = time.monotonic() - started
        loop.stop()
        self.assertEqual([error_code(r) for r in replies], ["401"] * 4)
        self.assertLess(elapsed, 3.0)
        self.assertLess(max(lags), 0.5, f"the reactor stalled {max(lags):.3f} s")


class CheckerBounds(unittest.TestCase):
    """The thread pool's queue is bounded: beyond it a check is refused at once."""

    @defer.inlineCallbacks
    def test_pending_checks_are_bounded(self):
        checker = SignatureChecker(reactor, threads=1, max_pending=2)
        checker.startService()
        self.addCleanup(checker.stopService)
        release = threading.Event()
        self.addCleanup(release.set)
        pem = pem_of("alice")
        key = RegisteredKey("root", crypto.stored_form(pem), pem, md5_of("alice"), "", "", 0.0)
        signature = crypto.sign_challenge(private_key("alice"), "x" * 40)
        message_matcher = raw_signature_of(b"x" * 40)

        def slow(public, sig):
            release.wait(20)
            return message_matcher(public, sig)

        first = checker.find_signer([key], signature, slow)
        second = checker.find_signer([key], signature, slow)
        third = checker.find_signer([key], signature, slow)
        self.assertEqual(checker.pending, 2)
        failure = self.failureResultOf(third, CheckerBusy)
        self.assertIn("2 key logins are being checked already", str(failure.value))
        release.set()
        results = yield defer.gatherResults([first, second])
        self.assertEqual([r.key for r in results], [key, key])
        self.assertEqual(checker.pending, 0)
        # Answers no permitted key could have given never reach a thread.
        for garbage in ("", "QUJD", "!" * 5000, crypto.stored_form("a") * 40):
            result = self.successResultOf(checker.find_signer([key], garbage, slow))
            self.assertEqual((result.key, result.tried), (None, 0))
        # A plausible answer with no candidate (an unknown checksum) takes the same path
        # through the pool as one with candidates, so its timing says nothing.
        nobody = checker.find_signer([], signature, slow)
        self.assertNoResult(nobody)
        result = yield nobody
        self.assertEqual((result.key, result.tried), (None, 0))

    @defer.inlineCallbacks
    def test_one_address_cannot_fill_the_queue(self):
        checker = SignatureChecker(reactor, threads=1, max_pending=10, max_pending_per_peer=2)
        checker.startService()
        self.addCleanup(checker.stopService)
        release = threading.Event()
        self.addCleanup(release.set)
        signature = crypto.sign_challenge(private_key("alice"), "x" * 40)

        def slow(public, sig):
            release.wait(20)
            return False

        pem = pem_of("alice")
        key = RegisteredKey("root", crypto.stored_form(pem), pem, md5_of("alice"), "", "", 0.0)
        mine = [checker.find_signer([key], signature, slow, peer="192.0.2.1") for _ in range(2)]
        refused = checker.find_signer([key], signature, slow, peer="192.0.2.1")
        self.assertIn("2 key logins from 192.0.2.1", str(self.failureResultOf(refused, CheckerBusy).value))
        other = checker.find_signer([key], signature, slow, peer="192.0.2.2")
        self.assertNoResult(other)
        release.set()
        yield defer.gatherResults(mine + [other])
        self.assertEqual((checker.pending, checker._by_peer), (0, {}))


class BridgeKeyRule(unittest.TestCase):
    """The bridge daemon's key store follows the same key rule as sysadmd's."""

    def test_bridge_refuses_poison_keys_and_never_checks_old_ones(self):
        from bridge.keys import KeyStoreError, open_keystore

        store = open_keystore(short_tempdir(self, "bk"))
        for pem, words in ((random_public_pem(1024), "1024 bits"), (poison_pem(), "public exponent")):
            with self.assertRaises(KeyStoreError) as caught:
                store.import_key("bad", pem, role="client")
            self.assertIn(words, str(caught.exception))
        self.assertEqual(store.all(), [])
        good = private_key("bridge-good")
        store.import_key("good", pem_of("bridge-good"), role="client")
        # A row written before the rule existed: present, listed, but never tried.
        poison = poison_pem()
        store.db.execute("INSERT INTO bridge_keys (nickname, pem, stored, md5, role, registered, pairs) "
                         "VALUES (?, ?, ?, ?, 'client', 0, '')",
                         ("old", poison, crypto.stored_form(poison), crypto.md5_checksum(poison)))
        tried = []
        original = crypto.recover_signed
        self.patch(crypto, "recover_signed", lambda public, sig: tried.append(public.key_size) or original(public, sig))
        challenge = "c" * 32
        key = store.verify(challenge, crypto.sign_challenge(good, challenge))
        self.assertEqual(key.nickname, "good")
        self.assertNotIn(3072, tried)
        self.assertIsNone(store.verify(challenge, answer_for_3072_bits()))
