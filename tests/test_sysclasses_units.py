"""sysadm/* classes without a daemon: the shared action table, the /proc and /sys parsers,
sysctl name checks, the cached readings (one /proc read however many callers)."""

import os
import signal
import sys
from types import SimpleNamespace

import hypothesis
from hypothesis import strategies as st
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from sysadmd.wire.envelope import ApiError
from sysadmd.session import Identity, Session
from sysadmd.sysclasses import readings, systemmanager
from sysadmd.sysclasses.common import ActionTable, flag_arg, names_arg, run_tool, text_arg
from tests.support import RecordingChannel, short_tempdir


def session_of(user="root", full=True):
    session = Session("wss", "192.0.2.1", RecordingChannel(), task.Clock())
    session.identity = Identity(user, full, "password")
    return session


def request(args):
    return SimpleNamespace(args=args)


class ActionTableTests(unittest.TestCase):
    def setUp(self):
        self.table = ActionTable("demo")
        self.table.add("show", lambda s, a: {"x": "1"})
        self.table.add("change", lambda s, a: "done", full_access=True)
        self.table.add("raw", lambda s, a: {"raw": 1, "extra": 2}, wrap=False)
        self.table.add("later", lambda s, a: defer.succeed([1]))

    def code_of(self, args, session=None):
        with self.assertRaises(ApiError) as caught:
            self.table(session or session_of(), request(args))
        return caught.exception

    def test_args_must_be_an_object_with_an_action(self):
        for args in ("", [], None, {}, {"action": 3}, {"action": ""}):
            e = self.code_of(args)
            self.assertEqual(e.code, "400", args)
            self.assertIn("change, later, raw, show", e.detail)

    def test_unknown_action_names_the_known_ones(self):
        e = self.code_of({"action": "x" * 500})
        self.assertEqual(e.code, "400")
        self.assertIn("expected one of: change, later, raw, show", e.detail)
        self.assertLess(len(e.detail), 200)

    def test_reply_is_wrapped_in_the_action_name(self):
        self.assertEqual(self.table(session_of(), request({"action": "show"})), {"show": {"x": "1"}})
        self.assertEqual(self.table(session_of(), request({"action": "raw"})), {"raw": 1, "extra": 2})
        d = self.table(session_of(), request({"action": "later"}))
        self.assertEqual(self.successResultOf(d), {"later": [1]})

    def test_mutating_action_needs_full_access(self):
        e = self.code_of({"action": "change"}, session_of("alice", full=False))
        self.assertEqual(e.code, "403")
        self.assertIn("sysadm/demo change needs full access", e.detail)
        self.assertEqual(self.table(session_of("alice", full=False), request({"action": "show"})), {"show": {"x": "1"}})

    def test_argument_readers_bound_and_name_the_field(self):
        self.assertEqual(text_arg({"a": "x"}, "a"), "x")
        for args, needle in (({}, "args need 'a'"), ({"a": 3}, "'a' must be a string"),
                             ({"a": "y" * 2000}, "at most 1024"), ({"a": "x\x00"}, "NUL")):
            with self.assertRaises(ApiError) as caught:
                text_arg(args, "a")
            self.assertIn(needle, caught.exception.detail)
        self.assertTrue(flag_arg({"f": "TRUE"}, "f", False))
        self.assertFalse(flag_arg({}, "f", False))
        self.assertRaises(ApiError, flag_arg, {"f": "yes"}, "f", False)
        self.assertEqual(names_arg({"n": "a"}, "n"), ["a"])
        self.assertEqual(names_arg({"n": ["a", "b"]}, "n"), ["a", "b"])
        for value in ([], [""], [3], "", None, ["a"] * 300):
            self.assertRaises(ApiError, names_arg, {"n": value}, "n")

    @defer.inlineCallbacks
    def test_run_tool_failure_carries_the_tools_message(self):
        argv = [sys.executable, "-c", "import sys; sys.stderr.write('no such user: bob'); sys.exit(6)"]
        try:
            yield run_tool(reactor, argv)
        except ApiError as e:
            self.assertEqual(e.code, "400")
            self.assertIn("exited with 6: no such user: bob", e.detail)
        else:
            self.fail("a failing tool must be an error reply")
        out = yield run_tool(reactor, [sys.executable, "-c", "print('ok')"])
        self.assertEqual(out, "ok\n")


