"""system-state content, thresholds and schedule (Clock-driven), zpool reading, life-preserver."""

import os
import sys
import tempfile

from hypothesis import given, strategies as st
import pytest
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from sysadmd.events import lifepreserver, systemstate
from sysadmd.events.systemstate import HostSample, SystemStateService, Thresholds, ZpoolReader

POOLS_OK = "tank\t107G\t13.1G\t93.9G\t-\t6%\t12%\t1.00x\tONLINE\t-\n"


def host(load1=0.1, cpus=2, mem=20.0, disk=30.0, hostname="host1"):
    return HostSample(hostname=hostname, load=(load1, 0.2, 0.3), cpus=cpus,
                      memory={"total": 1000, "used": int(mem * 10), "percent": mem},
                      disks={"/": {"device": "/dev/x", "fstype": "ext4", "total": 100, "used": int(disk), "percent": disk}},
                      uptime=42)


class FakeHost:
    def __init__(self):
        self.sample = host()
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return self.sample


class PureTests(unittest.TestCase):
    def test_priority_labels(self):
        self.assertEqual(systemstate.priority_label(0), "0 - Information")
        self.assertEqual(systemstate.priority_label(3), "3 - Warning")
        self.assertEqual(systemstate.priority_label(6), "6 - Critical")
        self.assertEqual(systemstate.priority_label(9), "9 - Urgent")

    def test_thresholds(self):
        limits = Thresholds(load_warn=1.0, load_crit=2.0, memory_warn=80, memory_crit=95, disk_warn=85, disk_crit=99)
        self.assertEqual(systemstate.assess(host(), {}, limits, False), (0, []))
        level, alerts = systemstate.assess(host(load1=2.2), {}, limits, False)  # 1.1 per core
        self.assertEqual(level, 5)
        self.assertIn("load 1.10 per core >= 1", alerts[0])
        self.assertEqual(systemstate.assess(host(load1=4.0), {}, limits, False)[0], 8)
        self.assertEqual(systemstate.assess(host(mem=96.0), {}, limits, False)[0], 8)
        level, alerts = systemstate.assess(host(disk=86.0), {}, limits, False)
        self.assertEqual((level, alerts), (5, ["disk / 86% >= 85%"]))
        self.assertEqual(systemstate.assess(host(), {}, limits, True)[0], 3)

    def test_pools(self):
        pools = systemstate.parse_zpool_list(POOLS_OK + "junk line\nbad\t1G\t2\t3\t-\t1%\t95%\t1.00x\tDEGRADED\t-\n")
        self.assertEqual(sorted(pools), ["bad", "tank"])
        self.assertEqual(pools["tank"], {"size": "107G", "alloc": "13.1G", "free": "93.9G", "expandsz": "-", "frag": "6%",
                                         "capacity": "12%", "dedup": "1.00x", "health": "ONLINE", "altroot": "-"})
        level, alerts = systemstate.assess(host(), pools, Thresholds(), False)
        self.assertEqual(level, 9)
        self.assertEqual(alerts, ["pool bad is DEGRADED", "pool bad 95% full"])
        args = systemstate.state_args(host(), pools, level, alerts, False)
        self.assertEqual(args["priority"], "9 - Urgent")
        self.assertEqual(args["zpools"]["tank"]["capacity"], "12%")

    @given(st.text())
    def test_zpool_parser_never_fails(self, text):
        pools = systemstate.parse_zpool_list(text)
        for pool in pools.values():
            self.assertEqual(len(pool), 9)

    def test_real_sample_has_real_fields(self):
        sample = systemstate.sample_host()
        self.assertTrue(sample.hostname)
        self.assertGreaterEqual(sample.cpus, 1)
        self.assertGreater(sample.memory["total"], 0)
        self.assertGreaterEqual(sample.uptime, 0)
        for mount, disk in sample.disks.items():
            self.assertTrue(os.path.isabs(mount))
            self.assertNotIn(disk["fstype"], systemstate.PSEUDO_FILESYSTEMS)
            self.assertLessEqual(disk["used"], disk["total"])


class ScheduleTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.fake = FakeHost()
        self.published = []
        self.pool_text = POOLS_OK
        self.pool_reads = 0

    def pools(self):
        self.pool_reads += 1
        return defer.succeed(systemstate.parse_zpool_list(self.pool_text))

    def start(self, interval=60, **kw):
        svc = SystemStateService(self.published.append, self.clock, interval=interval, thresholds=Thresholds(),
                                 sampler=self.fake, zpools=kw.get("zpools", self.pools))
        svc.startService()
        self.addCleanup(svc.stopService)
        return svc

    def test_publishes_at_start_and_every_interval(self):
        svc = self.start(interval=60)
        self.assertEqual(svc.check_interval, 5.0)
        self.assertEqual(len(self.published), 1)
        self.assertEqual(self.published[0]["priority"], "0 - Information")
        self.assertIn("tank", self.published[0]["zpools"])
        self.clock.pump([5] * 11)  # t = 55: only cheap checks
        self.assertEqual(len(self.published), 1)
        self.assertEqual(self.fake.calls, 12)
        self.clock.advance(5)  # t = 60
        self.assertEqual(len(self.published), 2)
        self.assertEqual(self.pool_reads, 3)  # at 0, 30, 60

    def test_odd_interval_is_not_late(self):
        svc = self.start(interval=7)
        self.assertAlmostEqual(svc.check_interval, 3.5)
        self.clock.pump([3.5] * 4)
        self.assertEqual(len(self.published), 3)  # 0, 7, 14

    def test_priority_change_publishes_early(self):
        self.start(interval=600)
        self.fake.sample = host(mem=99.0)
        self.clock.advance(5)
        self.assertEqual(len(self.published), 2)
        self.assertEqual(self.published[-1]["priority"], "8 - Critical")
        self.assertEqual(self.published[-1]["alerts"], ["memory 99% >= 97%"])
        self.clock.advance(5)  # no change: nothing new
        self.assertEqual(len(self.published), 2)
        self.fake.sample = host()
        self.clock.advance(5)  # back to normal is a change too
        self.assertEqual(self.published[-1]["priority"], "0 - Information")
        self.assertNotIn("alerts", self.published[-1])

    def test_pool_failure_publishes_within_refresh(self):
        self.start(interval=600)
        self.pool_text = POOLS_OK.replace("ONLINE", "FAULTED")
        self.clock.pump([5] * 6)  # next zpool run at 30 s
        self.assertEqual(self.published[-1]["priority"], "9 - Urgent")

    def test_hostname_change(self):
        self.start(interval=600)
        self.fake.sample = host(hostname="renamed")
        self.clock.advance(5)
        event = self.published[-1]
        self.assertEqual(event["hostname"], "renamed")
        self.assertEqual(event["hostnamechanged"], "true")
        self.assertEqual(event["priority"], "3 - Warning")
        self.clock.advance(5)
        self.assertNotIn("hostnamechanged", self.published[-1])
        self.assertEqual(self.published[-1]["priority"], "0 - Information")

    def test_sampler_error_is_logged_and_loop_goes_on(self):
        self.start(interval=10, zpools=None)
        self.fake.sample = None  # makes assess fail
        self.clock.advance(5)
        self.clock.advance(5)
        self.assertEqual(len(self.flushLoggedErrors(AttributeError)), 2)
        self.fake.sample = host()
        self.clock.advance(5)
        self.assertEqual(len(self.published), 2)

    def test_stop_cancels_timers(self):
        svc = self.start(interval=60)
        svc.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])


@pytest.mark.slow  # real child processes
class ZpoolProcessTests(unittest.TestCase):
    timeout = 20

    def script(self, body):
        fd, path = tempfile.mkstemp(suffix=".py")
        with os.fdopen(fd, "w") as f:
            f.write(body)
        self.addCleanup(os.unlink, path)
        return [sys.executable, path]

    @defer.inlineCallbacks
    def test_reads_real_process_output_with_requested_columns(self):
        reader = ZpoolReader(reactor, self.script(
            "import sys\nassert sys.argv[1:4] == ['list', '-H', '-o'], sys.argv\n"
            f"assert sys.argv[4] == {','.join(systemstate.ZPOOL_COLUMNS)!r}\n"
            f"sys.stdout.write({POOLS_OK!r})\n"))
        pools = yield reader()
        self.assertEqual(pools["tank"]["health"], "ONLINE")

    @defer.inlineCallbacks
    def test_failure_and_hang_give_no_pools(self):
        failing = ZpoolReader(reactor, self.script("import sys\nsys.exit(3)\n"))
        self.assertEqual((yield failing()), {})
        hanging = ZpoolReader(reactor, self.script("import time\ntime.sleep(30)\n"), timeout=0.5)
        started = reactor.seconds()
        self.assertEqual((yield hanging()), {})
        self.assertLess(reactor.seconds() - started, 10)


class LifePreserverTests(unittest.TestCase):
    def test_tails_new_lines_only(self):
        path = os.path.join(tempfile.mkdtemp(), "lpreserver.log")
        self.addCleanup(lambda: os.path.exists(path) and os.unlink(path))
        clock, got = task.Clock(), []
        watcher = lifepreserver.LifePreserverWatcher(got.append, clock, path, poll=1)
        watcher.startService()
        self.addCleanup(watcher.stopService)
        clock.advance(1)  # no file yet: silent
        with open(path, "w") as f:
            f.write("old: creating snapshot tank@a\n")
        clock.advance(1)  # first sight: history, not news
        with open(path, "a") as f:
            f.write("creating snapshot tank@b\nnoise\nFAILED replication task on tank: Logfile available at: /x\npart")
        clock.advance(1)
        self.assertEqual(got, [
            {"class": "snapshot", "message": "creating snapshot tank@b", "priority": "1 - Information"},
            {"class": "replication", "message": "FAILED replication task on tank: Logfile available at: /x",
             "priority": "7 - Critical"},
        ])
        with open(path, "w") as f:  # rotated
            f.write("Starting replication tank\n")
        clock.advance(1)
        self.assertEqual(got[-1]["class"], "replication")
        self.assertEqual(len(got), 3)
