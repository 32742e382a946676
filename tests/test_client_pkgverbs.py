"""``sysadm pkg …``: the real client in a child process over the daemon's local socket
(root: full access by peer uid), against the local file: repository of
tests/test_sysclass_pkg.py; real packages installed, held and removed."""

from __future__ import annotations

import json

import pytest
from twisted.internet import defer
from twisted.trial import unittest

from tests.support import make_config, short_tempdir, start_daemon
from tests.test_client_cli import run_cli
from tests.test_sysclass_pkg import held, installed, make_local_repo, usable

pytestmark = pytest.mark.slow


class PkgVerbs(unittest.TestCase):
    timeout = 180

    @defer.inlineCallbacks
    def setUp(self):
        if not usable():
            raise unittest.SkipTest("needs root, apt, dpkg-dev and apt-utils (a Debian host)")
        self.home = short_tempdir(self, "cli")
        _, _, _, apt_conf = make_local_repo(self)
        self.running = yield start_daemon(self, make_config(short_tempdir(self), PKG_APT_CONFIG=apt_conf))

    def local(self, *argv, **env):
        return run_cli(self.home, "--socket", self.running.config.socket, *argv, timeout=120, **env)

    @defer.inlineCallbacks
    def test_update_search_info_install_lock_remove(self):
        updated = yield self.local("pkg", "update")
        self.assertEqual(updated.code, 0, updated.err)
        self.assertRegex(updated.out, r"job \d+ SUCCESS \(succeeded\)")
        found = yield self.local("pkg", "search", "sdpkgt")
        self.assertEqual(found.code, 0, found.err)
        self.assertRegex(found.out, r"(?m)^sdpkgt-a\s+sysadmd test package sdpkgt-a$")
        self.assertRegex(found.out, r"(?m)^sdpkgt-lib\s+")
        installing = yield self.local("pkg", "install", "sdpkgt-a")
        self.assertEqual(installing.code, 0, installing.err)
        self.assertIn("queued in pkg_queue", installing.err)
        self.assertRegex(installing.err, r"job \d+ \[[#-]{10}\] +\d+% \w")  # a progress line with apt's stage
        self.assertEqual(installed(), {"sdpkgt-a": "1.0", "sdpkgt-lib": "1.0"})
        info = yield self.local("pkg", "info", "sdpkgt-a")
        self.assertRegex(info.out, r"(?m)^installed:\s+true$")
        self.assertRegex(info.out, r"(?m)^dependencies:\s+sdpkgt-lib$")
        locked = yield self.local("pkg", "lock", "sdpkgt-a")
        self.assertEqual(locked.code, 0, locked.err)
        self.assertIn("sdpkgt-a", held())
        unlocked = yield self.local("--json", "pkg", "unlock", "sdpkgt-a")
        self.assertEqual(json.loads(unlocked.out)["state"], "SUCCESS")
        self.assertNotIn("sdpkgt-a", held())
        queued = yield self.local("pkg", "remove", "sdpkgt-a", "--no-wait")
        self.assertRegex(queued.out, r"queued job (\d+) \(sysadm_pkg_remove-\{")
        job_id = queued.out.split()[2]
        waited = yield self.local("job", "wait", job_id)
        self.assertEqual(waited.code, 0, waited.err)
        self.assertEqual(installed(), {"sdpkgt-lib": "1.0"})
        bad = yield self.local("pkg", "install", "Not_A_Name")
        self.assertEqual(bad.code, 1)
        self.assertIn("not a Debian package name", bad.err)
