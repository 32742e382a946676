"""The supervisor inside a real daemon: sysadm/supervisor over TLS WebSockets with full
and limited users, supervisor events, the user drop seen in /proc, autostart programs
across daemon restarts on the same state dir, and the leftovers of a crashed run."""

from __future__ import annotations

import base64
import grp
import os
import pwd
import secrets
import signal
import subprocess

import pytest
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from sysadmd.supervisor import core
from tests.support import FakePasswords, logged_in_client, make_config, short_tempdir, start_daemon
from tests.supervisor_support import definition, handled, make_supervisor, py
from tests.support import alive

pytestmark = pytest.mark.slow

SLEEPER = py("import time; print('up', flush=True); time.sleep(120)")


def wait_for(predicate, timeout=15.0, step=0.05):
    @defer.inlineCallbacks
    def poll():
        for _ in range(int(timeout / step)):
            if predicate():
                return True
            yield task.deferLater(reactor, step, lambda: None)
        raise AssertionError("condition not met in time")
    return poll()


def proc_status(pid: int) -> dict:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


class DaemonCase(unittest.TestCase):
    timeout = 40

    @defer.inlineCallbacks
    def setUp(self):
        self.cfg = make_config(short_tempdir(self), LIMITED_ACCESS_GROUPS="daemon")
        self.running = yield start_daemon(self, self.cfg, passwords=FakePasswords({"root": "pw", "daemon": "pw2"}))
        self.root = yield self.login("root", "pw")

    def login(self, user, password):
        return logged_in_client(self, self.running, user, password)

    def sup(self, client, **args):
        return client.call("sysadm", "supervisor", args)


class SupervisorApiTests(DaemonCase):

    @defer.inlineCallbacks
    def test_verbs_events_and_limited_access_over_the_api(self):
        events = []
        self.root.event_listeners.append(events.append)
        yield self.root.call("events", "subscribe", ["supervisor"])
        reply = yield self.sup(self.root, action="push", job="web", data=definition(SLEEPER, startsecs=0.2))
        self.assertEqual(reply["args"], {"result": "success"}, reply)
        reply = yield self.sup(self.root, action="start", job="web")
        self.assertEqual(reply["args"], {"result": "success"})
        yield wait_for(lambda: any(e["args"]["state"] == "RUNNING" for e in events))
        self.assertEqual([(e["name"], e["args"]["program"], e["args"]["state"]) for e in events],
                         [("supervisor", "web", "STARTING"), ("supervisor", "web", "RUNNING")])
        status = (yield self.sup(self.root, action="status", job="web"))["args"]
        self.assertEqual((status["result"], status["job"], status["data"]["state"]), ("status", "web", "RUNNING"))
        self.assertTrue(alive(status["data"]["pid"]))
        again = yield self.sup(self.root, action="start", job="web")
        self.assertEqual(again["args"], {"result": "redundant"})

        limited = yield self.login("daemon", "pw2")
        listed = (yield self.sup(limited, action="list"))["args"]
        self.assertEqual((listed["data"], listed["programs"][0]["state"]), (["web"], "RUNNING"))
        pulled = (yield self.sup(limited, action="pull", job="web"))["args"]
        self.assertEqual((pulled["result"], pulled["data"]["command"]), ("file", SLEEPER))
        denied = yield self.sup(limited, action="stop", job="web")
        self.assertEqual((denied["name"], denied["args"]["code"]), ("error", "403"), denied)
        self.assertTrue(alive(status["data"]["pid"]))

        # The run is a job: core/job_log of it has the output.
        log = yield self.root.call("core", "job_log", [status["data"]["job"]])
        self.assertEqual(base64.b64decode(log["args"]["data"]), b"up\n")
        missing = yield self.sup(self.root, action="status", job="ghost")
        self.assertEqual(missing["args"]["code"], "404", missing)
        bad = yield self.sup(self.root, action="push", job="web2", data={"command": "x", "user": "root", "umask": "999"})
        self.assertEqual(bad["args"]["code"], "400")
        self.assertIn("umask:", bad["args"]["detail"])
        reply = yield self.sup(self.root, action="delete", job="web")
        self.assertEqual(reply["args"], {"result": "success"})
        self.assertFalse(alive(status["data"]["pid"]))
        self.assertEqual((yield self.sup(self.root, action="list"))["args"]["data"], [])


class UserDropTests(unittest.TestCase):
    timeout = 40

    def setUp(self):
        if os.geteuid() != 0:
            raise unittest.SkipTest("needs root to create a user")
        self.user = "sdsup" + secrets.token_hex(3)
        self.group = self.user + "x"
        subprocess.run(["groupadd", self.group], check=True)
        self.addCleanup(subprocess.run, ["groupdel", self.group], check=False)
        subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "-G", self.group, self.user],
                       check=True)
        self.addCleanup(subprocess.run, ["userdel", self.user], check=False)

    @defer.inlineCallbacks
    def test_the_program_runs_as_its_user_with_its_groups_and_umask(self):
        sup = make_supervisor(self)
        data = definition(["sleep", "60"], user=self.user,
                          umask="027", directory="/tmp", environment={"GREETING": "hi"})
        self.assertEqual((yield handled(sup, "push", "dropped", data)).status, "success")
        yield handled(sup, "start", "dropped")
        yield sup.watch.until("dropped", "RUNNING")
        pid = sup.programs["dropped"].pid
        status = proc_status(pid)
        entry = pwd.getpwnam(self.user)
        self.assertEqual(status["Uid"].split(), [str(entry.pw_uid)] * 4)
        self.assertEqual(status["Gid"].split(), [str(entry.pw_gid)] * 4)
        self.assertEqual(sorted(status["Groups"].split()),
                         sorted({str(entry.pw_gid), str(grp.getgrnam(self.group).gr_gid)}))
        self.assertEqual(status["Umask"], "0027")
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
        self.assertEqual((env[b"USER"], env[b"GREETING"]), (self.user.encode(), b"hi"))
        self.assertIn(b"SYSADMD_JOB", env)
        self.assertEqual(os.readlink(f"/proc/{pid}/cwd"), "/tmp")
        self.assertEqual((yield handled(sup, "stop", "dropped")).status, "success")
        self.assertFalse(alive(pid))