class SysctlNameTests(unittest.TestCase):
    def test_dotted_names_map_under_proc_sys(self):
        self.assertEqual(systemmanager.sysctl_path("vm.swappiness"), "/proc/sys/vm/swappiness")
        self.assertEqual(systemmanager.sysctl_path("net.ipv4.conf.all.rp_filter"),
                         "/proc/sys/net/ipv4/conf/all/rp_filter")

    def test_traversal_slashes_and_long_names_are_refused(self):
        for name in ("..", "vm..swappiness", "../../etc/passwd", "vm/swappiness", ".vm", "vm.", "",
                     "kernel.ost ype", "a" * 300, "vm.\x00x"):
            with self.assertRaises(ApiError, msg=name) as caught:
                systemmanager.sysctl_path(name)
            self.assertEqual(caught.exception.code, "400")

    def test_list_and_write_on_a_tree(self):
        root = short_tempdir(self)
        os.makedirs(os.path.join(root, "vm"))
        os.makedirs(os.path.join(root, "net", "eth0.5"))  # a component with a dot: unreachable, not listed
        for rel, mode, value in (("vm/level", 0o644, "3\n"), ("vm/readonly", 0o444, "x"),
                                 ("vm/triple", 0o644, "1\t2\t3\n"), ("net/eth0.5/x", 0o644, "1")):
            path = os.path.join(root, rel)
            with open(path, "w") as f:
                f.write(value)
            os.chmod(path, mode)
        listed = systemmanager.list_sysctls(root)
        self.assertEqual(listed, {"vm.level": {"value": "3", "type": "integer"},
                                  "vm.triple": {"value": "1 2 3", "type": "integer"}})
        reply = systemmanager.write_sysctl("vm.level", "4", root)
        self.assertEqual(reply, {"sysctl": "vm.level", "value": "4", "response": "vm.level: 3 -> 4"})
        with self.assertRaises(ApiError):
            systemmanager.write_sysctl("vm.missing", "1", root)


