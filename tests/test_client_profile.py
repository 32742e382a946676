"""Issue 8 item 15: remote use without repeating flags.

SYSADM_URL / SYSADM_KEY / SYSADM_BRIDGE / SYSADM_SERVER and the profile file
($XDG_CONFIG_HOME/sysadm/config, sections chosen by --profile or SYSADM_PROFILE), with the
precedence command line > environment > profile > defaults; then the real client against
a real daemon with nothing but a profile.
"""

import pytest
import os

from cryptography.hazmat.primitives import serialization
from twisted.internet import defer
from twisted.trial import unittest

from sysadmd.client import profile
from sysadmd.client.main import build_parser
from tests.keys_support import private_key, register
from tests.test_client_cli import CliTestCase
from tests.test_client_keys import write_key


class Settings(unittest.TestCase):
    def setUp(self):
        self.home = self.mktemp()
        os.makedirs(os.path.join(self.home, "sysadm"))
        self.env = {"XDG_CONFIG_HOME": self.home, "HOME": self.home}
        self.path = os.path.join(self.home, "sysadm", "config")

    def write(self, text):
        with open(self.path, "w") as f:
            f.write(text)

    def options(self, *argv, env=None):
        options = build_parser().parse_args(list(argv) + ["identify"])
        return profile.apply(options, dict(self.env, **(env or {})))

    def test_no_file_means_defaults(self):
        o = self.options()
        self.assertEqual((o.url, o.bridge, o.key, o.timeout, o.allow_upstream_server), (None, None, None, 30.0, False))

    def test_default_profile_then_named_profile(self):
        self.write("[default]\nurl = wss://nas.lan:12150\nkey = ~/id.pem\ntimeout = 5\n\n"
                   "[office]\nbridge = wss://relay.example.org\nserver = office-nas\nallow-upstream-server = yes\n")
        o = self.options()
        self.assertEqual((o.url, o.key, o.timeout, o.bridge), ("wss://nas.lan:12150", os.path.expanduser("~/id.pem"), 5.0, None))
        o = self.options("--profile", "office")
        self.assertEqual((o.bridge, o.server, o.allow_upstream_server, o.url, o.key, o.timeout),
                         ("wss://relay.example.org", "office-nas", True, None, None, 30.0))  # no inheritance
        o = self.options(env={"SYSADM_PROFILE": "office"})
        self.assertEqual(o.bridge, "wss://relay.example.org")
        o = self.options("--profile", "default", env={"SYSADM_PROFILE": "office"})  # command line first
        self.assertEqual(o.url, "wss://nas.lan:12150")

    def test_command_line_over_environment_over_profile(self):
        self.write("[default]\nurl = wss://from-file\nkey = /file.pem\n")
        self.assertEqual(self.options(env={"SYSADM_URL": "wss://from-env"}).url, "wss://from-env")
        self.assertEqual(self.options("--url", "wss://from-cli", env={"SYSADM_URL": "wss://from-env"}).url, "wss://from-cli")
        self.assertEqual(self.options(env={"SYSADM_KEY": "/env.pem"}).key, "/env.pem")

    def test_groups_are_taken_whole_from_one_layer(self):
        self.write("[default]\nbridge = wss://relay\nserver = nas\nkey = /file.pem\n")
        # --url on the command line: the profile's bridge and server do not sneak in.
        o = self.options("--url", "wss://direct")
        self.assertEqual((o.url, o.bridge, o.server, o.key), ("wss://direct", None, None, "/file.pem"))
        # --user on the command line: the profile's key is not a second way to log in.
        o = self.options("--user", "alice")
        self.assertEqual((o.user, o.key), ("alice", None))
        # A token in the environment outranks the profile's key.
        o = self.options(env={"SYSADM_TOKEN": "t0k"})
        self.assertEqual((o.token, o.key), ("t0k", None))
        # SYSADM_SERVER picks another server behind the profile's bridge.
        o = self.options(env={"SYSADM_SERVER": "other"})
        self.assertEqual((o.bridge, o.server), ("wss://relay", "other"))
        # SYSADM_BRIDGE replaces the target; the file's server still goes with a bridge.
        o = self.options(env={"SYSADM_BRIDGE": "wss://relay2"})
        self.assertEqual((o.bridge, o.server), ("wss://relay2", "nas"))

    def test_unknown_key_names_file_section_and_key(self):
        self.write("[default]\nurl = wss://x\n[office]\nbrige = wss://typo\n")
        with self.assertRaises(profile.ProfileError) as caught:
            self.options()
        self.assertIn(f"{self.path}: [office]: unknown key 'brige'", str(caught.exception))

    def test_secrets_never_come_from_the_file(self):
        for key in ("password", "token"):
            self.write(f"[default]\n{key} = hunter2\n")
            with self.assertRaises(profile.ProfileError) as caught:
                self.options()
            self.assertIn(f"[default] {key}: ", str(caught.exception))
            self.assertNotIn("hunter2", str(caught.exception))

    def test_bad_values_and_missing_profiles(self):
        self.write("[default]\ntimeout = soon\n")
        with self.assertRaises(profile.ProfileError) as caught:
            self.options()
        self.assertIn("[default] timeout: expected a number of seconds, got 'soon'", str(caught.exception))
        self.write("[default]\nurl = wss://x\n")
        with self.assertRaises(profile.ProfileError) as caught:
            self.options("--profile", "nope")
        self.assertIn("no profile [nope] (profiles in the file: default)", str(caught.exception))
        self.write("url = wss://x\n")
        with self.assertRaises(profile.ProfileError) as caught:
            self.options()
        self.assertIn("not a valid INI file", str(caught.exception))
        os.unlink(self.path)
        with self.assertRaises(profile.ProfileError) as caught:
            self.options("--profile", "office")
        self.assertIn("there is no profile file", str(caught.exception))