class RestartTests(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_autostart_programs_start_again_with_the_daemon(self):
        cfg = make_config(short_tempdir(self))
        first = yield start_daemon(self, cfg, passwords=FakePasswords({}))
        sup = first.daemon.supervisor
        for name, auto in (("auto", True), ("manual", False)):
            reply = yield handled(sup, "push", name, definition(SLEEPER, autostart=auto, startsecs=0.2))
            self.assertEqual(reply.status, "success")
        yield handled(sup, "start", "auto")
        yield wait_for(lambda: sup.programs["auto"].state == "RUNNING")
        old_pid = sup.programs["auto"].pid
        yield first.daemon.stopService()
        self.assertFalse(alive(old_pid))  # a daemon that stops stops its programs

        second = yield start_daemon(self, cfg, passwords=FakePasswords({}))
        sup2 = second.daemon.supervisor
        self.assertEqual(sorted(sup2.programs), ["auto", "manual"])
        yield wait_for(lambda: sup2.programs["auto"].state == "RUNNING")
        self.assertNotEqual(sup2.programs["auto"].pid, old_pid)
        self.assertEqual(sup2.programs["manual"].state, "STOPPED")
        yield handled(sup2, "stop", "auto")

    @defer.inlineCallbacks
    def test_a_crashed_runs_leftovers_are_ended_before_autostart(self):
        self.patch(core, "LEFTOVER_GRACE", 0.5)
        state = short_tempdir(self)
        crashed = make_supervisor(self, state_dir=state, start=False)
        crashed.startService()
        stubborn = py("import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); "
                      "time.sleep(120)")
        yield handled(crashed, "push", "stubborn", definition(stubborn, autostart=True, startsecs=0.2))
        yield handled(crashed, "start", "stubborn")
        yield crashed.watch.until("stubborn", "RUNNING")
        pid = crashed.programs["stubborn"].pid
        self.addCleanup(lambda: os.kill(pid, signal.SIGKILL) if alive(pid) else None)
        # The "crash": the daemon forgets the run without stopping it; the marker stays stored.
        crashed.programs["stubborn"].handle.abandon()
        crashed.programs["stubborn"]._cancel_timer()

        revived = make_supervisor(self, state_dir=state)
        self.assertTrue(alive(pid))  # SIGTERM is ignored…
        self.assertEqual(revived.programs["stubborn"].state, "STOPPED")  # …and autostart waits
        yield revived.watch.until("stubborn", "RUNNING")
        self.assertFalse(alive(pid))  # SIGKILL after the grace, then the new run
        self.assertNotEqual(revived.programs["stubborn"].pid, pid)


class ServicesBackendTests(DaemonCase):
    """Supervisor programs in sysadm/services (when the class is routed on this host)."""

    @defer.inlineCallbacks
    def test_programs_are_listed_started_stopped_and_enabled_as_services(self):
        if "services" not in self.running.daemon.sysclasses:
            raise unittest.SkipTest("sysadm/services is not routed on this host (systemd runs it)")
        name = "sdsvc" + secrets.token_hex(3)
        reply = yield self.sup(self.root, action="push", job=name, data=definition(SLEEPER, startsecs=0.2))
        self.assertEqual(reply["args"], {"result": "success"})
        svc = lambda **args: self.root.call("sysadm", "services", args)  # noqa: E731
        listed = (yield svc(action="list_services"))["args"]["services"][name]
        self.assertEqual((listed["tag"], listed["is_running"], listed["is_enabled"]), ("supervisor", "false", "false"))
        started = yield svc(action="start", services=[name])
        self.assertEqual(started["args"], {"services_started": [name]}, started)
        program = self.running.daemon.supervisor.programs[name]
        self.assertIn(program.state, ("STARTING", "RUNNING"))
        pid = program.pid
        restarted = yield svc(action="restart", services=name)
        self.assertEqual(restarted["args"], {"services_restarted": [name]}, restarted)
        self.assertFalse(alive(pid))
        enabled = yield svc(action="enable", services=name)
        self.assertEqual(enabled["args"], {"services_enabled": [name]})
        self.assertTrue(program.definition.autostart)
        self.assertFalse(program.pending)  # autostart changes no running program
        pulled = (yield self.sup(self.root, action="pull", job=name))["args"]["data"]
        self.assertTrue(pulled["autostart"])
        stopped = yield svc(action="stop", services=[name])
        self.assertEqual(stopped["args"], {"services_stopped": [name]})
        self.assertEqual(program.state, "STOPPED")