class ParserTests(unittest.TestCase):
    def test_cpu_busy_in_upstream_shape(self):
        before = readings.parse_cpu_times("cpu 100 0 100 800 0 0 0 0 0 0\ncpu0 50 0 50 400 0 0 0 0 0 0\n"
                                          "cpu1 50 0 50 400 0 0 0 0 0 0\nintr 5\n")
        after = readings.parse_cpu_times("cpu 200 0 200 1000 0 0 0 0 0 0\ncpu0 150 0 150 400 0 0 0 0 0 0\n"
                                         "cpu1 50 0 50 600 0 0 0 0 0 0\n")
        self.assertEqual(readings.cpu_busy(before, after),
                         {"cpu1": {"busy": "100"}, "cpu2": {"busy": "0"}, "busytotal": "50"})

    def test_memory_figures_are_mib_strings(self):
        info = readings.parse_meminfo("MemTotal: 2097152 kB\nMemFree: 1048576 kB\nMemAvailable: 1572864 kB\n"
                                      "Buffers: 1024 kB\nCached: 101376 kB\nActive: 204800 kB\nInactive: 102400 kB\n"
                                      "Unevictable: 0 kB\nSUnreclaim: 10240 kB\nKernelStack: 0 kB\nPageTables: 0 kB\n")
        self.assertEqual(readings.memory_figures(info), {
            "active": "200", "inactive": "100", "cache": "100", "wired": "10", "free": "1024",
            "total": "2048", "available": "1536"})

    def test_proc_stat_with_a_hostile_process_name(self):
        line = "42 (evil) (x) y) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 2 0 1234 10485760 300 " \
               + " ".join(["0"] * 14) + " 1 0 0"
        stat = readings.parse_proc_stat(line)
        self.assertEqual(stat["name"], "evil) (x) y")
        self.assertEqual((stat["state"], stat["threads"], stat["priority"], stat["processor"]), ("S", 2, 20, 1))
        self.assertEqual(stat["utime"] + stat["stime"], 10)
        self.assertIsNone(readings.parse_proc_stat("garbage"))

    def test_top_style_texts(self):
        self.assertEqual(readings.top_size(5 * 1024), "5K")
        self.assertEqual(readings.top_size(50 << 20), "50M")
        self.assertEqual(readings.top_time(125), "2:05")
        self.assertEqual(readings.uptime_text(3 * 86400 + 4 * 3600 + 5 * 60), "up 3 days 4:05")
        self.assertEqual(readings.uptime_text(60), "up 1 min")

    def test_external_mounts(self):
        text = ("/dev/sda1 / ext4 rw 0 0\nproc /proc proc rw 0 0\n/dev/sr0 /media/my\\040disc iso9660 ro 0 0\n"
                "/dev/mmcblk0p1 /boot vfat rw 0 0\n")
        self.assertEqual(systemmanager.external_mounts(text), {
            "/dev/sda1": {"type": "HDRIVE", "filesystem": "ext4", "path": "/"},
            "/dev/sr0": {"type": "DVD", "filesystem": "iso9660", "path": "/media/my disc"},
            "/dev/mmcblk0p1": {"type": "SDCARD", "filesystem": "vfat", "path": "/boot"},
        })

    def test_lspci_records(self):
        text = ("Slot:\t0000:00:02.0\nClass:\tVGA compatible controller\nVendor:\tIntel Corporation\n"
                "Device:\tHD Graphics\nRev:\t06\n\nSlot:\t0000:00:1f.0\nClass:\tISA bridge\nVendor:\tIntel\nDevice:\tLPC\n")
        self.assertEqual(systemmanager.parse_lspci(text)["0000:00:02.0"], {
            "vendor": "Intel Corporation", "device": "HD Graphics", "subclass": "VGA compatible controller",
            "revision": "06"})

    def test_battery_from_a_power_supply_tree(self):
        root = short_tempdir(self)
        self.assertEqual(systemmanager.battery_info(root), {"battery": "false"})
        for name, files in (("AC", {"type": "Mains", "online": "0"}),
                            ("BAT0", {"type": "Battery", "present": "1", "capacity": "57", "status": "Discharging",
                                      "energy_now": "20000000", "power_now": "10000000"})):
            os.makedirs(os.path.join(root, name))
            for key, value in files.items():
                with open(os.path.join(root, name, key), "w") as f:
                    f.write(value + "\n")
        self.assertEqual(systemmanager.battery_info(root),
                         {"battery": "true", "level": "57", "status": "offline", "timeleft": "7200"})

    def test_cpu_temperatures(self):
        reading = SimpleNamespace
        sensors = lambda: {"coretemp": [reading(label="Package id 0", current=50.0), reading(label="Core 0", current=45.0)],
                           "acpitz": [reading(label="", current=38.5)]}
        self.assertEqual(readings.cpu_temperatures(sensors), {"package0": "50.0C", "cpu0": "45.0C", "acpitz0": "38.5C"})