@pytest.mark.slow  # real daemons or child processes
class ProfileEndToEnd(CliTestCase):
    @defer.inlineCallbacks
    def test_a_profile_alone_connects_and_logs_in(self):
        register(self.running, "root", "profile-key")
        key = write_key(self.home, "id.pem", private_key("profile-key"), serialization.PrivateFormat.PKCS8)
        os.makedirs(os.path.join(self.home, "cfg", "sysadm"), exist_ok=True)
        with open(os.path.join(self.home, "cfg", "sysadm", "config"), "w") as f:
            f.write(f"[lab]\nurl = wss://{self.url}\nkey = {key}\n\n[broken]\nurl = wss://{self.url}\nkey = /nonexistent.pem\n")
        result = yield self.sysadm("--profile", "lab", "call", "rpc", "query")
        self.assertEqual(result.code, 0, result.err)
        result = yield self.sysadm("call", "rpc", "query", SYSADM_PROFILE="lab")
        self.assertEqual(result.code, 0, result.err)
        # The environment's key outranks the profile's.
        result = yield self.sysadm("--profile", "lab", "query", SYSADM_KEY="/nonexistent-env.pem")
        self.assertEqual(result.code, 2)
        self.assertIn("/nonexistent-env.pem", result.err)
        # SYSADM_URL + SYSADM_KEY without any profile.
        os.unlink(os.path.join(self.home, "cfg", "sysadm", "config"))
        result = yield self.sysadm("call", "rpc", "query", SYSADM_URL=f"wss://{self.url}", SYSADM_KEY=key)
        self.assertEqual(result.code, 0, result.err)


@pytest.mark.slow  # real daemons or child processes
class LeanStartup(unittest.TestCase):
    def test_the_client_entry_point_imports_none_of_the_daemon(self):
        import subprocess
        import sys

        code = ("import sys; import sysadmd.client.main; "
                "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
                "('psutil', 'pam', 'sqlite3', '_sqlite3', 'configparser') or m.startswith(('sysadmd.server', "
                "'sysadmd.dispatcher', 'sysadmd.auth', 'sysadmd.runtime.db', 'sysadmd.assembly', 'bridge.')))))")
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env=dict(os.environ, PYTHONPATH=root))
        self.assertEqual(proc.stdout.strip(), "")
