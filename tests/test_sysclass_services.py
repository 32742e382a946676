"""sysadm/services end to end: a real daemon over wss, a SysV init script the test installs
(in a temporary init.d, and once in the system's own /etc/init.d through update-rc.d)
that really starts and stops a daemon process; replies checked against upstream's shapes.

The backends that ran are printed (``pytest -s`` or ``-rA`` shows them)."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess

import pytest
from twisted.internet import defer
from twisted.trial import unittest

from sysadmd.wire import envelope
from sysadmd.session import Identity
from sysadmd.sysclasses import services as services_mod
from sysadmd.sysclasses.sysv import read_header
from tests.support import alive, FakePasswords, RecordingChannel, make_config, open_client, short_tempdir, start_daemon

SERVICE_KEYS = {"name", "tag", "path", "description", "is_enabled", "is_running"}

SCRIPT = """#!/bin/sh
### BEGIN INIT INFO
# Provides:          {name}
# Required-Start:
# Required-Stop:
# Default-Start:     2 3 4 5
# Default-Stop:      0 1 6
# Short-Description: sysadmd test daemon {name}
### END INIT INFO
PIDFILE={piddir}/{name}.pid
case "$1" in
  start) exec start-stop-daemon --start --quiet --background --make-pidfile --pidfile "$PIDFILE" --exec {sleep} -- 300 ;;
  stop) exec start-stop-daemon --stop --quiet --oknodo --pidfile "$PIDFILE" --remove-pidfile --retry 5 ;;
  restart) "$0" stop && exec "$0" start ;;
  status) exec start-stop-daemon --status --pidfile "$PIDFILE" ;;
  *) echo "Usage: $0 {{start|stop|restart|status}}" >&2; exit 3 ;;
esac
"""

BROKEN = """#!/bin/sh
### BEGIN INIT INFO
# Provides:          {name}
# Default-Start:     2 3 4 5
# Default-Stop:      0 1 6
# Short-Description: always fails
### END INIT INFO
case "$1" in
  status) exit 3 ;;
  *) echo "cannot $1 {name}: port 8080 already in use" >&2; exit 1 ;;
