"""The supervisor with real processes: every state transition, stop semantics, user drop,
runs as jobs, and the verbs' replies."""

from __future__ import annotations

import os
import signal
import time

import pytest
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from tests.supervisor_support import definition, handled, make_supervisor, py
from tests.support import alive

pytestmark = pytest.mark.slow


def sleep(seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)


class SupervisorProcessTests(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def push(self, sup, name, data):
        reply = yield handled(sup, "push", name, data)
        self.assertEqual(reply.status, "success", reply)

    @defer.inlineCallbacks
    def test_start_running_stop_and_the_run_is_a_job(self):
        sup = make_supervisor(self)
        yield self.push(sup, "echoer", definition(py("import time,sys; print('hello', flush=True); time.sleep(60)")))
        reply = yield handled(sup, "start", "echoer")
        self.assertEqual(reply.status, "success")
        yield sup.watch.until("echoer", "RUNNING")
        again = yield handled(sup, "start", "echoer")
        self.assertEqual(again.status, "redundant")
        status = (yield handled(sup, "status", "echoer")).data
        self.assertEqual(status["state"], "RUNNING")
        self.assertTrue(alive(status["pid"]))
        reply = yield handled(sup, "stop", "echoer")
        self.assertEqual(reply.status, "success")
        self.assertFalse(alive(status["pid"]))
        self.assertEqual(sup.watch.states("echoer"), ["STARTING", "RUNNING", "STOPPING", "STOPPED"])
        job = sup.jobs.get(status["job"])
        self.assertEqual((job["method"], job["state"], job["outcome"]), ("supervisor.run", "ABORTED", "killed"))
        with open(job["logs_path"], "rb") as f:
            self.assertEqual(f.read(), b"hello\n")
        self.assertEqual((yield handled(sup, "stop", "echoer")).status, "redundant")

    @defer.inlineCallbacks
    def test_crash_loop_backs_off_with_growing_delays_then_fatal(self):
        sup = make_supervisor(self)
        yield self.push(sup, "crasher", definition(["false"], startsecs=5, startretries=2))
        yield handled(sup, "start", "crasher")
        fatal = yield sup.watch.until("crasher", "FATAL")
        self.assertEqual(sup.watch.states("crasher"),
                         ["STARTING", "BACKOFF", "STARTING", "BACKOFF", "STARTING", "BACKOFF", "FATAL"])
        starts = [e["time"] for e in sup.watch.events if e["state"] == "STARTING"]
        gaps = [b - a for a, b in zip(starts, starts[1:])]
        self.assertGreaterEqual(gaps[0], 0.95)
        self.assertGreaterEqual(gaps[1], 1.95)  # 1 s, then 2 s: growing, never a busy loop
        self.assertEqual(fatal["last_exit_status"], 1)
        status = (yield handled(sup, "status", "crasher")).data
        self.assertEqual((status["retries"], status["restarts"], status["last_exit_status"]), (3, 2, 1))
        repaired = yield handled(sup, "repair", "crasher")
        self.assertEqual(repaired.status, "success")
        status = (yield handled(sup, "status", "crasher")).data
        self.assertEqual((status["state"], status["retries"]), ("STOPPED", 0))
        self.assertEqual((yield handled(sup, "repair", "crasher")).status, "redundant")

    @defer.inlineCallbacks
    def test_autorestart_unexpected_follows_exitcodes(self):
        sup = make_supervisor(self)
        # Exits 3 (expected) after startsecs: EXITED and not restarted.
        yield self.push(sup, "expected", definition(py("import time,sys; time.sleep(0.5); sys.exit(3)"),
                                                    exitcodes=[0, 3], autorestart="unexpected", startsecs=0.2))
        # Exits 4 (unexpected): restarted.
        yield self.push(sup, "unexpected", definition(py("import time,sys; time.sleep(0.5); sys.exit(4)"),
                                                      exitcodes=[0, 3], autorestart="unexpected", startsecs=0.2))
        yield handled(sup, "start", "expected")
        yield handled(sup, "start", "unexpected")
        exited = yield sup.watch.until("expected", "EXITED")
        self.assertEqual((exited["expected"], exited["last_exit_status"]), (True, 3))
        yield sup.watch.until("unexpected", "EXITED")
        yield sup.watch.until("unexpected", "RUNNING")  # started again
        yield sleep(0.3)
        self.assertEqual(sup.programs["expected"].state, "EXITED")
        self.assertGreaterEqual(sup.programs["unexpected"].restarts, 1)
        self.assertIn("EXITED", sup.watch.states("unexpected"))
        job = sup.jobs.get(sup.programs["expected"].job_id)
        self.assertEqual((job["outcome"], job["return_codes"]), ("succeeded", [3]))

    @defer.inlineCallbacks
    def test_a_program_ignoring_stopsignal_is_killed_after_stopwaitsecs(self):
        sup = make_supervisor(self)
        code = "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); " \
               "time.sleep(60)"
        yield self.push(sup, "stubborn", definition(py(code), stopwaitsecs=1, startsecs=0.5))
        yield handled(sup, "start", "stubborn")
        yield sup.watch.until("stubborn", "RUNNING")
        pid = sup.programs["stubborn"].pid
        began = time.monotonic()
        reply = yield handled(sup, "stop", "stubborn")
        took = time.monotonic() - began
        self.assertEqual(reply.status, "success")
        self.assertFalse(alive(pid))
        self.assertGreaterEqual(took, 0.95)  # SIGTERM was ignored for stopwaitsecs
        self.assertLess(took, 5)

    @defer.inlineCallbacks
    def test_stop_reaches_every_child_of_the_group(self):
        sup = make_supervisor(self)
        code = ("import os,time\n"
                "for i in range(3):\n"
                "    if os.fork() == 0:\n"
                "        time.sleep(60); os._exit(0)\n"
                "print('forked', flush=True); time.sleep(60)\n")
        yield self.push(sup, "forker", definition(py(code), stopsignal="INT", startsecs=0.5))
        yield handled(sup, "start", "forker")
        yield sup.watch.until("forker", "RUNNING")
        pgid = sup.programs["forker"].pid
        members = [int(p) for p in os.listdir("/proc") if p.isdigit() and _pgid(int(p)) == pgid]
        self.assertGreaterEqual(len(members), 4, members)
        reply = yield handled(sup, "stop", "forker")
        self.assertEqual(reply.status, "success")
        # A child the scan saw exiting (its environment already released) may need a moment.
        for _ in range(40):
            if not [p for p in members if alive(p)]:
                break
            yield sleep(0.05)
        self.assertEqual([p for p in members if alive(p)], [])

    @defer.inlineCallbacks
    def test_kill_sends_sigkill_at_once(self):
        sup = make_supervisor(self)
        code = "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
        yield self.push(sup, "victim", definition(py(code), stopwaitsecs=30, startsecs=0.2))
        yield handled(sup, "start", "victim")
        yield sup.watch.until("victim", "RUNNING")
        began = time.monotonic()
        reply = yield handled(sup, "kill", "victim")
        self.assertEqual(reply.status, "success")
        self.assertLess(time.monotonic() - began, 3)
        self.assertEqual(sup.programs["victim"].state, "STOPPED")
        self.assertEqual(sup.programs["victim"].last_exit, -1)


def _pgid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[2])
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return -1


_ = signal
