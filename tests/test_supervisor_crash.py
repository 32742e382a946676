"""A SIGKILLed daemon's supervised runs: a real ``twistd -n sysadmd`` runs an autostart
program whose worker detached (``setsid``, ignoring SIGTERM); the daemon is SIGKILLed and
the processes live on; the next start ends them (SIGTERM, then SIGKILL) before it starts
the program again, and the cut-off run's job reads interrupted."""

from __future__ import annotations

import base64
import os
import sys

import pytest
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from tests.support import alive, short_tempdir
from tests.test_dispatcher_durability import TwistdChild, eventually
from tests.test_sec_dispatcher import kill_quietly

pytestmark = pytest.mark.slow

PY = sys.executable


def pause(seconds):
    return task.deferLater(reactor, seconds, lambda: None)
DETACHER = """
import os, signal, time
if os.fork() == 0:
    os.setsid()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print('worker', os.getpid(), flush=True)
    time.sleep(1000)
    os._exit(0)
time.sleep(1000)
"""


class SupervisorCrashTests(TwistdChild, unittest.TestCase):
    timeout = 90

    @defer.inlineCallbacks
    def test_runs_cut_off_by_a_crash_are_ended_then_autostart_starts_anew(self):
        state_dir = short_tempdir(self)
        socket = os.path.join(state_dir, "sysadmd.sock")
        script = os.path.join(state_dir, "detacher.py")
        with open(script, "w") as f:
            f.write(DETACHER)
        proc, transport = self.spawn_twistd(state_dir)
        client = yield self.connect(proc, socket)
        sup = lambda **args: client.call("sysadm", "supervisor", args)  # noqa: E731
        reply = yield sup(action="push", job="detacher",
                          data={"command": [PY, script], "user": "root", "startsecs": 0.5, "autostart": True})
        self.assertEqual(reply["args"], {"result": "success"}, reply)
        reply = yield sup(action="start", job="detacher")
        self.assertEqual(reply["args"], {"result": "success"})

        def status():
            return sup(action="status", job="detacher")

        first = {}

        @defer.inlineCallbacks
        def worker_up():
            data = (yield status())["args"]["data"]
            if data["state"] != "RUNNING":
                return False
            log = yield client.call("core", "job_log", [data["job"]])
            text = base64.b64decode(log["args"]["data"]).decode()
            if "worker" in text:
                first.update(data, worker=int(text.split()[1]))
                return True
            return False
        for _ in range(100):
            if (yield worker_up()):
                break
            yield pause(0.1)
        self.assertIn("worker", first, "the detached worker never reported")
        leader, worker = first["pid"], first["worker"]
        self.addCleanup(kill_quietly, worker)
        self.addCleanup(kill_quietly, leader)

        transport.signalProcess("KILL")
        yield proc.ended
        yield client.closed
        self.assertTrue(alive(leader) and alive(worker), "the runs should outlive the SIGKILLed daemon")

        proc, transport = self.spawn_twistd(state_dir)
        client = yield self.connect(proc, socket)
        yield eventually(lambda: not alive(leader) and not alive(worker), timeout=20,
                         what="the cut-off run's processes to be ended")
        data = None
        for _ in range(200):
            data = (yield sup(action="status", job="detacher"))["args"]["data"]
            if data["state"] == "RUNNING":
                break
            yield pause(0.1)
        self.assertEqual(data["state"], "RUNNING")
        self.assertNotIn(data["pid"], (leader, worker))
        old = yield client.call("core", "get_jobs", [[["id", "=", first["job"]]], {"get": True}])
        self.assertEqual((old["args"]["state"], old["args"]["outcome"]), ("ABORTED", "interrupted"))
        output = b"".join(proc.output).decode(errors="replace")
        self.assertIn("program detacher: its run was cut off by a crash", output)
        reply = yield sup(action="stop", job="detacher")
        self.assertEqual(reply["args"], {"result": "success"})
        yield client.close()
        transport.signalProcess("TERM")
        yield proc.ended
