"""sysadm/services on systemd, for real over D-Bus: a private ``dbus-daemon`` on a Unix
socket in a temporary directory, and a stand-in ``org.freedesktop.systemd1`` manager (this
file run as a program: ``python tests/test_services_systemd.py standin ADDRESS UNITS.json``)
written with dbus-fast's ServiceInterface, holding a few units in memory and exposing the
Manager methods and signals the backend uses.  These machines run no systemd; the stand-in
answers as systemd does (its error names and messages, JobRemoved after each job).

The backends that ran are printed (``pytest -s`` or ``-rA`` shows them)."""

import asyncio
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from typing import Annotated

import pytest
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from sysadmd.wire.envelope import ApiError

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SERVICE_KEYS = {"name", "tag", "path", "description", "is_enabled", "is_running"}
DBUS_DAEMON = shutil.which("dbus-daemon")

UNITS = [
    {"unit": "cron.service", "description": "Regular background program processing daemon", "active": "active",
     "state": "enabled", "path": "/lib/systemd/system/cron.service"},
    {"unit": "web.service", "description": "A web server", "active": "inactive", "state": "disabled",
     "path": "/etc/systemd/system/web.service"},
    {"unit": "broken.service", "description": "Fails when started", "active": "inactive", "state": "disabled",
     "path": "/etc/systemd/system/broken.service", "behaviour": "fail"},
    {"unit": "masked.service", "description": "", "active": "inactive", "state": "masked",
     "path": "/etc/systemd/system/masked.service", "behaviour": "masked"},
    {"unit": "stuck.service", "description": "Its start job never ends", "active": "inactive", "state": "disabled",
     "path": "/etc/systemd/system/stuck.service", "behaviour": "hang"},
    {"unit": "early.service", "description": "JobRemoved arrives before the reply", "active": "inactive",
     "state": "disabled", "path": "/etc/systemd/system/early.service", "behaviour": "early"},
    {"unit": "helper.service", "description": "Started by other units", "active": "inactive", "state": "static",
     "path": "/lib/systemd/system/helper.service", "behaviour": "static"},
    {"unit": "getty@.service", "description": "", "active": "inactive", "state": "enabled",
     "path": "/lib/systemd/system/getty@.service"},
    {"unit": "getty@tty1.service", "description": "Getty on tty1", "active": "active", "state": None, "path": None},
    {"unit": "dev-sda.device", "description": "a device, not a service", "active": "active", "state": None,
     "path": None},
]

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={path}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


# --- the private bus and the stand-in manager (test side) -----------------------------------
def _read_line(proc, what, timeout=20.0):
    """The first line *proc* prints, waited for at most *timeout* seconds."""
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.poll() is not None else ""
            raise AssertionError(f"{what} printed no line within {timeout} s: {buf!r} {err[-2000:]}")
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk and proc.poll() is not None:
                continue
            buf += chunk
    return buf.split(b"\n", 1)[0].decode()


