"""sysadm/systemmanager and sysadm/fs on a real daemon over TLS WebSockets (and the local
socket): upstream's reply shapes, access rules, real processes killed, dirlist as a real
unprivileged user created (and removed) by the test, the class-absent rule of rpc/query."""

import grp
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile

import pytest
from twisted.internet import defer
from twisted.trial import unittest

from sysadmd.sysclasses import fs as sys_fs
from tests.keys_support import error_code
from tests.support import FakePasswords, logged_in_client, make_config, open_client, short_tempdir, start_daemon

pytestmark = pytest.mark.slow  # child processes (dirlist listers, killed children, useradd)

# Upstream's keys (strings) per read action; ours may add more.
UPSTREAM_SYSTEMINFO = {"arch", "systemversion", "kernelversion", "kernelident", "hostname", "uptime", "cputype",
                       "cpucores", "totalmem"}
UPSTREAM_MEMORY = {"active", "inactive", "cache", "wired", "free"}
UPSTREAM_PROC = {"username", "thr", "pri", "nice", "size", "res", "state", "cpu", "time", "wcpu", "command"}
NEEDS_ROOT = os.geteuid() != 0 or shutil.which("useradd") is None


def ok_args(testcase, reply, action):
    testcase.assertEqual(reply["name"], "response", reply)
    testcase.assertEqual(list(reply["args"]), [action], reply)
    return reply["args"][action]


