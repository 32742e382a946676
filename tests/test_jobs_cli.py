"""``sysadm jobs`` and ``sysadm job show|log|wait|abort``: the real client in a child
process against a real daemon over its local socket."""

from __future__ import annotations

import json
import os
import time

import pytest
from twisted.internet import defer
from twisted.trial import unittest

from sysadmd.client import jobverbs
from sysadmd.client.errors import ClientError
from tests.support import FakePasswords, make_config, short_tempdir, start_daemon
from tests.test_client_cli import run_cli

pytestmark = pytest.mark.slow


class JobVerbsTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        if os.geteuid() != 0:
            raise unittest.SkipTest("the local socket gives full access to root only")
        self.home = short_tempdir(self, "cli")
        cfg = make_config(short_tempdir(self), JOB_KILL_GRACE=1, JOB_WORKDIR="/tmp")
        self.running = yield start_daemon(self, cfg, passwords=FakePasswords({"root": "pw"}))
        self.client = yield self.running.connect_unix()
        self.addCleanup(self.client.close)

    def local(self, *argv, **kw):
        return run_cli(self.home, "--socket", self.running.config.socket, *argv, **kw)

    @defer.inlineCallbacks
    def start_job(self, job_id, command):
        yield self.client.call("rpc", "dispatcher", {"action": "run", job_id: command})
        reply = yield self.client.call("core", "get_jobs", [[["dispatcher_id", "=", job_id]], {"get": True}])
        return reply["args"]["id"]

    @defer.inlineCallbacks
    def test_log_prints_every_byte_and_wait_exits_with_the_jobs_code(self):
        job_id = yield self.start_job("big", ["seq 1 200000", 'sh -c "printf \'\\377\\000end\'; exit 6"'])
        waited = yield self.local("job", "wait", str(job_id))
        self.assertEqual(waited.code, 6, waited.err)
        self.assertIn(f"job {job_id} FAILED (failed)", waited.out)
        log = yield self.local("job", "log", str(job_id))
        self.assertEqual(log.code, 0, log.err)
        expected = "".join(f"{i}\n" for i in range(1, 200001))
        self.assertEqual(log.out[:len(expected)], expected)
        self.assertEqual(len(log.out), len(expected) + len("\ufffd\x00end"))  # the two odd bytes came through
        shown = yield self.local("--json", "job", "show", str(job_id))
        self.assertEqual(json.loads(shown.out)["return_codes"], [0, 6])

    @defer.inlineCallbacks
    def test_follow_until_the_end_and_abort(self):
        # The job prints its first line, then waits (at most 20 s) until the client shows it.
        gate = os.path.join(self.home, "gate")
        job_id = yield self.start_job("ticker", [f'sh -c "echo tick 1; for i in $(seq 200); do [ -e {gate} ] && break;'
                                                 f' sleep 0.1; done; for i in 2 3 4 5; do echo tick $i; done"'])

        def seen(proto, text):
            if "tick 1" in text and not os.path.exists(gate):
                open(gate, "w").close()

        followed = yield self.local("job", "log", "--follow", str(job_id), on_out=seen)
        self.assertEqual(followed.out, "".join(f"tick {i}\n" for i in range(1, 6)))
        self.assertGreater(len(followed.chunks), 1)  # printed as it came, then waited for the rest
        sleeper = yield self.start_job("sleeper", ["sleep 30"])
        aborted = yield self.local("job", "abort", str(sleeper))
        self.assertEqual(aborted.code, 0, aborted.err)
        self.assertIn(f"aborted job {sleeper} (killed)", aborted.out)
        waited = yield self.local("job", "wait", str(sleeper))
        self.assertEqual(waited.code, 1)
        self.assertIn("ABORTED (killed)", waited.out)
        again = yield self.local("job", "abort", str(sleeper))
        self.assertEqual(again.code, 1)
        self.assertIn("already finished", again.err)

    @defer.inlineCallbacks
    def test_jobs_table_and_filters(self):
        done = yield self.start_job("first", ["true"])
        yield self.client.call("core", "job_wait", [done, {"timeout": 20}])
        running = yield self.start_job("second", ['sh -c "sleep 30"'])
        listing = yield self.local("jobs")
        self.assertEqual(listing.code, 0, listing.err)
        lines = listing.out.splitlines()
        self.assertEqual(lines[0].split()[:7], ["ID", "NAME", "STATE", "PROGRESS", "OWNER", "STARTED", "DURATION"])
        row = next(line for line in lines if line.split()[0] == str(done))
        self.assertIn("succeeded", row)
        self.assertIn("root@uid:0", row)
        self.assertIn("true", row)
        active = yield self.local("--json", "jobs", "--state", "active")
        self.assertEqual([j["id"] for j in json.loads(active.out)], [running])
        mine = yield self.local("--json", "jobs", "--owner", "nobody-else")
        self.assertEqual(json.loads(mine.out), [])
        recent = yield self.local("--json", "jobs", "--since", "1h")
        self.assertEqual(sorted(j["id"] for j in json.loads(recent.out)), [done, running])
        bad = yield self.local("jobs", "--state", "sleepy")
        self.assertEqual(bad.code, 2)
        self.assertIn("--state 'sleepy'", bad.err)
        yield self.client.call("core", "job_abort", [running])


class RenderingTests(unittest.TestCase):
    def test_progress_bar_and_outcomes(self):
        running = {"state": "RUNNING", "progress": {"percent": 50.0}}
        self.assertEqual(jobverbs.progress_bar(running), "[#####-----]  50%")
        self.assertEqual(jobverbs.progress_bar({"state": "FAILED", "outcome": "failed", "return_codes": [0, 3]}),
                         "failed (3)")
        self.assertEqual(jobverbs.progress_bar({"state": "WAITING", "progress": {}}), "waiting")

    def test_since_forms(self):
        now = 1_000_000.0
        self.assertEqual(jobverbs.parse_since("30m", now), now - 1800)
        self.assertEqual(jobverbs.parse_since("1700000000", now), 1700000000.0)
        self.assertEqual(jobverbs.parse_since("2026-11-26T08:00", now),
                         time.mktime((2026, 11, 26, 8, 0, 0, 0, 0, -1)))
        self.assertRaises(ClientError, jobverbs.parse_since, "yesterday", now)

    def test_exit_codes(self):
        self.assertEqual(jobverbs.exit_code_of({"outcome": "succeeded"}), 0)
        self.assertEqual(jobverbs.exit_code_of({"outcome": "failed", "return_codes": [0, 7]}), 7)
        self.assertEqual(jobverbs.exit_code_of({"outcome": "failed", "return_codes": [None]}), 1)
        self.assertEqual(jobverbs.exit_code_of({"outcome": "killed", "return_codes": [None]}), 1)