class PrivateBus:
    """A dbus-daemon on ``<dir>/bus`` with the stand-in manager on it."""

    def __init__(self, directory, units=UNITS, generate=0):
        self.directory = directory
        self.socket = os.path.join(directory, "bus")
        self.address = f"unix:path={self.socket}"
        self.units_file = os.path.join(directory, "units.json")
        with open(self.units_file, "w") as f:
            json.dump({"units": units, "generate": generate}, f)
        self.daemon = None
        self.standin = None

    def start(self):
        config = os.path.join(self.directory, "bus.conf")
        with open(config, "w") as f:
            f.write(BUS_CONFIG.format(path=self.socket))
        self.daemon = subprocess.Popen([DBUS_DAEMON, f"--config-file={config}", "--nofork", "--print-address=1"],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _read_line(self.daemon, "dbus-daemon")
        env = dict(os.environ, PYTHONPATH=ROOT)
        self.standin = subprocess.Popen([sys.executable, os.path.abspath(__file__), "standin", self.address,
                                         self.units_file], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        line = _read_line(self.standin, "the stand-in systemd manager")
        assert line == "ready", line

    def stop(self):
        for proc in (self.standin, self.daemon):
            if proc is not None and proc.poll() is None:
                proc.kill()
            if proc is not None:
                proc.wait(10)
                proc.stdout.close()
                proc.stderr.close()
        self.standin = self.daemon = None


def eventually(condition, what, timeout=10.0, step=0.02):
    """Poll *condition* (a Deferred-returning or plain callable) until true; bounded."""

    @defer.inlineCallbacks
    def run():
        deadline = time.monotonic() + timeout
        while True:
            value = yield defer.maybeDeferred(condition)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} did not happen within {timeout} s")
            yield task.deferLater(reactor, step, lambda: None)

    return run()


def requires_bus(testcase):
    if DBUS_DAEMON is None:
        raise unittest.SkipTest("dbus-daemon is not installed (Debian package dbus-daemon; .ci/run installs it)")
    from sysadmd.sysclasses.systemd import dbus_fast_missing
    missing = dbus_fast_missing()
    if missing:
        raise unittest.SkipTest(missing)


class BusCase(unittest.TestCase):
    units = UNITS
    job_timeout = 10.0
    clock = None

    def setUp(self):
        requires_bus(self)
        from tests.support import short_tempdir
        from sysadmd.sysclasses.systemd import SystemdBackend
        self.bus = PrivateBus(short_tempdir(self, "sdbus"), self.units)
        self.bus.start()
        self.addCleanup(self.bus.stop)
        self.backend = SystemdBackend(reactor, self.bus.address, job_timeout=self.job_timeout, clock=self.clock)
        self.addCleanup(self.backend.close)
        print("sysadm/services backend that ran: systemd (live D-Bus: private dbus-daemon, stand-in manager)")

    @defer.inlineCallbacks
    def calls(self):
        """What the stand-in manager was asked (its test interface)."""
        bus = yield self.backend._connected()
        reply = yield bus.call("org.freedesktop.systemd1", "/org/sysadmd/test", "org.sysadmd.Test", "Calls", "", [])
        return reply[0]

    @defer.inlineCallbacks
    def failure_of(self, d):
        try:
            yield d
        except ApiError as e:
            return e
        self.fail("expected an error reply")


@pytest.mark.slow
class SystemdOverDBus(BusCase):
    @defer.inlineCallbacks
    def test_list_has_upstreams_shape_from_listunits_and_listunitfiles(self):
        listing = yield self.backend.list()
        self.assertEqual(sorted(listing), ["broken", "cron", "early", "getty@tty1", "helper", "masked", "stuck", "web"])
        for entry in listing.values():
            self.assertEqual(set(entry), SERVICE_KEYS)
            self.assertIn(entry["is_enabled"], ("true", "false"))
            self.assertIn(entry["is_running"], ("true", "false"))
        self.assertEqual(listing["cron"], {"name": "cron", "tag": "cron.service", "path": "/lib/systemd/system/cron.service",
                                           "description": "Regular background program processing daemon",
                                           "is_enabled": "true", "is_running": "true"})
        self.assertEqual(listing["web"]["is_enabled"], "false")
        self.assertEqual(listing["getty@tty1"]["path"], "")  # loaded, from a template: no file of its own
        self.assertTrue(self.backend.owns("web") and self.backend.owns("web.service"))
        self.assertFalse(self.backend.owns("getty@") or self.backend.owns("dev-sda") or self.backend.owns("nosuch"))
        self.assertTrue(self.backend.owns("getty@tty2"))  # an instance of a template file
        self.assertFalse(self.backend.owns("nosuch@tty2"))
        self.assertEqual(set((yield self.calls())) & {"Subscribe", "ListUnits", "ListUnitFiles"},
                         {"Subscribe", "ListUnits", "ListUnitFiles"})

    @defer.inlineCallbacks
    def test_start_stop_restart_wait_for_their_jobs(self):
        yield self.backend.act("start", "web")
        self.assertEqual((yield self.backend.list())["web"]["is_running"], "true")
        yield self.backend.act("restart", "web.service")
        yield self.backend.act("stop", "web")
        self.assertEqual((yield self.backend.list())["web"]["is_running"], "false")
        calls = yield self.calls()
        self.assertEqual([c for c in calls if c.split()[0] in ("StartUnit", "StopUnit", "RestartUnit")],
                         ["StartUnit web.service replace", "RestartUnit web.service replace",
                          "StopUnit web.service replace"])
        yield self.backend.act("start", "early")  # its JobRemoved comes before StartUnit's reply
        self.assertEqual((yield self.backend.list())["early"]["is_running"], "true")

    @defer.inlineCallbacks
    def test_enable_and_disable_change_unit_files_then_reload(self):
        yield self.backend.act("enable", "web")
        self.assertEqual((yield self.backend.list())["web"]["is_enabled"], "true")
        yield self.backend.act("disable", "web")
        self.assertEqual((yield self.backend.list())["web"]["is_enabled"], "false")
        calls = yield self.calls()
        self.assertEqual([c for c in calls if c.split()[0] in ("EnableUnitFiles", "DisableUnitFiles", "Reload")],
                         ["EnableUnitFiles web.service runtime=False force=False", "Reload",
                          "DisableUnitFiles web.service runtime=False", "Reload"])
        e = yield self.failure_of(self.backend.act("enable", "helper"))
        self.assertEqual(e.code, "400")
        self.assertIn("helper.service has no [Install] section", e.detail)

    @defer.inlineCallbacks
    def test_failures_carry_systemds_message(self):
        e = yield self.failure_of(self.backend.act("start", "masked"))
        self.assertEqual(e.code, "400")
        self.assertIn("Unit masked.service is masked.", e.detail)
        self.assertIn("org.freedesktop.systemd1.UnitMasked", e.detail)
        e = yield self.failure_of(self.backend.act("start", "broken"))
        self.assertEqual(e.code, "400")
        self.assertIn("systemd's start job for broken.service ended 'failed'", e.detail)
        self.assertIn("journalctl -u broken.service", e.detail)
        e = yield self.failure_of(self.backend.act("stop", "gone"))
        self.assertIn("Unit gone.service not loaded.", e.detail)
        self.assertIn("org.freedesktop.systemd1.NoSuchUnit", e.detail)

    @defer.inlineCallbacks
    def test_index_follows_unit_files_changed(self):
        yield self.backend.list()
        self.assertFalse(self.backend.owns("late"))
        bus = yield self.backend._connected()
        yield bus.call("org.freedesktop.systemd1", "/org/sysadmd/test", "org.sysadmd.Test", "AddUnit", "s",
                       ["late.service"])  # the stand-in then signals UnitFilesChanged, as systemd does
        yield eventually(lambda: self.backend.owns("late"), "late.service joining the index")

    @defer.inlineCallbacks
    def test_the_bus_going_away_fails_waiting_jobs_then_reconnects(self):
        yield self.backend.list()
        pending = self.backend.act("start", "stuck")
        yield eventually(lambda: bool(self.backend._jobs), "the stuck job being awaited")
        self.bus.daemon.kill()
        e = yield self.failure_of(pending)
        self.assertEqual(e.code, "503")
        self.assertIn("waiting for systemd's start job for stuck.service", e.detail)
        self.assertIn("connection to the system bus closed", e.detail)
        self.bus.stop()
        os.unlink(self.bus.socket)
        e = yield self.failure_of(self.backend.list())
        self.assertEqual(e.code, "503")
        self.assertIn(f"cannot connect to the system bus at {self.bus.address}", e.detail)
        self.assertTrue(self.backend.owns("cron"))  # the index outlives the connection: errors stay 503s
        self.bus.start()
        listing = yield self.backend.list()  # a new connection, made on demand
        self.assertEqual(listing["cron"]["is_running"], "true")


    @defer.inlineCallbacks
    def test_close_waits_for_the_connection_then_refuses(self):
        yield self.backend.list()
        bus = self.backend._bus
        yield self.backend.close()
        self.assertIsNone(self.backend._bus)
        self.assertTrue(bus.gone.called)
        e = yield self.failure_of(self.backend.act("start", "web"))
        self.assertEqual(e.code, "503")
        self.assertIn("the services class is stopped", e.detail)

@pytest.mark.slow
class JobThatNeverFinishes(BusCase):
    job_timeout = 5.0

    def setUp(self):
        self.clock = task.Clock()  # the job's deadline only; the bus traffic is real
        super().setUp()

    @defer.inlineCallbacks
    def test_the_wait_is_bounded_with_a_clear_error(self):
        pending = self.backend.act("start", "stuck")
        yield eventually(lambda: bool(self.backend._jobs), "the stuck job being awaited")
        self.clock.advance(4.9)
        self.assertFalse(pending.called)
        self.clock.advance(0.2)
        e = yield self.failure_of(pending)
        self.assertEqual(e.code, "503")
        self.assertIn("systemd's start job for stuck.service", e.detail)
        self.assertIn("did not finish within 5 s; it may still be running (see: systemctl status stuck.service)",
                      e.detail)
        self.assertEqual(self.backend._jobs, {})


@pytest.mark.slow
class SystemdLogs(unittest.TestCase):
    @defer.inlineCallbacks
    def test_logs_run_journalctl_with_an_argv(self):
        from tests.support import short_tempdir
        from sysadmd.sysclasses.systemd import SystemdBackend
        d = short_tempdir(self)
        fake = os.path.join(d, "journalctl")
        with open(fake, "w") as f:
            f.write('#!/bin/sh\nfor a in "$@"; do printf "%s|" "$a"; done\necho\n')
        os.chmod(fake, 0o755)
        backend = SystemdBackend(reactor, "unix:path=/nonexistent/bus", journalctl=fake)
        found = yield backend.logs("cron", 50)
        self.assertEqual(found["lines"], ["-u|cron.service|-n|50|-o|short-iso|--no-pager|"])
        self.assertEqual(found["source"], "journalctl -u cron.service")
        real = shutil.which("journalctl")
        if real:  # the real tool (no journal on these machines: it says so, or prints nothing)
            print("journalctl ran for real:", real)
            found = yield SystemdBackend(reactor, "unix:path=/nonexistent/bus", journalctl=real).logs("nosuch", 5)
            self.assertIsInstance(found["lines"], list)


@pytest.mark.slow
class SystemdOverWss(unittest.TestCase):
    """A real daemon (SERVICES_INIT=systemd on the private bus) over wss."""

    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        requires_bus(self)
        from tests.support import FakePasswords, logged_in_client, make_config, short_tempdir, start_daemon
        self.bus = PrivateBus(short_tempdir(self, "sdbus"))
        self.bus.start()
        self.addCleanup(self.bus.stop)
        cfg = make_config(short_tempdir(self), SERVICES_INIT="systemd", SERVICES_SYSTEMD_BUS=self.bus.address,
                          SERVICES_SYSTEMD_JOB_TIMEOUT=10)
        self.running = yield start_daemon(self, cfg, passwords=FakePasswords({"root": "pw"}))
        self.client = yield logged_in_client(self, self.running, "root", "pw")
        self.names = [b.name for b in self.running.daemon.sysclasses["services"].backends]
        print(f"\nsysadm/services backends that ran: {self.names} (systemd: live D-Bus, stand-in manager)")

    def services(self, **args):
        return self.client.call("sysadm", "services", args)

    @defer.inlineCallbacks
    def test_the_class_is_routed_on_systemd_with_the_supervisor_after_it(self):
        self.assertEqual(self.names, ["systemd", "supervisor"])
        reply = yield self.client.call("rpc", "query", {})
        self.assertIn("sysadm/services", json.dumps(reply))
        reply = yield self.services(action="list_services")
        self.assertEqual(reply["name"], "response", reply)
        listed = reply["args"]["services"]
        self.assertEqual(listed["web"], {"name": "web", "tag": "web.service", "path": "/etc/systemd/system/web.service",
                                         "description": "A web server", "is_enabled": "false", "is_running": "false"})
        reply = yield self.services(action="start", services=["web"])
        self.assertEqual(reply["args"], {"services_started": ["web"]})
        reply = yield self.services(action="enable", services="web")
        self.assertEqual(reply["args"], {"services_enabled": ["web"]})
        entry = (yield self.services(action="list_services"))["args"]["services"]["web"]
        self.assertEqual((entry["is_running"], entry["is_enabled"]), ("true", "true"))
        reply = yield self.services(action="stop", services=["web", "masked"])
        self.assertEqual(reply["name"], "error", reply)
        self.assertEqual(reply["args"]["code"], "400")
        self.assertIn("web already stopped", reply["args"]["detail"])
        self.assertIn("Unit masked.service is masked.", reply["args"]["detail"])


class Addresses(unittest.TestCase):
    def test_socket_paths_of_dbus_addresses(self):
        from sysadmd.sysclasses.systemd import socket_path
        self.assertEqual(socket_path("unix:path=/run/dbus/system_bus_socket"), "/run/dbus/system_bus_socket")
        self.assertEqual(socket_path("unix:abstract=/tmp/dbus-x,guid=ab"), "\0/tmp/dbus-x")
        self.assertEqual(socket_path("tcp:host=localhost,port=1;unix:path=/tmp/a%20b"), "/tmp/a b")
        with self.assertRaises(ValueError) as e:
            socket_path("tcp:host=localhost,port=1")
        self.assertIn("expected unix:path=/socket or unix:abstract=name", str(e.exception))


# --- the stand-in manager (run as a program) --------------------------------------------------
def standin(address, units_file):
    from dbus_fast import DBusError
    from dbus_fast.aio import MessageBus
    from dbus_fast.annotations import DBusSignature
    from dbus_fast.service import ServiceInterface, method, signal as dbus_signal

    def sig(signature):
        return Annotated[object, DBusSignature(signature)]

    UNIT_ROWS = sig("a(ssssssouso)")
    FILE_ROWS = sig("a(ss)")
    STR = sig("s")
    PATH = sig("o")
    STRS = sig("as")
    BOOL = sig("b")
    ENABLED = sig("ba(sss)")
    CHANGES = sig("a(sss)")
    JOB_REMOVED = sig("uoss")
    UNIT_NEW = sig("so")

    with open(units_file) as f:
        spec = json.load(f)
    units = {u["unit"]: dict(u) for u in spec["units"]}
    for i in range(spec.get("generate", 0)):
        name = f"gen{i:05d}.service"
        units[name] = {"unit": name, "description": f"generated unit {i}", "active": "active" if i % 2 else "inactive",
                       "state": "enabled" if i % 3 else "disabled", "path": f"/lib/systemd/system/{name}"}
    calls = []
    jobs = [0]

    def escape(unit):
        return "".join(c if c.isalnum() else f"_{ord(c):02x}" for c in unit)

    class Manager(ServiceInterface):
        def __init__(self):
            super().__init__("org.freedesktop.systemd1.Manager")

        @method()
        def Subscribe(self):
            calls.append("Subscribe")

        @method()
        def ListUnits(self) -> UNIT_ROWS:
            calls.append("ListUnits")
            return [[u["unit"], u["description"], "loaded", u["active"], "running" if u["active"] == "active" else "dead",
                     "", "/org/freedesktop/systemd1/unit/" + escape(u["unit"]), 0, "", "/"]
                    for u in units.values() if not u["unit"].endswith("@.service")]

        @method()
        def ListUnitFiles(self) -> FILE_ROWS:
            calls.append("ListUnitFiles")
            return [[u["path"], u["state"]] for u in units.values() if u.get("path")]

        def _job(self, verb, unit, mode, active):
            calls.append(f"{verb} {unit} {mode}")
            u = units.get(unit)
            if u is None:
                raise DBusError("org.freedesktop.systemd1.NoSuchUnit", f"Unit {unit} not loaded.")
            if u.get("behaviour") == "masked":
                raise DBusError("org.freedesktop.systemd1.UnitMasked", f"Unit {unit} is masked.")
            jobs[0] += 1
            job_id, path = jobs[0], f"/org/freedesktop/systemd1/job/{jobs[0]}"
            behaviour = u.get("behaviour")
            if behaviour == "hang":
                return path
            result = "failed" if behaviour == "fail" and verb != "StopUnit" else "done"
            u["active"] = ("failed" if result == "failed" else active)
            if behaviour == "early":
                self.JobRemoved(job_id, path, unit, result)
            else:
                asyncio.get_running_loop().call_later(0.01, self.JobRemoved, job_id, path, unit, result)
            return path

        @method()
        def StartUnit(self, name: STR, mode: STR) -> PATH:
            return self._job("StartUnit", name, mode, "active")

        @method()
        def StopUnit(self, name: STR, mode: STR) -> PATH:
            return self._job("StopUnit", name, mode, "inactive")

        @method()
        def RestartUnit(self, name: STR, mode: STR) -> PATH:
            return self._job("RestartUnit", name, mode, "active")

        @method()
        def EnableUnitFiles(self, files: STRS, runtime: BOOL, force: BOOL) -> ENABLED:
            calls.append(f"EnableUnitFiles {' '.join(files)} runtime={runtime} force={force}")
            changes = []
            for unit in files:
                u = units.get(unit)
                if u is None or not u.get("path"):
                    raise DBusError("org.freedesktop.systemd1.NoSuchUnit", f"Unit file {unit} does not exist.")
                if u.get("behaviour") == "static":
                    return [False, []]
                if u["state"] != "enabled":
                    u["state"] = "enabled"
                    changes.append(["symlink", f"/etc/systemd/system/multi-user.target.wants/{unit}", u["path"]])
            self.UnitFilesChanged()
            return [True, changes]

        @method()
        def DisableUnitFiles(self, files: STRS, runtime: BOOL) -> CHANGES:
            calls.append(f"DisableUnitFiles {' '.join(files)} runtime={runtime}")
            changes = []
            for unit in files:
                u = units.get(unit)
                if u is not None and u["state"] == "enabled":
                    u["state"] = "disabled"
                    changes.append(["unlink", f"/etc/systemd/system/multi-user.target.wants/{unit}", ""])
            self.UnitFilesChanged()
            return changes

        @method()
        def Reload(self):
            calls.append("Reload")
            self.Reloading(True)
            self.Reloading(False)

        @dbus_signal()
        def JobRemoved(self, job_id, path, unit, result) -> JOB_REMOVED:
            return [job_id, path, unit, result]

        @dbus_signal()
        def UnitNew(self, unit, path) -> UNIT_NEW:
            return [unit, path]

        @dbus_signal()
        def UnitFilesChanged(self):
            return None

        @dbus_signal()
        def Reloading(self, active) -> BOOL:
            return active

    class Test(ServiceInterface):
        def __init__(self, manager):
            super().__init__("org.sysadmd.Test")
            self.manager = manager

        @method()
        def Calls(self) -> STRS:
            return list(calls)

        @method()
        def AddUnit(self, unit: STR):
            units[unit] = {"unit": unit, "description": "", "active": "inactive", "state": "disabled",
                           "path": f"/etc/systemd/system/{unit}"}
            self.manager.UnitFilesChanged()

    async def main():
        bus = await MessageBus(bus_address=address).connect()
        manager = Manager()
        bus.export("/org/freedesktop/systemd1", manager)
        bus.export("/org/sysadmd/test", Test(manager))
        await bus.request_name("org.freedesktop.systemd1")
        print("ready", flush=True)
        await bus.wait_for_disconnect()

    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    try:
        asyncio.run(main())
    except Exception as e:  # the bus went away: nothing more to serve
        print(f"stand-in manager ends: {e}", file=sys.stderr)


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "standin":
    standin(sys.argv[2], sys.argv[3])
