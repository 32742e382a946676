"""The bridge verbs of the ``sysadmd`` admin command, run as real child processes,
and a running daemon following their edits."""

import pytest
import os
import stat
import sys

from twisted.internet import defer, utils
from twisted.trial import unittest

from sysadmd.runtime import crypto
from sysadmd.bridgelink import key as bridgekey
from tests.support import FakePasswords, make_config, short_tempdir, start_daemon
from tests.test_bridgelink_link import FakeBridge, wait_until

# Starts real daemons or child processes: skipped by ./scripts/test.sh -m "not slow".
pytestmark = pytest.mark.slow


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@defer.inlineCallbacks
def admin(state_dir, *args):
    """Run ``python -m sysadmd.admin.main --state-dir DIR ARGS``; fires with (out, err, code)."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    out, err, code = yield utils.getProcessOutputAndValue(
        sys.executable, ["-m", "sysadmd.admin.main", "--state-dir", state_dir, *args], env=env, path=ROOT)
    return out.decode(), err.decode(), code


class BridgeVerbTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_add_list_remove_and_errors(self):
        state = os.path.join(short_tempdir(self), "state")
        out, err, code = yield admin(state, "bridge_add", "home", "bridge.example.org")
        self.assertEqual((code, out), (0, "added bridge link home: wss://bridge.example.org:12149 (verify pin)\n"), err)
        out, err, code = yield admin(state, "bridge-add", "lab", "wss://10.0.0.9:4000", "--verify", "ca")
        self.assertEqual(code, 0, err)
        out, err, code = yield admin(state, "bridge_add", "lab", "10.0.0.9", "--verify=none")
        self.assertEqual((code, out), (0, "replaced bridge link lab: wss://10.0.0.9:12149 (verify none)\n"), err)
        out, err, code = yield admin(state, "bridge_list")
        self.assertEqual(code, 0, err)
        lines = out.splitlines()
        self.assertEqual(lines[0].split(), ["NICKNAME", "URL", "VERIFY", "ADDED", "FINGERPRINT"])
        self.assertEqual([line.split()[:3] for line in lines[1:]],
                         [["home", "wss://bridge.example.org:12149", "pin"], ["lab", "wss://10.0.0.9:12149", "none"]])
        out, err, code = yield admin(state, "bridge-remove", "lab")
        self.assertEqual((code, out), (0, "removed bridge link lab\n"), err)
        out, err, code = yield admin(state, "bridge_remove", "lab")
        self.assertEqual(code, 1)
        self.assertIn("no bridge link named 'lab' (links: home)", err)
        out, err, code = yield admin(state, "bridge_add", "x", "http://h")
        self.assertEqual(code, 1)
        self.assertIn("scheme 'http' is not supported", err)
        out, err, code = yield admin(state, "bridge_add", "x", "h", "--verify", "sometimes")
        self.assertEqual(code, 1)
        self.assertIn("verify: expected one of none, pin, ca", err)
        out, err, code = yield admin(state, "bridge_add", "onlynick")
        self.assertEqual(code, 2)
        self.assertIn("expected NICKNAME URL", err)
        out, err, code = yield admin(state, "bridge_list")
        self.assertEqual(len(out.splitlines()), 2)

    @defer.inlineCallbacks
    def test_export_key_before_the_daemon_ever_ran_then_link_with_it(self):
        base = short_tempdir(self)
        state = os.path.join(base, "state")
        path = os.path.join(base, "server.key")
        out, err, code = yield admin(state, "bridge_export_key", path)
        self.assertEqual((code, out), (0, f"wrote the bridge public key to {path}\n"), err)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o644)
        self.assertEqual(stat.S_IMODE(os.stat(bridgekey.key_path(state)).st_mode), 0o600)
        with open(path) as f:
            exported = f.read()
        self.assertTrue(exported.startswith("-----BEGIN PUBLIC KEY-----\n"))
        printed, err, code = yield admin(state, "bridge-export-key")
        self.assertEqual((code, printed), (0, exported))
        out, err, code = yield admin(state, "bridge_export_key", os.path.join(base, "server.pem"))
        self.assertIn("accepts only files ending in .key or .crt", err)

        # The daemon signs with the key exported above; a bridge that trusts only that key
        # accepts it.  Links added and removed by the command are followed at run time.
        bridge = FakeBridge([crypto.load_public_key(exported)])
        bridge.start()
        self.addCleanup(bridge.stop)
        running = yield start_daemon(self, make_config(state), passwords=FakePasswords({}))
        links = running.daemon.bridge_links
        out, err, code = yield admin(state, "bridge_add", "cli", f"127.0.0.1:{bridge.port}")
        self.assertEqual(code, 0, err)
        yield wait_until(lambda: bridge.server is not None, 15, "the daemon to link to the bridge added by the command")
        yield wait_until(lambda: links.store.get("cli").fingerprint is not None, 5, "the pinned certificate")
        out, err, code = yield admin(state, "bridge_list")
        self.assertIn(bridge.fingerprint, out)
        out, err, code = yield admin(state, "bridge_remove", "cli")
        self.assertEqual(code, 0, err)
        yield wait_until(lambda: not bridge.connections and "cli" not in links.links, 15,
                         "the daemon to drop the link removed by the command")