class CachedReadingsTests(unittest.TestCase):
    def test_many_callers_share_one_proc_read_per_period(self):
        clock = task.Clock()
        host = readings.HostReadings(clock, ttl=1.0)
        for _ in range(20):
            info = host.systeminfo()
            host.memorystats()
            host.cpupercentage()
        self.assertEqual(host.reads, {"systeminfo": 1, "memorystats": 1, "cpupercentage": 1})
        clock.advance(1.0)
        host.memorystats()
        host.cpupercentage()
        self.assertEqual(host.reads, {"systeminfo": 1, "memorystats": 2, "cpupercentage": 2})
        self.assertEqual(info["cpucores"], str(os.cpu_count()))
        self.assertEqual(info["kernelversion"], os.uname().release)

    def test_procinfo_lists_this_process_in_tops_fields(self):
        host = readings.HostReadings(task.Clock(), ttl=1.0)
        me = host.procinfo()[str(os.getpid())]
        self.assertEqual(set(me), {"username", "thr", "pri", "nice", "size", "res", "state", "cpu", "time",
                                   "wcpu", "command"})
        self.assertIn("python", me["command"])
        self.assertTrue(me["wcpu"].endswith("%"))


class PowerTests(unittest.TestCase):
    """halt/reboot with a stand-in shutdown program (the real one is never run by tests)."""

    def manager(self, allow, shutdown):
        return systemmanager.SystemManager(readings.HostReadings(task.Clock(), 1.0), reactor, allow_power_off=allow,
                                           shutdown=shutdown)

    def test_refused_unless_allowed(self):
        table = self.manager(False, "/nonexistent/shutdown").table()
        for action in ("halt", "reboot"):
            with self.assertRaises(ApiError) as caught:
                table(session_of(), request({"action": action}))
            self.assertEqual(caught.exception.code, "403")
            self.assertIn("ALLOW_POWER_OFF", caught.exception.detail)

    @defer.inlineCallbacks
    def test_allowed_runs_shutdown_with_argv(self):
        tmp = short_tempdir(self)
        record = os.path.join(tmp, "argv")
        fake = os.path.join(tmp, "shutdown")
        with open(fake, "w") as f:
            f.write(f"#!{sys.executable}\nimport sys\nopen({record!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n")
        os.chmod(fake, 0o755)
        table = self.manager(True, fake).table()
        self.assertEqual((yield table(session_of(), request({"action": "halt"}))), {"halt": {"response": "true"}})
        self.assertEqual((yield table(session_of(), request({"action": "reboot"}))), {"reboot": {"response": "true"}})
        with open(record) as f:
            self.assertEqual(f.read(), "-h now\n-r now\n")
        with self.assertRaises(ApiError):  # limited users never
            table(session_of("alice", full=False), request({"action": "halt"}))


class KillprocArgTests(unittest.TestCase):
    def test_bad_pids_and_signals(self):
        table = systemmanager.SystemManager(readings.HostReadings(task.Clock(), 1.0), reactor,
                                            allow_power_off=False).table()
        for args, code in (({"pid": "1"}, "403"), ({"pid": 0}, "403"), ({"pid": str(os.getpid())}, "403"),
                           ({"pid": "-5"}, "400"), ({"pid": "12 13"}, "400"), ({"pid": True}, "400"), ({}, "400"),
                           ({"pid": "99999999", "signal": "USR1"}, "400"), ({"pid": "4194304999"}, "400")):
            with self.assertRaises(ApiError, msg=args) as caught:
                table(session_of(), request(dict(args, action="killproc")))
            self.assertEqual(caught.exception.code, code, args)
        self.assertEqual(systemmanager.SIGNALS["TERM"], signal.SIGTERM)


class SysctlNameProperty(unittest.TestCase):
    @hypothesis.settings(max_examples=300, deadline=None)
    @hypothesis.given(st.text(max_size=300))
    def test_any_name_is_refused_or_stays_under_proc_sys(self, name):
        try:
            path = systemmanager.sysctl_path(name)
        except ApiError as e:
            self.assertEqual(e.code, "400")
            return
        self.assertEqual(os.path.normpath(path), path)
        self.assertTrue(path.startswith("/proc/sys/"), path)
        self.assertNotIn("..", path.split("/"))
