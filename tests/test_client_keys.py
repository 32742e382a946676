"""Issue 8 item 14: ``sysadm --key`` reads PEM (PKCS#1), PKCS#8 and OpenSSH RSA private
keys, asks for the passphrase of encrypted ones (terminal, else $SYSADM_KEY_PASSPHRASE,
else a clear error), and warns when the key file is readable by others.

Real key files written by ``cryptography`` and, when installed, by ``ssh-keygen``; one
end-to-end login per kind of file through the real client against a real daemon.
"""

import pytest
import io
import os
import shutil
import subprocess

from cryptography.hazmat.primitives import serialization
from twisted.internet import defer
from twisted.trial import unittest

from sysadmd.runtime import crypto
from sysadmd.client import connect
from sysadmd.client.errors import EXIT_USAGE, ClientError
from tests.keys_support import pem_of, private_key, register
from tests.test_client_cli import CliTestCase, run_cli

PASSPHRASE = "correct horse"


def write_key(folder, name, key, fmt, passphrase=None, mode=0o600):
    encryption = (serialization.BestAvailableEncryption(passphrase.encode()) if passphrase
                  else serialization.NoEncryption())
    path = os.path.join(folder, name)
    with open(path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, fmt, encryption))
    os.chmod(path, mode)
    return path


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.slow  # real child processes (ssh-keygen)
class KeyFormats(unittest.TestCase):
    def setUp(self):
        self.folder = self.mktemp()
        os.makedirs(self.folder)
        self.key = private_key("formats")
        self.err = io.StringIO()

    def load(self, path, environ=None, stdin=None):
        return connect.load_key(path, stdin or io.StringIO(), self.err, environ or {})

    def assertSameKey(self, loaded):
        self.assertEqual(crypto.public_pem(loaded), crypto.public_pem(self.key))
        answer = crypto.sign_challenge(loaded, "challenge-text")
        self.assertEqual(crypto.recover_signed(self.key.public_key(), answer), b"challenge-text")

    def test_unencrypted_pkcs1_pkcs8_and_openssh(self):
        for name, fmt in (("pkcs1.pem", serialization.PrivateFormat.TraditionalOpenSSL),
                          ("pkcs8.pem", serialization.PrivateFormat.PKCS8),
                          ("openssh", serialization.PrivateFormat.OpenSSH)):
            self.assertSameKey(self.load(write_key(self.folder, name, self.key, fmt)))
        self.assertEqual(self.err.getvalue(), "")  # 0600: no warning

    def test_encrypted_keys_use_the_environment_passphrase(self):
        for name, fmt in (("pkcs1.pem", serialization.PrivateFormat.TraditionalOpenSSL),
                          ("pkcs8.pem", serialization.PrivateFormat.PKCS8)):
            path = write_key(self.folder, name, self.key, fmt, PASSPHRASE)
            self.assertSameKey(self.load(path, {"SYSADM_KEY_PASSPHRASE": PASSPHRASE}))
            with self.assertRaises(ClientError) as caught:
                self.load(path, {"SYSADM_KEY_PASSPHRASE": "wrong"})
            self.assertEqual(caught.exception.exit_code, EXIT_USAGE)
            self.assertIn("wrong passphrase", caught.exception.message)
            with self.assertRaises(ClientError) as caught:
                self.load(path)  # no terminal, no variable
            self.assertIn(f"key file {path} is encrypted: set SYSADM_KEY_PASSPHRASE", caught.exception.message)

    def test_encrypted_key_asks_on_a_terminal(self):
        path = write_key(self.folder, "enc.pem", self.key, serialization.PrivateFormat.PKCS8, PASSPHRASE)
        asked = []

        def getpass(prompt):
            asked.append(prompt)
            return PASSPHRASE
        self.patch(connect.getpass, "getpass", getpass)
        self.assertSameKey(self.load(path, stdin=Terminal()))
        self.assertEqual(asked, [f"Passphrase for {path}: "])

    def test_key_file_readable_by_others_warns_like_ssh(self):
        for mode, who in ((0o644, "others"), (0o640, "its group")):
            self.err = io.StringIO()
            path = write_key(self.folder, f"open-{mode:o}.pem", self.key, serialization.PrivateFormat.PKCS8, mode=mode)
            self.assertSameKey(self.load(path))  # a warning, not a refusal
            self.assertIn(f"WARNING: private key file {path} is readable by {who}", self.err.getvalue())
            self.assertIn(f"chmod 600 {path}", self.err.getvalue())

    def test_a_public_key_or_garbage_is_a_clear_usage_error(self):
        pub = os.path.join(self.folder, "id.pub")
        with open(pub, "w") as f:
            f.write(pem_of("formats"))
        with self.assertRaises(ClientError) as caught:
            self.load(pub)
        self.assertIn("this is a public key; --key needs the private key", caught.exception.message)
        junk = os.path.join(self.folder, "junk")
        with open(junk, "w") as f:
            f.write("hello\n")
        with self.assertRaises(ClientError) as caught:
            self.load(junk)
        self.assertIn("not an RSA private key in PEM (PKCS#1 or PKCS#8) or OpenSSH format", caught.exception.message)

    def test_files_written_by_ssh_keygen(self):
        if shutil.which("ssh-keygen") is None:
            raise unittest.SkipTest("ssh-keygen is not installed")
        for fmt in ("PEM", "PKCS8", "RFC4716"):
            path = os.path.join(self.folder, f"ssh-{fmt}")
            subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-m", fmt, "-N", "", "-f", path],
                           check=True, capture_output=True)
            loaded = self.load(path)
            with open(path + ".pub") as f:
                self.assertEqual(crypto.public_pem(loaded), crypto.normalized_pem(f.read()))
            path += "-enc"
            if fmt == "RFC4716":
                continue  # encrypted OpenSSH keys need bcrypt (see crypto.load_private_key)
            subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-m", fmt, "-N", PASSPHRASE, "-f", path],
                           check=True, capture_output=True)
            loaded = self.load(path, {"SYSADM_KEY_PASSPHRASE": PASSPHRASE})
            with open(path + ".pub") as f:
                self.assertEqual(crypto.public_pem(loaded), crypto.normalized_pem(f.read()))


