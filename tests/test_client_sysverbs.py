"""``sysadm users …`` and ``sysadm services …``: the real client in a child process over the
daemon's local socket (root: full access by peer uid), real accounts and a real SysV
script."""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import subprocess

import pytest
from twisted.internet import defer
from twisted.trial import unittest

from sysadmd.sysclasses import services as services_mod
from tests.support import alive, make_config, short_tempdir, start_daemon
from tests.test_client_cli import run_cli
from tests.test_sysclass_services import SCRIPT, install, kill_quietly, pid_of

pytestmark = pytest.mark.slow


class SysVerbs(unittest.TestCase):
    timeout = 90

    @defer.inlineCallbacks
    def setUp(self):
        if os.geteuid() != 0 or services_mod.systemd_runs() or not shutil.which("useradd") \
                or not shutil.which("start-stop-daemon"):
            raise unittest.SkipTest("needs root, the shadow tools, start-stop-daemon and no systemd")
        self.home = short_tempdir(self, "cli")
        root = short_tempdir(self)
        self.initd = os.path.join(root, "etc", "init.d")
        os.makedirs(self.initd)
        self.piddir = root
        self.service = f"sdkc{secrets.token_hex(3)}"
        install(self.initd, self.service, SCRIPT, root)
        self.addCleanup(kill_quietly, root, self.service)
        self.running = yield start_daemon(self, make_config(short_tempdir(self), SERVICES_INITD_DIR=self.initd))

    def local(self, *argv, **env):
        return run_cli(self.home, "--socket", self.running.config.socket, *argv, **env)

    @defer.inlineCallbacks
    def test_users_add_list_show_delete(self):
        name = f"sdkc{secrets.token_hex(3)}"
        self.addCleanup(subprocess.run, ["userdel", "-r", name], capture_output=True)
        result = yield self.local("users", "add", name, "--comment", "CLI made", "--shell", "/bin/sh",
                                  SYSADM_NEW_PASSWORD="Pass-word-1")
        self.assertEqual(result.code, 0, result.err)
        self.assertIn(f"added {name}", result.out)
        self.assertEqual(pwd.getpwnam(name).pw_gecos, "CLI made")
        listed = yield self.local("users", "list")
        self.assertEqual(listed.code, 0, listed.err)
        self.assertTrue(listed.out.startswith("NAME"))
        self.assertIn(name, listed.out)
        shown = yield self.local("--json", "users", "show", name)
        self.assertEqual(json.loads(shown.out)["comment"], "CLI made")
        refused = yield self.local("users", "add", name, SYSADM_NEW_PASSWORD="x")
        self.assertEqual(refused.code, 1)
        self.assertIn("already exists", refused.err)
        no_password = yield self.local("users", "add", "sdkcnopw")
        self.assertEqual(no_password.code, 2)
        self.assertIn("SYSADM_NEW_PASSWORD", no_password.err)
        deleted = yield self.local("users", "delete", name)
        self.assertEqual(deleted.code, 0, deleted.err)
        with self.assertRaises(KeyError):
            pwd.getpwnam(name)

    @defer.inlineCallbacks
    def test_services_list_start_stop(self):
        listed = yield self.local("services", "list")
        self.assertEqual(listed.code, 0, listed.err)
        self.assertRegex(listed.out, rf"(?m)^{self.service}\s+no\s+no\s+sysadmd test daemon")
        started = yield self.local("services", "start", self.service)
        self.assertEqual(started.code, 0, started.err)
        self.assertIn(f"started: {self.service}", started.out)
        self.assertTrue(alive(pid_of(self.piddir, self.service)))
        as_json = yield self.local("--json", "services", "list")
        self.assertEqual(json.loads(as_json.out)["services"][self.service]["is_running"], "true")
        pid = pid_of(self.piddir, self.service)
        stopped = yield self.local("services", "stop", self.service)
        self.assertEqual(stopped.code, 0, stopped.err)
        self.assertFalse(alive(pid))
        missing = yield self.local("services", "start", "nosuch")
        self.assertEqual(missing.code, 1)
        self.assertIn("no service named nosuch", missing.err)
