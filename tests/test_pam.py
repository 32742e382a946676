"""rpc/auth against the real PAM stack, with a temporary local account.

The account and its group are created with useradd/groupadd/chpasswd (the tests run as
root) and removed at cleanup; the group is the only FULL_ACCESS_GROUPS entry.
"""

import pytest
import os
import secrets
import shutil
import subprocess
import time

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from sysadmd.auth.passwords import PamPasswordChecker
from tests.support import make_config, open_client, short_tempdir, start_daemon

TOOLS = ("useradd", "userdel", "groupadd", "groupdel", "chpasswd", "gpasswd")


def _run(*argv, stdin=None):
    subprocess.run(argv, input=stdin, check=True, capture_output=True, text=True, timeout=30)


@pytest.mark.slow  # real daemons or child processes
class RealPam(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        if os.geteuid() != 0 or not all(shutil.which(t) for t in TOOLS):
            raise unittest.SkipTest("needs root and the shadow tools to create a temporary account")
        suffix = secrets.token_hex(3)
        self.group = f"sdpamg{suffix}"
        self.user = f"sdpamu{suffix}"
        self.password = secrets.token_urlsafe(12)
        _run("groupadd", self.group)
        self.addCleanup(_run, "groupdel", self.group)
        _run("useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "--groups", self.group, self.user)
        self.addCleanup(_run, "userdel", self.user)
        _run("chpasswd", stdin=f"{self.user}:{self.password}\n")
        cfg = make_config(short_tempdir(self), FULL_ACCESS_GROUPS=self.group, LIMITED_ACCESS_GROUPS="")
        self.running = yield start_daemon(self, cfg)  # no passwords= : the real PAM checker
        self.assertIsInstance(self.running.server.passwords, PamPasswordChecker)

    @defer.inlineCallbacks
    def test_right_password_logs_in_with_full_access(self):
        client = yield open_client(self, self.running)
        reply = yield client.call("rpc", "auth", {"username": self.user, "password": self.password})
        self.assertEqual(reply["name"], "response", reply)
        token, ttl = reply["args"]
        identity = self.running.server.tokens.check(token)
        self.assertEqual((identity.user, identity.full_access, identity.method), (self.user, True, "password"))
        query = yield client.call("rpc", "query", {})
        self.assertEqual(query["name"], "response")

    @defer.inlineCallbacks
    def test_wrong_password_is_401_and_a_slow_check_delays_nobody_else(self):
        failing = yield open_client(self, self.running)
        bystander = yield open_client(self, self.running)
        started = time.monotonic()
        d_fail = failing.call("rpc", "auth", {"username": self.user, "password": "not-" + self.password})
        marks = {}

        def arrived(reply):
            marks["failed"] = time.monotonic()
            return reply

        d_fail.addCallback(arrived)
        # Give the failing check a moment to reach PAM, then ask for something else.
        yield task.deferLater(reactor, 0.1, lambda: None)
        asked = time.monotonic()
        identify = yield bystander.call("rpc", "identify", "")
        answered = time.monotonic() - asked
        self.assertEqual(identify["name"], "response")
        self.assertLess(answered, 0.5, f"identify took {answered:.3f} s while a PAM check was failing")
        reply = yield d_fail
        self.assertEqual(reply["args"]["code"], "401")
        self.assertEqual(reply["args"]["detail"], "user name or password not accepted")
        failed_after = marks["failed"] - started
        self.assertGreater(failed_after, answered)
        # Recorded for the report: how long pam_unix made the failure take.
        print(f"\nPAM failure took {failed_after:.2f} s; identify meanwhile {answered * 1000:.1f} ms")

    @defer.inlineCallbacks
    def test_user_outside_the_access_groups_is_refused_even_with_the_right_password(self):
        _run("gpasswd", "--delete", self.user, self.group)
        client = yield open_client(self, self.running)
        reply = yield client.call("rpc", "auth", {"username": self.user, "password": self.password})
        self.assertEqual(reply["args"]["code"], "401")
