"""Dispatcher jobs survive restarts: in-process daemons on one state dir, and a real twistd."""

from __future__ import annotations

import pytest
import os
import sys
import time

from twisted.internet import defer, protocol, reactor
from twisted.trial import unittest

from sysadmd.assembly import build
from sysadmd.client.wsclient import connect_unix
from tests.support import FakePasswords, make_config, short_tempdir
from tests.test_dispatcher_wss import EventLog, kill_group_quietly, sleep

PY = sys.executable
MAIN = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@defer.inlineCallbacks
def eventually(check, timeout=15.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        yield sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class InProcessRestartTests(unittest.TestCase):
    timeout = 40

    @defer.inlineCallbacks
    def start(self, cfg):
        daemon = build(cfg, reactor, passwords=FakePasswords({}))
        daemon.startService()
        for listener in daemon.listeners.values():
            yield listener.ready
        return daemon

    @defer.inlineCallbacks
    def test_pending_jobs_run_after_restart_and_logs_stay_readable(self):
        cfg = make_config(short_tempdir(self), MAX_PARALLEL_JOBS=1, SOCKET="none", JOB_KILL_GRACE=2)
        first = yield self.start(cfg)
        stopped = False
        try:
            dispatcher = first.dispatcher
            dispatcher.submit("kept", ["echo kept"])
            yield eventually(lambda: dispatcher.history(["kept"]), what="job kept")
            dispatcher.submit("long", ["sleep 30", "echo never"])
            dispatcher.submit("after", ["echo after"])
            yield eventually(lambda: dispatcher.active["long"].process is not None, what="long to run")
            self.assertEqual(dispatcher.active["after"].state, "pending")
            yield first.stopService()
            stopped = True
        finally:
            if not stopped:
                yield first.stopService()

        second = yield self.start(cfg)
        self.addCleanup(second.stopService)
        dispatcher = second.dispatcher
        after = yield eventually(lambda: dispatcher.history(["after"]), what="job after")
        self.assertEqual(after[0]["echo after"], "after\n")
        self.assertEqual(after[0]["return_codes/echo after"], "0")
        long = dispatcher.history(["long"])[0]
        self.assertEqual(long["interrupted"], "true")
        self.assertNotIn("killed", long)
        self.assertEqual(long["return_codes/sleep 30"], "-1")
        self.assertNotIn("return_codes/echo never", long)
        kept = dispatcher.history(["kept"])[0]
        self.assertEqual(kept["echo kept"], "kept\n")
        self.assertEqual([j["process_id"] for j in dispatcher.history()], ["after", "long", "kept"])


class TwistdProcess(protocol.ProcessProtocol):
    def __init__(self):
        self.output = []
        self.ended = defer.Deferred()

    def outReceived(self, data):
        self.output.append(data)

    errReceived = outReceived

    def processEnded(self, reason):
        self.ended.callback(reason.value)


class TwistdChild:
    """A real ``twistd -n sysadmd`` child on a state dir, and a local-socket client to it."""

    def spawn_twistd(self, state_dir, *extra):
        proc = TwistdProcess()
        argv = [PY, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "sysadmd",
                "--port", "tcp:0:interface=127.0.0.1", "--state-dir", state_dir, *extra]
        env = dict(os.environ, PYTHONPATH=MAIN)
        transport = reactor.spawnProcess(proc, PY, argv, env=env, path=MAIN)

        def stop_if_running():
            if not proc.ended.called:
                transport.signalProcess("KILL")
                return proc.ended

        self.addCleanup(stop_if_running)
        return proc, transport

    @defer.inlineCallbacks
    def connect(self, proc, path):
        deadline = time.monotonic() + 30
        while True:
            try:
                client = yield connect_unix(reactor, path, timeout=5)
                break
            except Exception:
                if proc.ended.called or time.monotonic() > deadline:
                    raise AssertionError("twistd did not come up:\n" + b"".join(proc.output).decode(errors="replace"))
                yield sleep(0.2)
        self.addCleanup(client.close)
        return client


@pytest.mark.slow  # real daemons or child processes
class TwistdRestartTests(TwistdChild, unittest.TestCase):
    """The daemon is SIGKILLed under a running job; after a restart the job reads interrupted."""

    timeout = 90

    @defer.inlineCallbacks
    def test_job_running_when_daemon_is_killed_is_interrupted(self):
        state_dir = short_tempdir(self)
        socket = os.path.join(state_dir, "sysadmd.sock")
        proc, transport = self.spawn_twistd(state_dir)
        client = yield self.connect(proc, socket)
        log = EventLog(client)
        yield client.call("events", "subscribe", "dispatcher")
        long = f"{PY} -c \"import os,time; print(os.getpgid(0), flush=True); time.sleep(60)\""
        reply = yield client.call("rpc", "dispatcher", {"action": "run", "long": long})
        self.assertEqual(reply["args"], {"started": ["long"]})
        pgid = int((yield log.output_line("long")))
        self.addCleanup(kill_group_quietly, pgid)  # the job outlives its SIGKILLed daemon

        transport.signalProcess("KILL")
        yield proc.ended
        yield client.closed
        os.killpg(pgid, 0)  # still running, orphaned

        proc, transport = self.spawn_twistd(state_dir)
        client = yield self.connect(proc, socket)
        reply = yield client.call("rpc", "dispatcher", {"action": "history", "job_id": "long"})
        [job] = reply["args"]["history"]
        self.assertEqual(job["interrupted"], "true")
        self.assertEqual(job[f"return_codes/{long}"], "-1")
        self.assertEqual(job[long], f"{pgid}\n")
        self.assertEqual(job["state"], "finished")
        listed = yield client.call("rpc", "dispatcher", {"action": "list"})
        self.assertEqual(listed["args"], {"jobs": {}})
        yield client.close()
        transport.signalProcess("TERM")
        yield proc.ended  # twistd re-raises SIGTERM after a clean shutdown
        self.assertIn(b"Server Shut Down.", b"".join(proc.output))