@pytest.mark.slow  # real daemons or child processes
class KeyLoginsEndToEnd(CliTestCase):
    @defer.inlineCallbacks
    def test_each_format_logs_in_over_wss(self):
        register(self.running, "root", "formats")
        key = private_key("formats")
        files = [
            (write_key(self.home, "pkcs8-enc.pem", key, serialization.PrivateFormat.PKCS8, PASSPHRASE),
             {"SYSADM_KEY_PASSPHRASE": PASSPHRASE}),
            (write_key(self.home, "openssh", key, serialization.PrivateFormat.OpenSSH), {}),
            (write_key(self.home, "pkcs1.pem", key, serialization.PrivateFormat.TraditionalOpenSSL, mode=0o644), {}),
        ]
        for path, env in files:
            result = yield self.sysadm("--url", self.url, "--key", path, "call", "rpc", "query", **env)
            self.assertEqual(result.code, 0, result.err)
            self.assertEqual("WARNING" in result.err, path.endswith("pkcs1.pem"), result.err)
        result = yield self.sysadm("--url", self.url, "--key", files[0][0], "query")
        self.assertEqual(result.code, 2)
        self.assertIn("is encrypted: set SYSADM_KEY_PASSPHRASE", result.err)

    @defer.inlineCallbacks
    def test_keys_add_with_a_private_key_sends_only_its_public_half(self):
        path = write_key(self.home, "laptop.key", private_key("laptop-priv"), serialization.PrivateFormat.PKCS8)
        result = yield run_cli(self.home, "--url", self.url, "--user", "root", "keys", "add", path,
                               SYSADM_PASSWORD="pw")
        self.assertEqual(result.code, 0, result.err)
        self.assertIn(f"note: {path} is a private key; only its public half is sent", result.err)
        self.assertIn(f"openssl rsa -in {path} -pubout", result.err)
        [stored] = self.running.daemon.keys.list()
        self.assertEqual(stored.pem, pem_of("laptop-priv"))
        self.assertNotIn("PRIVATE", crypto.pem_from_stored(stored.pub_key))
