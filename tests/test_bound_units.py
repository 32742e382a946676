"""Units of the bound bridged login (sysadmd/wire/bound.py) and the known_servers store."""

import base64
import os
import stat

from twisted.trial import unittest

from sysadmd.runtime import crypto
from sysadmd.auth import boundlogin
from sysadmd.wire import bound
from sysadmd.client.errors import ClientError
from sysadmd.client.knownservers import KnownServers
from tests.keys_support import private_key
from tests.support import short_tempdir

SERVER_ID = "::{aaaaaaaa-0000-4000-8000-000000000001}"
OTHER_ID = "::{bbbbbbbb-0000-4000-8000-000000000002}"


class ProofTests(unittest.TestCase):
    def setUp(self):
        self.server = private_key("bound-server")
        self.client = private_key("bound-client")
        self.nonce = bound.new_nonce()
        self.md5 = crypto.md5_checksum(crypto.public_pem(self.client))
        self.challenge = "Ab3" * 13 + "x"

    def reply(self, **changes):
        args = {"test_string": base64.b64encode(self.challenge.encode()).decode()}
        args.update(bound.server_proof(self.server, self.nonce, self.challenge, self.md5, SERVER_ID))
        args.update(changes)
        return args

    def test_valid_proof_gives_the_key_fingerprint(self):
        public, fp = bound.check_server_proof(self.reply(), self.nonce, self.challenge, self.md5, SERVER_ID)
        self.assertEqual(fp, bound.fingerprint(self.server))
        self.assertEqual(fp, bound.fingerprint(public))
        self.assertRegex(bound.display_fingerprint(fp), r"^SHA256:[A-Za-z0-9+/]{43}$")
        self.assertEqual(len(self.nonce), 64)
        self.assertTrue(bound.valid_nonce(self.nonce))
        for bad in (None, "", "ab", self.nonce.upper(), self.nonce + "0", "g" * 64):
            self.assertFalse(bound.valid_nonce(bad), bad)

    def test_every_bound_field_matters(self):
        cases = [
            ("another nonce", dict(nonce=bound.new_nonce())),
            ("another challenge", dict(challenge="Z" * 40)),
            ("another md5_key", dict(md5=crypto.md5_checksum(crypto.public_pem(self.server)))),
        ]
        for what, change in cases:
            args = dict(nonce=self.nonce, challenge=self.challenge, md5=self.md5)
            args.update(change)
            with self.assertRaises(bound.ProofError, msg=what):
                bound.check_server_proof(self.reply(), args["nonce"], args["challenge"], args["md5"], SERVER_ID)
        # A proof relayed from another connection names that connection: refused.
        with self.assertRaises(bound.ProofError) as caught:
            bound.check_server_proof(self.reply(), self.nonce, self.challenge, self.md5, OTHER_ID)
        self.assertIn("relaying", str(caught.exception))
        # Claiming our ID while the signature covers the real one does not verify.
        with self.assertRaises(bound.ProofError):
            bound.check_server_proof(self.reply(server_connection_id=OTHER_ID), self.nonce, self.challenge, self.md5, OTHER_ID)
        # Someone else's key with the real server's proof.
        with self.assertRaises(bound.ProofError):
            bound.check_server_proof(self.reply(server_key=crypto.public_pem(self.client)), self.nonce, self.challenge,
                                     self.md5, SERVER_ID)

    def test_missing_and_malformed_proofs(self):
        with self.assertRaises(bound.ProofError) as caught:
            bound.check_server_proof({"test_string": "x", "new_ssl_key": "y"}, self.nonce, self.challenge, self.md5, SERVER_ID)
        self.assertTrue(caught.exception.missing)
        for changes in ({"server_key": 5}, {"server_key": "x" * 5000}, {"server_proof": ""}, {"server_proof": "!!"},
                        {"server_key": "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n"},
                        {"server_connection_id": 7}):
            with self.assertRaises(bound.ProofError, msg=repr(changes)):
                bound.check_server_proof(self.reply(**changes), self.nonce, self.challenge, self.md5, SERVER_ID)
        # A server whose bridge does not tell connection IDs proves its key only.
        unbound = bound.server_proof(self.server, self.nonce, self.challenge, self.md5, "")
        with self.assertRaises(bound.ProofError) as caught:
            bound.check_server_proof(unbound, self.nonce, self.challenge, self.md5, SERVER_ID)
        self.assertTrue(caught.exception.unbound_channel)
        self.assertEqual(caught.exception.fingerprint, bound.fingerprint(self.server))

    def test_bound_login_signature(self):
        fp = bound.fingerprint(self.server)
        public = self.client.public_key()
        signature = bound.sign_bound_login(self.client, fp, SERVER_ID, self.challenge)
        self.assertTrue(bound.verify_bound_login(public, signature, fp, SERVER_ID, self.challenge))
        self.assertFalse(bound.verify_bound_login(public, signature, bound.fingerprint(self.client), SERVER_ID, self.challenge))
        self.assertFalse(bound.verify_bound_login(public, signature, fp, OTHER_ID, self.challenge))
        self.assertFalse(bound.verify_bound_login(public, signature, fp, SERVER_ID, "Q" * 40))
        self.assertFalse(bound.verify_bound_login(public, "A" * 5000, fp, SERVER_ID, self.challenge))
        self.assertFalse(bound.verify_bound_login(public, None, fp, SERVER_ID, self.challenge))
        # Neither form passes for the other: a raw upstream signature of T is not a bound
        # login, and a bound login does not recover to T.
        raw = crypto.sign_challenge(self.client, self.challenge)
        self.assertFalse(bound.verify_bound_login(public, raw, fp, SERVER_ID, self.challenge))
        self.assertNotEqual(crypto.recover_signed(public, signature), self.challenge.encode())


