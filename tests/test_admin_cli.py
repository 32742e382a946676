"""The ``sysadmd`` admin command as a real child process, alone and beside a running daemon."""

import pytest
import os
import stat
import sys
import time

from cryptography.hazmat.primitives import serialization
from twisted.internet import defer, reactor, utils
from twisted.trial import unittest

from tests.keys_support import certificate, error_code, key_login, md5_of, pem_of
from tests.support import FakePasswords, make_config, open_client, short_tempdir, start_daemon

# Starts real daemons or child processes: skipped by ./scripts/test.sh -m "not slow".
pytestmark = pytest.mark.slow


PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = "from sysadmd.admin.main import main; import sys; sys.exit(main())"


def sysadmd(*args):
    """Run the console script's entry point in a child; fires with (out, err, exit code)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": PROJECT, "HOME": os.environ.get("HOME", "/root")}
    return utils.getProcessOutputAndValue(sys.executable, ["-c", LAUNCH, *args], env=env, path=PROJECT, reactor=reactor)


def decode(result):
    out, err, code = result
    return out.decode(), err.decode(), code


class AdminCommand(unittest.TestCase):
    timeout = 60

    def setUp(self):
        self.base = short_tempdir(self)
        self.state = os.path.join(self.base, "state")

    def write(self, name, data):
        path = os.path.join(self.base, name)
        with open(path, "wb") as f:
            f.write(data if isinstance(data, bytes) else data.encode())
        return path

    @defer.inlineCallbacks
    def run_cli(self, *args):
        result = yield sysadmd("--state-dir", self.state, *args)
        return decode(result)

    @defer.inlineCallbacks
    def test_help_and_usage_errors(self):
        out, err, code = decode((yield sysadmd("--help")))
        self.assertEqual(code, 0, err)
        for name in ("import_ssl_file USER FILE NICKNAME [EMAIL]", "list_keys | list_ssl_certs",
                     "revoke_key | revoke_ssl_cert USER NICKNAME|MD5", "unblock ADDRESS", "list_blocked"):
            self.assertIn(name, out)
        out, err, code = decode((yield sysadmd()))
        self.assertEqual(code, 2)
        self.assertIn("expected a verb", err)
        out, err, code = yield self.run_cli("no_such_verb")
        self.assertEqual(code, 2)
        self.assertIn("unknown verb 'no_such_verb'", err)
        out, err, code = yield self.run_cli("import_ssl_file", "root")
        self.assertEqual(code, 2)
        self.assertIn("expected USER FILE NICKNAME [EMAIL], got 1 argument(s)", err)
        out, err, code = decode((yield sysadmd("--state-dir")))
        self.assertEqual(code, 2)
        self.assertIn("--state-dir needs a value", err)
        out, err, code = decode((yield sysadmd("--frob", "list_keys")))
        self.assertEqual(code, 2)
        self.assertIn("unknown option --frob", err)

    @defer.inlineCallbacks
    def test_import_pem_and_certificates_list_and_revoke(self):
        pem_file = self.write("alice.pub", pem_of("alice"))  # any file name, not only .key
        cert_file = self.write("bob.crt", certificate("bob"))
        der_file = self.write("carol.cert", certificate("carol", serialization.Encoding.DER))
        for user, path, nick in (("root", pem_file, "laptop"), ("root", cert_file, "desk"), ("daemon", der_file, "ci")):
            out, err, code = yield self.run_cli("import_ssl_file", user, path, nick, f"{nick}@example.org")
            self.assertEqual(code, 0, err)
            self.assertIn("registered key", out)

        self.assertEqual(stat.S_IMODE(os.stat(self.state).st_mode), 0o700)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.join(self.state, "sysadmd.sqlite")).st_mode), 0o600)

        out, err, code = yield self.run_cli("list_keys")
        self.assertEqual(code, 0, err)
        lines = out.splitlines()
        self.assertEqual(lines[0].split(), ["USER", "NICKNAME", "EMAIL", "REGISTERED", "MD5"])
        self.assertEqual(len(lines), 4)
        rows = {line.split()[1]: line.split() for line in lines[1:]}
        self.assertEqual(rows["laptop"][0], "root")
        self.assertEqual(rows["laptop"][-1], md5_of("alice"))
        self.assertEqual(rows["desk"][-1], md5_of("bob"))  # the certificate's public key
        self.assertEqual(rows["ci"][:3], ["daemon", "ci", "ci@example.org"])
        self.assertEqual(rows["ci"][-1], md5_of("carol"))

        # The same key again for its user updates it; for another user it is refused.
        out, err, code = yield self.run_cli("import_ssl_file", "root", pem_file, "laptop", "new@example.org")
        self.assertEqual(code, 0, err)
        self.assertIn("nickname and email updated", out)
        out, err, code = yield self.run_cli("list_keys")
        self.assertEqual(len(out.splitlines()), 4)
        self.assertIn("new@example.org", out)
        out, err, code = yield self.run_cli("import_ssl_file", "daemon", pem_file, "again")
        self.assertEqual(code, 1)
        self.assertIn("already registered for user root (laptop)", err)

        out, err, code = yield self.run_cli("revoke_key", "root", "laptop")
        self.assertEqual(code, 0, err)
        out, err, code = yield self.run_cli("revoke_ssl_cert", "root", md5_of("bob"))  # upstream's name, by MD5
        self.assertEqual(code, 0, err)
        out, err, code = yield self.run_cli("list_ssl_certs")
        self.assertEqual([line.split()[1] for line in out.splitlines()[1:]], ["ci"])
        out, err, code = yield self.run_cli("revoke_key", "root", "laptop")
        self.assertEqual(code, 1)
        self.assertIn("user root has no key with nickname or MD5 'laptop'", err)

    @defer.inlineCallbacks
    def test_unusable_files_fail_with_exit_1(self):
        out, err, code = yield self.run_cli("import_ssl_file", "root", os.path.join(self.base, "missing.pem"), "x")
        self.assertEqual(code, 1)
        self.assertIn("cannot read", err)
        junk = self.write("junk.crt", "hello\n")
        out, err, code = yield self.run_cli("import_ssl_file", "root", junk, "x")
        self.assertEqual(code, 1)
        self.assertIn("not a PEM public key, X.509 certificate", err)

    @defer.inlineCallbacks
    def test_config_file_names_the_state_dir(self):
        conf = self.write("sysadmd.conf", f"# test\nSTATE_DIR={self.state}\nPORT=12150\n")
        out, err, code = decode((yield sysadmd("--config", conf, "import_ssl_file", "root", self.write("k.pem", pem_of("alice")), "n")))
        self.assertEqual(code, 0, err)
        self.assertTrue(os.path.exists(os.path.join(self.state, "sysadmd.sqlite")))
        bad = self.write("bad.conf", "NO_SUCH_KEY=1\n")
        out, err, code = decode((yield sysadmd("--config", bad, "list_keys")))
        self.assertEqual(code, 1)
        self.assertIn("NO_SUCH_KEY: unknown configuration key", err)

    @defer.inlineCallbacks
    def test_options_after_the_verb_are_used(self):
        # "import_ssl_file U F N --state-dir D" used to register a key nicknamed
        # "--state-dir" with e-mail "D" in the default (here: the config file's) directory.
        elsewhere = os.path.join(self.base, "from-config")
        conf = self.write("c.conf", f"STATE_DIR={elsewhere}\n")
        key_file = self.write("k.pem", pem_of("alice"))
        out, err, code = decode((yield sysadmd("--config", conf, "import_ssl_file", "root", key_file, "laptop",
                                               "--state-dir", self.state)))
        self.assertEqual(code, 0, err)
        self.assertFalse(os.path.exists(elsewhere))
        out, err, code = decode((yield sysadmd("list_keys", f"--state-dir={self.state}")))
        self.assertEqual(code, 0, err)
        self.assertEqual([line.split()[:2] for line in out.splitlines()[1:]], [["root", "laptop"]])
        # --config after the verb names the state directory too.
        out, err, code = decode((yield sysadmd("list_keys", "--config", conf)))
        self.assertEqual((code, out), (0, "no registered keys\n"), err)
        # Conflicting values are refused, naming both.
        out, err, code = decode((yield sysadmd("--state-dir", elsewhere, "list_keys", "--state-dir", self.state)))
        self.assertEqual(code, 2)
        self.assertIn(f"--state-dir given twice ({elsewhere} and {self.state})", err)
        # After "--" everything belongs to the verb.
        out, err, code = yield self.run_cli("import_ssl_file", "root", key_file, "--", "--config")
        self.assertEqual(code, 0, err)  # reached the verb: the same key, now nicknamed "--config"
        out, err, code = yield self.run_cli("list_keys")
        self.assertEqual([line.split()[:2] for line in out.splitlines()[1:]], [["root", "--config"]])

    @defer.inlineCallbacks
    def test_version_and_every_verbs_help(self):
        import sysadmd as package
        from sysadmd.admin.verbs import primary_verbs

        out, err, code = decode((yield sysadmd("--version")))
        self.assertEqual((code, out), (0, f"sysadmd {package.__version__}\n"), err)
        for i, v in enumerate(primary_verbs()):
            for flag in ("--help", "-h") if i == 0 else ("--help",):
                out, err, code = decode((yield sysadmd(v.name, flag)))
                self.assertEqual(code, 0, err)
                self.assertTrue(out.startswith(f"usage: sysadmd {v.name}"), out)
                self.assertIn(v.help.splitlines()[0], out)
        self.assertFalse(os.path.exists(self.state))  # help touches no state directory

    @defer.inlineCallbacks
    def test_check_config(self):
        good = self.write("good.conf", f"STATE_DIR={self.state}\nTOKEN_TTL=60\nPORT=tcp:12150:interface=127.0.0.1\n")
        out, err, code = decode((yield sysadmd("check-config", good)))
        self.assertEqual((code, out), (0, f"configuration OK: {good}\n"), err)
        out, err, code = decode((yield sysadmd("--config", good, "check-config")))
        self.assertEqual(code, 0, err)
        self.assertFalse(os.path.exists(self.state))  # validated, nothing created
        for text, fragment in (("JOB_KILL_GRACE=nan\n", "JOB_KILL_GRACE: expected a finite number"),
                               ("TOKEN_TTL=x\n", "TOKEN_TTL: expected a whole number"),
                               ("NO_SUCH=1\n", "NO_SUCH: unknown configuration key"),
                               ("PORT=tcp:notaport\n", "PORT: endpoint"),
                               (f"TLS_CERT={self.base}/none.crt\nTLS_KEY={self.base}/none.key\n", "TLS_CERT: "),
                               (f"TLS_CERT={good}\nTLS_KEY={good}\n", "not a usable PEM certificate")):
            bad = self.write("bad.conf", text)
            out, err, code = decode((yield sysadmd("check-config", bad)))
            self.assertEqual(code, 1, (text, out, err))
            self.assertIn(fragment, err)
            self.assertIn(bad, err)
            self.assertEqual(out, "")
        out, err, code = decode((yield sysadmd("check-config", os.path.join(self.base, "missing.conf"))))
        self.assertEqual(code, 1)
        self.assertIn("missing.conf", err)
        out, err, code = decode((yield sysadmd("check-config", good, "other.conf")))
        self.assertEqual(code, 2)


class OtherConsoleScripts(unittest.TestCase):
    timeout = 30

    def run_module(self, module, *args):
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": PROJECT, "HOME": os.environ.get("HOME", "/root")}
        launch = f"import sys; from {module} import main; sys.exit(main())"
        return utils.getProcessOutputAndValue(sys.executable, ["-c", launch, *args], env=env, path=PROJECT,
                                              reactor=reactor).addCallback(decode)

    @defer.inlineCallbacks
    def test_version(self):
        import sysadmd as package

        for module, name in (("sysadmd.client.main", "sysadm"), ("bridge.admin", "sysadm-bridge")):
            out, err, code = yield self.run_module(module, "--version")
            self.assertEqual((code, out.strip()), (0, f"{name} {package.__version__}"), err)

    @defer.inlineCallbacks
    def test_bridge_admin_refuses_options_after_the_verb(self):
        # The bridge's command must not silently use its default state directory either.
        state = short_tempdir(self)
        out, err, code = yield self.run_module("bridge.admin", "list_ssl", "--state-dir", state)
        self.assertEqual(code, 2)
        self.assertIn("unrecognized arguments: --state-dir", err)


class AdminCommandBesideTheDaemon(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        self.running = yield start_daemon(self, make_config(short_tempdir(self)), passwords=FakePasswords({}))
        self.key_file = os.path.join(short_tempdir(self), "alice.pem")
        with open(self.key_file, "w") as f:
            f.write(pem_of("alice"))

    def cli(self, *args):
        return sysadmd("--state-dir", self.running.config.state_dir, *args).addCallback(decode)

    @defer.inlineCallbacks
    def test_imported_key_logs_in_and_revoked_key_is_dropped(self):
        client = yield open_client(self, self.running)
        refused = yield key_login(client, "alice")
        self.assertEqual(error_code(refused), "401")

        out, err, code = yield self.cli("import_ssl_file", "root", self.key_file, "alice")
        self.assertEqual(code, 0, err)
        reply = yield key_login(client, "alice")  # no restart needed
        self.assertEqual(reply["name"], "response", reply)

        out, err, code = yield self.cli("revoke_key", "root", "alice")
        self.assertEqual(code, 0, err)
        revoked_at = time.monotonic()
        closed = yield client.closed
        delay = time.monotonic() - revoked_at
        self.assertEqual(closed[0], 1008)
        self.assertIn("revoked", closed[1])
        self.assertLess(delay, 2.5, f"the session lasted {delay:.2f} s after the revocation")
        print(f"\nsession closed {delay:.2f} s after the admin command revoked its key")