esac
"""


def install(initd, name, template, piddir):
    path = os.path.join(initd, name)
    with open(path, "w") as f:
        f.write(template.format(name=name, piddir=piddir, sleep=shutil.which("sleep")))
    os.chmod(path, 0o755)
    return path


def pid_of(piddir, name):
    try:
        with open(os.path.join(piddir, f"{name}.pid")) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def kill_quietly(piddir, name):
    pid = pid_of(piddir, name)
    if pid:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


class Headers(unittest.TestCase):
    def test_lsb_header_fields(self):
        d = short_tempdir(self)
        path = install(d, "svc", SCRIPT, d)
        self.assertEqual(read_header(path), ("sysadmd test daemon svc", "svc", ["2", "3", "4", "5"], ["0", "1", "6"]))

    def test_service_names_are_checked(self):
        self.assertEqual(services_mod.service_names({"services": "cron"}), ["cron"])
        self.assertEqual(services_mod.service_names({"services": ["a", "b@1"]}), ["a", "b@1"])
        for bad in ("../etc/passwd", "-x", ".hidden", "a b", [], None, ["ok", 3]):
            with self.assertRaises(envelope.ApiError) as e:
                services_mod.service_names({"services": bad})
            self.assertEqual(e.exception.code, "400")


@pytest.mark.slow  # real daemons and child processes
class SysvOverWss(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        if services_mod.systemd_runs() or not shutil.which("start-stop-daemon"):
            raise unittest.SkipTest("the SysV backend is used only without systemd, and the script needs start-stop-daemon")
        root = short_tempdir(self)
        self.initd = os.path.join(root, "etc", "init.d")
        os.makedirs(self.initd)
        self.piddir = root
        self.name = f"sdkt{secrets.token_hex(3)}"
        install(self.initd, self.name, SCRIPT, root)
        self.addCleanup(kill_quietly, root, self.name)
        install(self.initd, "broken", BROKEN, root)
        with open(os.path.join(self.initd, "README"), "w") as f:
            f.write("not a service\n")
        cfg = make_config(short_tempdir(self), SERVICES_INITD_DIR=self.initd)
        self.running = yield start_daemon(self, cfg, passwords=FakePasswords({"root": "pw"}))
        self.client = yield open_client(self, self.running)
        reply = yield self.client.call("rpc", "auth", {"username": "root", "password": "pw"})
        self.assertEqual(reply["name"], "response", reply)
        backends = [b.name for b in services_mod.backends_for(None, cfg)]
        self.assertEqual(backends, ["sysv"])
        print(f"\nsysadm/services backends that ran: {backends} on {self.initd}")

    def services(self, **args):
        return self.client.call("sysadm", "services", args)

    def ok(self, reply):
        self.assertEqual(reply["name"], "response", reply)
        return reply["args"]

    @defer.inlineCallbacks
    def listing(self):
        return self.ok((yield self.services(action="list_services")))["services"]

    def links(self, level):
        directory = os.path.join(os.path.dirname(self.initd), f"rc{level}.d")
        return sorted(n for n in os.listdir(directory) if n.endswith(self.name)) if os.path.isdir(directory) else []

    @defer.inlineCallbacks
    def test_list_start_restart_stop_a_real_daemon(self):
        listed = yield self.listing()
        self.assertEqual(sorted(listed), sorted(["broken", self.name]))  # README is no service
        entry = listed[self.name]
        self.assertEqual(set(entry), SERVICE_KEYS)
        self.assertEqual(entry, {"name": self.name, "tag": self.name, "path": os.path.join(self.initd, self.name),
                                 "description": f"sysadmd test daemon {self.name}", "is_enabled": "false",
                                 "is_running": "false"})
        reply = yield self.services(action="start", services=self.name)
        self.assertEqual(self.ok(reply), {"services_started": [self.name]})
        first = pid_of(self.piddir, self.name)
        self.assertTrue(alive(first), "the daemon runs")
        self.assertEqual((yield self.listing())[self.name]["is_running"], "true")
        reply = yield self.services(action="restart", services=[self.name])
        self.assertEqual(self.ok(reply), {"services_restarted": [self.name]})
        second = pid_of(self.piddir, self.name)
        self.assertNotEqual(first, second)
        self.assertTrue(alive(second))
        reply = yield self.services(action="stop", services=[self.name])
        self.assertEqual(self.ok(reply), {"services_stopped": [self.name]})
        self.assertFalse(alive(second))
        self.assertEqual((yield self.listing())[self.name]["is_running"], "false")

    @defer.inlineCallbacks
    def test_enable_and_disable_make_and_flip_the_runlevel_links(self):
        reply = yield self.services(action="enable", services=[self.name])
        self.assertEqual(self.ok(reply), {"services_enabled": [self.name]})
        self.assertEqual([self.links(level) for level in "2345"], [[f"S01{self.name}"]] * 4)
        self.assertEqual([self.links(level) for level in "016"], [[f"K01{self.name}"]] * 3)
        self.assertEqual(os.readlink(os.path.join(os.path.dirname(self.initd), "rc2.d", f"S01{self.name}")),
                         f"../init.d/{self.name}")
        self.assertEqual((yield self.listing())[self.name]["is_enabled"], "true")
        reply = yield self.services(action="disable", services=self.name)
        self.assertEqual(self.ok(reply), {"services_disabled": [self.name]})
        self.assertEqual([self.links(level) for level in "2345"], [[f"K01{self.name}"]] * 4)
        self.assertEqual((yield self.listing())[self.name]["is_enabled"], "false")
        self.ok((yield self.services(action="enable", services=self.name)))
        self.assertEqual(self.links("3"), [f"S01{self.name}"])

    @defer.inlineCallbacks
    def test_failures_are_error_replies_with_the_scripts_message(self):
        reply = yield self.services(action="start", services=[self.name, "broken"])
        self.assertEqual(reply["name"], "error", reply)
        detail = reply["args"]["detail"]
        self.assertIn("port 8080 already in use", detail)
        self.assertIn(f"{self.name} already started", detail)  # what was done before the failure
        reply = yield self.services(action="stop", services=["nosuch"])
        self.assertEqual(reply["args"]["code"], "400")
        self.assertIn("no service named nosuch", reply["args"]["detail"])
        reply = yield self.services(action="start", services=["../../bin/sh"])
        self.assertIn("not a service name", reply["args"]["detail"])
        reply = yield self.services(action="frobnicate", services=[self.name])
        self.assertIn("list_services", reply["args"]["detail"])
        yield self.services(action="stop", services=[self.name])

    @defer.inlineCallbacks
    def test_limited_users_list_but_do_not_change(self):
        server = self.running.server
        session = server.open_session("test", "limited-peer", RecordingChannel(),
                                      identity=Identity("op", False, "password"), timers=False)
        self.addCleanup(session.lost)

        def call(args):
            text = envelope.encode({"namespace": "sysadm", "name": "services", "id": "l", "args": args})
            return server.api.handle(session, envelope.parse(text))

        listed = yield call({"action": "list_services"})
        self.assertIn(self.name, listed["args"]["services"])
        for verb in ("start", "stop", "restart", "enable", "disable"):
            reply = yield call({"action": verb, "services": [self.name]})
            self.assertEqual(reply["args"]["code"], "403", reply)
        self.assertIsNone(pid_of(self.piddir, self.name))
        self.assertEqual(self.links("2"), [])
        self.assertEqual(server.api.availability(session.identity)["sysadm/services"], "read")


@pytest.mark.slow
class SystemInitDirectory(unittest.TestCase):
    """The system's own /etc/init.d goes through update-rc.d (a uniquely named script the
    test installs and removes)."""

    timeout = 60

    @defer.inlineCallbacks
    def test_enable_and_disable_through_update_rc_d(self):
        if os.geteuid() != 0 or services_mod.systemd_runs() or not shutil.which("update-rc.d") \
                or not os.path.isdir("/etc/init.d"):
            raise unittest.SkipTest("needs root, no systemd, update-rc.d and /etc/init.d")
        name = f"sdku{secrets.token_hex(3)}"
        piddir = short_tempdir(self)
        path = install("/etc/init.d", name, SCRIPT, piddir)
        self.addCleanup(os.unlink, path)
        self.addCleanup(subprocess.run, ["update-rc.d", "-f", name, "remove"], capture_output=True)
        running = yield start_daemon(self, make_config(short_tempdir(self)), passwords=FakePasswords({"root": "pw"}))
        client = yield open_client(self, running)
        yield client.call("rpc", "auth", {"username": "root", "password": "pw"})
        reply = yield client.call("sysadm", "services", {"action": "enable", "services": [name]})
        self.assertEqual(reply["args"], {"services_enabled": [name]}, reply)
        self.assertTrue([n for n in os.listdir("/etc/rc2.d") if n.startswith("S") and n[3:] == name])
        print("\nsysadm/services backends that ran: ['sysv'] via update-rc.d on /etc/init.d")
        reply = yield client.call("sysadm", "services", {"action": "disable", "services": [name]})
        self.assertEqual(reply["args"], {"services_disabled": [name]}, reply)
        self.assertTrue([n for n in os.listdir("/etc/rc2.d") if n.startswith("K") and n[3:] == name])
        listed = yield client.call("sysadm", "services", {"action": "list_services"})
        self.assertEqual(listed["args"]["services"][name]["is_enabled"], "false")
        self.assertIn("dbus", listed["args"]["services"])  # the host's own scripts are listed too
