"""``sysadm svc …``: the real client in a child process over the daemon's local socket
(root: full access by peer uid) driving real supervised programs."""

from __future__ import annotations

import json
import os

import pytest
from twisted.internet import defer
from twisted.trial import unittest

from sysadmd.client import svcverbs
from tests.support import make_config, short_tempdir, start_daemon
from tests.supervisor_support import PY
from tests.support import alive
from tests.test_client_cli import run_cli

pytestmark = pytest.mark.slow


class SvcVerbs(unittest.TestCase):
    timeout = 90

    @defer.inlineCallbacks
    def setUp(self):
        if os.geteuid() != 0:
            raise unittest.SkipTest("full access over the local socket needs root")
        self.home = short_tempdir(self, "cli")
        self.running = yield start_daemon(self, make_config(short_tempdir(self)))

    def svc(self, *argv, **kw):
        return run_cli(self.home, "--socket", self.running.config.socket, "svc", *argv, **kw)

    @defer.inlineCallbacks
    def test_push_start_list_log_restart_stop_pull_delete(self):
        path = os.path.join(self.home, "job.tm.json")
        definition = {"name": "ticker", "command": [PY, "-c", "import time; print('tick', flush=True); time.sleep(60)"],
                      "user": "root", "autostart": False, "startsecs": 0.3}
        with open(path, "w") as f:
            json.dump(definition, f)
        pushed = yield self.svc("push", path)
        self.assertEqual(pushed.code, 0, pushed.err)
        self.assertIn("ticker: stored", pushed.out)
        started = yield self.svc("start", "ticker")
        self.assertEqual((started.code, started.out.strip()), (0, "ticker: started"), started.err)
        again = yield self.svc("start", "ticker")
        self.assertEqual(again.out.strip(), "ticker: already starting or running")
        sup = self.running.daemon.supervisor
        for _ in range(100):
            if sup.programs["ticker"].state == "RUNNING":
                break
            yield deferLater(0.05)
        listed = yield self.svc("list")
        self.assertEqual(listed.code, 0, listed.err)
        self.assertTrue(listed.out.startswith("NAME"), listed.out)
        self.assertRegex(listed.out, rf"(?m)^ticker\s+RUNNING\s+{sup.programs['ticker'].pid}\s")
        as_json = yield self.svc("--json", "list")
        self.assertEqual(json.loads(as_json.out)["programs"][0]["state"], "RUNNING")
        status = yield self.svc("status", "ticker")
        self.assertRegex(status.out, r"^ticker\s+RUNNING\s+pid \d+, uptime 0:00:0\d")
        log = yield self.svc("log", "ticker")
        self.assertEqual((log.code, log.out), (0, "tick\n"), log.err)
        first_pid = sup.programs["ticker"].pid
        restarted = yield self.svc("restart", "ticker")
        self.assertEqual(restarted.code, 0, restarted.err)
        self.assertFalse(alive(first_pid))
        self.assertNotEqual(sup.programs["ticker"].pid, first_pid)
        stopped = yield self.svc("stop", "ticker")
        self.assertEqual(stopped.out.strip(), "ticker: stopped")
        pulled = yield self.svc("pull", "ticker")
        self.assertEqual(json.loads(pulled.out)["command"], definition["command"])
        missing = yield self.svc("start", "ghost")
        self.assertEqual(missing.code, 1)
        self.assertIn("no program named 'ghost'", missing.err)
        deleted = yield self.svc("delete", "ticker")
        self.assertEqual(deleted.out.strip(), "ticker: stopped and deleted")
        empty = yield self.svc("list")
        self.assertIn("no programs", empty.out)

    @defer.inlineCallbacks
    def test_bad_definition_file_and_field_errors(self):
        path = os.path.join(self.home, "bad.json")
        with open(path, "w") as f:
            f.write("[1, 2]")
        bad = yield self.svc("push", path)
        self.assertEqual(bad.code, 2)
        self.assertIn("a definition is a JSON object", bad.err)
        with open(path, "w") as f:
            json.dump({"name": "x", "command": ["true"], "user": "root", "stopsignal": "STOP"}, f)
        refused = yield self.svc("push", path)
        self.assertEqual(refused.code, 1)
        self.assertIn("stopsignal:", refused.err)


def deferLater(seconds):
    from twisted.internet import reactor, task
    return task.deferLater(reactor, seconds, lambda: None)


class Rendering(unittest.TestCase):
    def test_status_line_and_uptime(self):
        self.assertEqual(svcverbs.uptime_text(3725), "1:02:05")
        self.assertEqual(svcverbs.uptime_text(90061), "1d 1:01:01")
        line = svcverbs.status_line({"name": "web", "state": "FATAL", "error": "exited with 1 within startsecs=1"})
        self.assertEqual(line.split(None, 2), ["web", "FATAL", "exited with 1 within startsecs=1"])