class KnownServersTests(unittest.TestCase):
    def setUp(self):
        self.path = os.path.join(short_tempdir(self, "ks"), "cfg", "sysadm", "known_servers")
        self.store = KnownServers(self.path)
        self.fp1 = bound.fingerprint(private_key("bound-server"))
        self.fp2 = bound.fingerprint(private_key("bound-client"))

    def test_pin_lookup_forget(self):
        self.assertEqual(self.store.entries(), [])
        entry = self.store.pin("nas.lan", self.fp1)
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(self.path)).st_mode), 0o700)
        self.assertRegex(entry.first_seen, r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
        self.store.pin("backup", self.fp2)
        self.assertEqual(self.store.by_name("nas.lan").fingerprint, self.fp1)
        self.assertEqual([e.name for e in self.store.by_fingerprint(self.fp2)], ["backup"])
        # by name, hex prefix (8+ digits, colons allowed) or SHA256: prefix
        self.assertEqual([e.name for e in self.store.matching("nas.lan")], ["nas.lan"])
        self.assertEqual([e.name for e in self.store.matching(self.fp2[:10])], ["backup"])
        colons = ":".join(self.fp1[i:i + 2] for i in range(0, 16, 2))
        self.assertEqual([e.name for e in self.store.matching(colons.upper())], ["nas.lan"])
        self.assertEqual([e.name for e in self.store.matching(bound.display_fingerprint(self.fp1)[:14])], ["nas.lan"])
        self.assertEqual(self.store.matching(self.fp1[:4]), [])  # too short to mean anything
        # a name holds one key: pinning again replaces
        self.store.pin("nas.lan", self.fp2)
        self.assertEqual(self.store.by_name("nas.lan").fingerprint, self.fp2)
        self.assertEqual(len(self.store.entries()), 2)
        self.assertTrue(self.store.forget("nas.lan"))
        self.assertFalse(self.store.forget("nas.lan"))
        self.assertEqual([e.name for e in KnownServers(self.path).entries()], ["backup"])

    def test_names_that_cannot_be_stored_are_refused(self):
        for bad in ("", "two words", "line\nbreak", "x" * 254, "tab\there", "é"):
            with self.assertRaises(ClientError, msg=repr(bad)):
                self.store.pin(bad, self.fp1)
        self.assertEqual(self.store.entries(), [])

    def test_foreign_lines_are_ignored(self):
        os.makedirs(os.path.dirname(self.path))
        with open(self.path, "w") as f:
            f.write("# comment\ngarbage\nname nothex 2020\nok " + self.fp1 + " 2026-01-01T00:00:00Z\n")
        self.assertEqual([e.name for e in self.store.entries()], ["ok"])


class Stage2PolicyTests(unittest.TestCase):
    """Which stage 2 a server accepts (sysadmd.auth.boundlogin.Stage2)."""

    def make(self, kind="bridge", upstream_ok=True, **attributes):
        from types import SimpleNamespace

        server = SimpleNamespace(config=SimpleNamespace(bridge_upstream_clients=upstream_ok),
                                 bridge_identity=private_key("bound-server"))
        session = SimpleNamespace(kind=kind, attributes=dict(attributes))
        return server, session

    def test_policy(self):
        server, session = self.make()
        self.assertIsNone(boundlogin.Stage2(server, session, {"encrypted_string": "x"}).refused)  # upstream client
        server, session = self.make(upstream_ok=False)
        self.assertIn("BRIDGE_UPSTREAM_CLIENTS=false", boundlogin.Stage2(server, session, {"encrypted_string": "x"}).refused)
        server, session = self.make(kind="wss", upstream_ok=False)  # direct connections are not affected
        self.assertIsNone(boundlogin.Stage2(server, session, {"encrypted_string": "x"}).refused)
        server, session = self.make(**{boundlogin.BOUND_REQUIRED: True, boundlogin.SERVER_CONNECTION_ID: SERVER_ID})
        self.assertIn("client_nonce", boundlogin.Stage2(server, session, {"encrypted_string": "x"}).refused)
        mode = boundlogin.Stage2(server, session, {"encrypted_string": "x", "bound": 1})
        self.assertIsNone(mode.refused)
        self.assertEqual((mode.server_fp, mode.connection_id), (bound.fingerprint(private_key("bound-server")), SERVER_ID))
        server, session = self.make()
        self.assertIn("needs a stage 1", boundlogin.Stage2(server, session, {"encrypted_string": "x", "bound": 1}).refused)

    def test_matcher_and_verify(self):
        from types import SimpleNamespace

        server, session = self.make(**{boundlogin.BOUND_REQUIRED: True, boundlogin.SERVER_CONNECTION_ID: SERVER_ID})
        mode = boundlogin.Stage2(server, session, {"encrypted_string": "x", "bound": 1})
        client = private_key("bound-client")
        md5 = crypto.md5_checksum(crypto.public_pem(client))
        challenge = SimpleNamespace(text="C" * 40, md5_key=md5)
        registered = SimpleNamespace(pem=crypto.public_pem(client), md5=md5)
        keys = SimpleNamespace(find_by_md5=lambda m: registered if m == md5 else None)
        good = bound.sign_bound_login(client, mode.server_fp, SERVER_ID, challenge.text)
        self.assertIs(mode.verify(keys, challenge, good), registered)
        self.assertTrue(mode.matcher(challenge)(client.public_key(), base64.b64decode(good)))
        for bad in (bound.sign_bound_login(client, mode.server_fp, OTHER_ID, challenge.text),
                    bound.sign_bound_login(client, "0" * 64, SERVER_ID, challenge.text),
                    crypto.sign_challenge(client, challenge.text), "not base64!", "A" * 3000):
            self.assertIsNone(mode.verify(keys, challenge, bad))
        self.assertIsNone(mode.verify(keys, SimpleNamespace(text=challenge.text, md5_key=None), good))