class LocalUser:
    """A real unprivileged account for one test (useradd; userdel -r at cleanup)."""

    def __init__(self, testcase):
        self.name = "sdj" + secrets.token_hex(4)
        subprocess.run(["useradd", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", self.name],
                       check=True, capture_output=True)
        testcase.addCleanup(subprocess.run, ["userdel", self.name], capture_output=True)
        entry = pwd.getpwnam(self.name)
        self.uid, self.gid = entry.pw_uid, entry.pw_gid
        self.group = grp.getgrgid(self.gid).gr_name


class SystemManagerOverWss(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        cfg = make_config(short_tempdir(self), LIMITED_ACCESS_GROUPS="daemon")
        self.running = yield start_daemon(self, cfg, passwords=FakePasswords({"root": "pw", "daemon": "pw2"}))
        self.root = yield self.login("root", "pw")

    def login(self, user, password):
        return logged_in_client(self, self.running, user, password)

    def sm(self, client, **args):
        return client.call("sysadm", "systemmanager", args)

    @defer.inlineCallbacks
    def test_query_lists_the_classes(self):
        listed = (yield self.root.call("rpc", "query", {}))["args"]
        self.assertEqual(listed["sysadm/systemmanager"], "read/write")
        self.assertEqual(listed["sysadm/fs"], "read/write")
        limited = yield self.login("daemon", "pw2")
        listed = (yield limited.call("rpc", "query", {}))["args"]
        self.assertEqual((listed["sysadm/systemmanager"], listed["sysadm/fs"]), ("read", "read"))

    @defer.inlineCallbacks
    def test_read_actions_in_upstream_shapes(self):
        info = ok_args(self, (yield self.sm(self.root, action="systeminfo")), "systeminfo")
        self.assertLessEqual(UPSTREAM_SYSTEMINFO, set(info))
        self.assertTrue(all(isinstance(info[k], str) for k in UPSTREAM_SYSTEMINFO), info)
        self.assertEqual(info["kernelversion"], os.uname().release)
        self.assertTrue(info["uptime"].startswith("up "), info["uptime"])
        self.assertEqual(info["cpucores"], str(os.cpu_count()))
        self.assertTrue(int(info["totalmem"]) > 0)
        memory = ok_args(self, (yield self.sm(self.root, action="memorystats")), "memorystats")
        self.assertLessEqual(UPSTREAM_MEMORY, set(memory))
        self.assertTrue(all(v.isdigit() for v in memory.values()), memory)
        cpu = ok_args(self, (yield self.sm(self.root, action="cpupercentage")), "cpupercentage")
        self.assertEqual(set(cpu), {f"cpu{i}" for i in range(1, os.cpu_count() + 1)} | {"busytotal"})
        self.assertTrue(0 <= int(cpu["busytotal"]) <= 100)
        self.assertEqual(set(cpu["cpu1"]), {"busy"})
        procs = ok_args(self, (yield self.sm(self.root, action="procinfo")), "procinfo")
        self.assertEqual(set(procs[str(os.getpid())]), UPSTREAM_PROC)
        self.assertEqual(procs["1"]["username"], "root")
        temps = ok_args(self, (yield self.sm(self.root, action="cputemps")), "cputemps")
        self.assertTrue(all(v.endswith("C") for v in temps.values()), temps)
        mounts = ok_args(self, (yield self.sm(self.root, action="externalmounts")), "externalmounts")
        for device, fields in mounts.items():
            self.assertTrue(device.startswith("/dev/"))
            self.assertEqual(set(fields), {"type", "filesystem", "path"})
            self.assertIn(fields["type"], {"USB", "HDRIVE", "SDCARD", "DVD", "UNKNOWN"})
        devices = ok_args(self, (yield self.sm(self.root, action="deviceinfo")), "deviceinfo")
        if os.path.isdir("/sys/bus/pci/devices") and os.listdir("/sys/bus/pci/devices"):
            self.assertEqual(set(devices), set(os.listdir("/sys/bus/pci/devices")))
            self.assertTrue(all("class" in d and "vendor_id" in d for d in devices.values()), devices)
        battery = ok_args(self, (yield self.sm(self.root, action="batteryinfo")), "batteryinfo")
        self.assertIn(battery["battery"], ("true", "false"))
        # A limited user reads them too.
        limited = yield self.login("daemon", "pw2")
        ok_args(self, (yield self.sm(limited, action="memorystats")), "memorystats")

    @defer.inlineCallbacks
    def test_sysctl_read_list_and_write(self):
        with open("/proc/sys/kernel/ostype") as f:
            ostype = f.read().strip()
        got = ok_args(self, (yield self.sm(self.root, action="getsysctl", sysctl="kernel.ostype")), "getsysctl")
        self.assertEqual(got, {"kernel.ostype": ostype})
        got = ok_args(self, (yield self.sm(self.root, action="getsysctl",
                                           sysctl=["kernel.ostype", "kernel.no_such_thing"])), "getsysctl")
        self.assertEqual(got, {"kernel.ostype": ostype})  # unknown names left out, as upstream
        for bad in ("kernel.no_such_thing", "../../etc/shadow", "kernel/ostype", "x" * 400, ["a..b"], [], 5):
            reply = yield self.sm(self.root, action="getsysctl", sysctl=bad)
            self.assertEqual(error_code(reply), "400", bad)
        # Root-only settings (mode 0600) are not shown to limited users (the daemon reads as root).
        limited = yield self.login("daemon", "pw2")
        secret = "kernel.cad_pid"
        if os.path.exists("/proc/sys/kernel/cad_pid") and not os.stat("/proc/sys/kernel/cad_pid").st_mode & 0o004:
            got = ok_args(self, (yield self.sm(self.root, action="getsysctl", sysctl=secret)), "getsysctl")
            self.assertEqual(list(got), [secret])
            reply = yield self.sm(limited, action="getsysctl", sysctl=secret)
            self.assertEqual(error_code(reply), "400")
            listed = ok_args(self, (yield self.sm(limited, action="sysctllist")), "sysctllist")
            self.assertNotIn(secret, listed)
            self.assertIn("vm.swappiness", listed)
        listed = ok_args(self, (yield self.sm(self.root, action="sysctllist")), "sysctllist")
        self.assertNotIn("kernel.ostype", listed)  # read-only: upstream lists writable settings only
        some = next(iter(listed.values()))
        self.assertLessEqual({"value", "type"}, set(some))
        # setsysctl: writes the current value back (harmless), when /proc/sys is writable here.
        with open("/proc/sys/vm/swappiness") as f:
            current = f.read().strip()
        reply = yield self.sm(limited, action="setsysctl", sysctl="vm.swappiness", value=current)
        self.assertEqual(error_code(reply), "403")
        for args in ({"sysctl": "vm..swappiness", "value": "1"}, {"sysctl": "vm.swappiness"},
                     {"sysctl": "vm.swappiness", "value": ["1"]}, {"sysctl": "vm.swappiness", "value": "1" * 5000}):
            reply = yield self.sm(self.root, action="setsysctl", **args)
            self.assertEqual(error_code(reply), "400", args)
        reply = yield self.sm(self.root, action="setsysctl", sysctl="kernel.ostype", value="BSD")
        self.assertEqual(error_code(reply), "400")  # read-only: the kernel's refusal is an error reply
        if os.access("/proc/sys/vm/swappiness", os.W_OK):
            got = ok_args(self, (yield self.sm(self.root, action="setsysctl", sysctl="vm.swappiness", value=current)),
                          "setsysctl")
            self.assertEqual(got, {"sysctl": "vm.swappiness", "value": current,
                                   "response": f"vm.swappiness: {current} -> {current}"})

    @defer.inlineCallbacks
    def test_killproc_kills_a_real_child(self):
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        self.addCleanup(lambda: child.poll() is None and child.kill())
        limited = yield self.login("daemon", "pw2")
        reply = yield self.sm(limited, action="killproc", pid=str(child.pid), signal="TERM")
        self.assertEqual(error_code(reply), "403")
        self.assertIsNone(child.poll())
        reply = yield self.sm(self.root, action="killproc", pid=str(child.pid), signal="TERM")
        self.assertEqual(ok_args(self, reply, "killproc"), {"action": "killproc", "pid": str(child.pid), "signal": "TERM"})
        self.assertEqual(child.wait(10), -15)
        reply = yield self.sm(self.root, action="killproc", pid=child.pid)  # reaped: gone
        self.assertEqual(error_code(reply), "400")
        for pid in ("1", str(os.getpid())):
            reply = yield self.sm(self.root, action="killproc", pid=pid)
            self.assertEqual(error_code(reply), "403", pid)

    @defer.inlineCallbacks
    def test_halt_and_reboot_refused_by_default(self):
        for action in ("halt", "reboot"):
            reply = yield self.sm(self.root, action=action)
            self.assertEqual(error_code(reply), "403")
            self.assertIn("ALLOW_POWER_OFF", reply["args"]["detail"])

    @defer.inlineCallbacks
    def test_unknown_action_and_local_socket(self):
        reply = yield self.sm(self.root, action="fetch_ports")
        self.assertEqual(error_code(reply), "400")
        self.assertIn("systeminfo", reply["args"]["detail"])
        local = yield open_client(self, self.running, unix=True)  # root by its uid
        reply = yield local.call("sysadm", "systemmanager", {"action": "systeminfo"})
        self.assertIn("hostname", ok_args(self, reply, "systeminfo"))


class DirlistOverWss(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def start(self, **overrides):
        self.user = LocalUser(self)
        cfg = make_config(short_tempdir(self), LIMITED_ACCESS_GROUPS=self.user.group, **overrides)
        self.running = yield start_daemon(self, cfg, passwords=FakePasswords({"root": "pw", self.user.name: "pw2"}))

    def login(self, user, password):
        return logged_in_client(self, self.running, user, password)

    def tree(self, mode=0o755):
        top = tempfile.mkdtemp(prefix="sdj-")
        self.addCleanup(shutil.rmtree, top, True)
        os.chmod(top, mode)
        return top

    def dirlist(self, client, path):
        return client.call("sysadm", "fs", {"action": "dirlist", "dir": path})

    @pytest.mark.skipif(NEEDS_ROOT, reason="needs root and useradd to create a test user")
    @defer.inlineCallbacks
    def test_listing_is_checked_against_the_callers_uid(self):
        yield self.start()
        top = self.tree()
        os.mkdir(os.path.join(top, "sub"))
        with open(os.path.join(top, "file.txt"), "w") as f:
            f.write("12345")
        os.chown(os.path.join(top, "file.txt"), self.user.uid, self.user.gid)
        os.symlink("sub", os.path.join(top, "to-sub"))
        os.symlink("missing", os.path.join(top, "dangling"))
        with open(os.path.join(top, ".hidden"), "w") as f:
            f.write("")
        secret = self.tree(0o700)  # root's only
        group_only = self.tree(0o750)
        os.chown(group_only, 0, self.user.gid)
        os.mkdir(os.path.join(group_only, "inside"))

        user = yield self.login(self.user.name, "pw2")
        reply = yield self.dirlist(user, top)
        self.assertEqual(reply["args"], {"dirlist": {
            "sub": {"dir": True}, "to-sub": {"dir": True}, "dangling": {"symlink": True, "target": "missing"},
            "file.txt": {"size": 5, "owner": self.user.name, "group": self.user.group},
            ".hidden": {"size": 0, "owner": "root", "group": "root"}}})
        reply = yield self.dirlist(user, secret)
        self.assertEqual(error_code(reply), "403")  # upstream listed it (as root) for anyone
        self.assertIn("Permission denied", reply["args"]["detail"])
        reply = yield self.dirlist(user, group_only)  # through the user's group
        self.assertEqual(reply["args"], {"dirlist": {"inside": {"dir": True}}})

        root = yield self.login("root", "pw")
        reply = yield self.dirlist(root, secret)
        self.assertEqual(reply["args"], {"dirlist": {}})

    @pytest.mark.skipif(NEEDS_ROOT, reason="needs root and useradd to create a test user")
    @defer.inlineCallbacks
    def test_bounds_and_bad_paths(self):
        yield self.start(DIRLIST_MAX_ENTRIES=10)
        top = self.tree()
        for i in range(15):
            open(os.path.join(top, f"f{i:02d}"), "w").close()
        root = yield self.login("root", "pw")
        reply = yield self.dirlist(root, top)
        self.assertEqual(sorted(reply["args"]["dirlist"]), [f"f{i:02d}" for i in range(10)])
        self.assertEqual(reply["args"]["truncated"], {"returned": 10, "total": 15})
        for bad, code in (("relative/path", "400"), ("/" + "a" * 5000, "400"), ("/tmp\x00x", "400"),
                          (os.path.join(top, "f00"), "400"), (os.path.join(top, "missing"), "400"), (5, "400")):
            reply = yield self.dirlist(root, bad)
            self.assertEqual(error_code(reply), code, bad)


class AbsentClass(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_a_class_without_its_backend_is_not_listed_and_answers_404(self):
        self.patch(sys_fs, "available", lambda config: False)
        running = yield start_daemon(self, make_config(short_tempdir(self)), passwords=FakePasswords({"root": "pw"}))
        client = yield open_client(self, running)
        yield client.call("rpc", "auth", {"username": "root", "password": "pw"})
        listed = (yield client.call("rpc", "query", {}))["args"]
        self.assertNotIn("sysadm/fs", listed)
        self.assertIn("sysadm/systemmanager", listed)
        reply = yield client.call("sysadm", "fs", {"action": "dirlist", "dir": "/"})
        self.assertEqual(error_code(reply), "404")
