"""Issue 10 benchmarks: a command's end reads only the pids handed out since its leader
(procscan.PidCounter), and falls back to the full /proc scan whenever it cannot prove
that range complete.  A fake /proc for the arithmetic, the real one at the end."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from twisted.internet import defer, reactor
from twisted.trial import unittest

from sysadmd.runtime.db import database_path, open_database
from sysadmd.dispatcher import procscan
from sysadmd.dispatcher.procscan import PROBE_MAX, PidCounter
from sysadmd.dispatcher.service import Dispatcher
from sysadmd.dispatcher.store import JobStore
from tests.support import make_config, short_tempdir
from tests.test_dispatcher_durability import eventually

MARKER = "inst:1:0123456789abcdef"


class FakeProc:
    def __init__(self, root: str, pid_max: int = 40000, last: int = 1000):
        self.root = root
        os.makedirs(f"{root}/sys/kernel")
        os.symlink(str(os.getpid()), f"{root}/self")
        self.write("sys/kernel/pid_max", str(pid_max))
        self.forks = 5000
        self.now = 100.0
        self.set_last(last)

    def fork(self, count: int = 1) -> None:
        self.forks += count
        self.write("stat", f"cpu  1 2 3\nintr 1 2\nctxt 9\nprocesses {self.forks}\nprocs_running 1\n")

    def write(self, name: str, text: str) -> None:
        with open(f"{self.root}/{name}", "w") as f:
            f.write(text)

    def set_last(self, pid: int) -> None:
        """A process was made with *pid*."""
        self.fork()
        self.write("sys/kernel/ns_last_pid", f"{pid}\n")

    def process(self, pid: int, marker: str = "") -> None:
        os.makedirs(f"{self.root}/{pid}", exist_ok=True)
        env = b"PATH=/bin\0" + (f"{procscan.ENV_NAME}={marker}\0".encode() if marker else b"")
        with open(f"{self.root}/{pid}/environ", "wb") as f:
            f.write(env)
        self.set_last(pid)

    def counter(self) -> PidCounter:
        return PidCounter(self.root, clock=lambda: self.now)

    def spawn(self, counter: PidCounter, pid: int):
        """A leader made as the runner makes one: the mark is taken before it."""
        mark = counter.before_spawn()
        self.process(pid)
        return mark


class PidCounterTests(unittest.TestCase):
    def make(self, **kw) -> FakeProc:
        return FakeProc(os.path.join(short_tempdir(self), "proc"), **kw)

    def test_finds_the_marked_processes_started_after_the_leader(self):
        proc = self.make()
        proc.process(900, MARKER)  # older than the leader: cannot be the job's, not read
        counter = proc.counter()
        leader = proc.spawn(counter, 1001)
        proc.process(1002, "other:1:00")
        proc.process(1003, MARKER)
        proc.process(1004)
        self.assertEqual(counter.probe(MARKER, leader), [1003])
        os.remove(f"{proc.root}/1003/environ")  # it exited
        self.assertEqual(counter.probe(MARKER, leader), [])
        self.assertEqual((counter.probed, counter.declined), (2, 0))

    def test_across_the_wrap_of_pid_max(self):
        proc = self.make(pid_max=40000, last=39990)
        counter = proc.counter()
        leader = proc.spawn(counter, 39998)
        proc.process(39999)
        proc.process(301, MARKER)  # the counter wrapped (to 300 after boot)
        self.assertEqual(counter.probe(MARKER, leader), [301])

    def test_pids_handed_out_while_it_reads_are_read_too(self):
        proc = self.make()
        counter = proc.counter()
        leader = proc.spawn(counter, 1001)
        proc.process(1002)
        real_read = procscan.read_environ

        def read(pid, root):
            if pid == 1002:  # meanwhile 1002 forks a marked child and exits
                proc.process(1003, MARKER)
            return real_read(pid, root)

        procscan.read_environ = read
        self.addCleanup(setattr, procscan, "read_environ", real_read)
        self.assertEqual(counter.probe(MARKER, leader), [1003])

    def test_declines_what_it_cannot_prove(self):
        proc = self.make(pid_max=40000)
        counter = proc.counter()
        leader = proc.spawn(counter, 1001)
        proc.process(1003, MARKER)
        proc.fork(40000 - 300)  # as many processes made since as the cycle holds: it may have gone round
        self.assertIsNone(counter.probe(MARKER, leader))
        leader = proc.spawn(counter, 2000)  # a new mark, not the one that failed
        proc.set_last(2000 + PROBE_MAX + 1)  # too many pids since: the full scan is cheaper
        self.assertIsNone(counter.probe(MARKER, leader))
        self.assertIsNone(counter.probe(MARKER, None))  # no mark (a fake transport)
        self.assertEqual(counter.declined, 3)
        self.assertEqual(counter.probed, 0)

    def test_marks_are_taken_before_the_leader_and_reused_for_a_while(self):
        proc = self.make(last=1000)
        counter = proc.counter()
        mark = counter.before_spawn()
        self.assertEqual(mark, (proc.forks, 1000))
        proc.process(1001)
        self.assertIs(counter.before_spawn(), mark)  # still valid (only wider): no /proc/stat read
        proc.now += procscan.MARK_REUSE + 0.1
        self.assertEqual(counter.before_spawn(), (proc.forks, 1001))
        # A probe leaves a new mark: a fork count read before the last pid it read.
        proc.process(1002)
        self.assertEqual(counter.probe(MARKER, mark), [])
        self.assertEqual(counter.current, (proc.forks, 1002))

    def test_an_environment_read_inside_an_exec_is_read_again(self):
        proc = self.make()

        def stat(pid, state="S", flags=0x400000, env_end=140000):
            os.makedirs(f"{proc.root}/{pid}", exist_ok=True)
            fields = [state, "1", str(pid), str(pid), "0", "-1", str(flags)] + ["0"] * 40 + [str(env_end)] + ["0"] * 2
            proc.write(f"{pid}/stat", f"{pid} (a (b) c) " + " ".join(fields) + "\n")
            open(f"{proc.root}/{pid}/environ", "wb").close()

        # Inside execve: empty, env_end 0 - until the loader has set the new environment up.
        stat(1002, env_end=0)
        reads = []
        real_open = open

        def counting_open(path, mode="r", *args):
            if path.endswith("/environ"):
                reads.append(path)
                if path.endswith("/1002/environ") and len(reads) == 3:
                    stat(1002)
                    proc.process(1002, MARKER)
            return real_open(path, mode, *args)

        procscan.open = counting_open
        self.addCleanup(delattr, procscan, "open")
        self.assertEqual(procscan.markers_in(procscan.read_environ(1002, proc.root)), [MARKER])
        self.assertEqual(len(reads), 3)
        # Empty for good, answered at once: a zombie, a kernel thread, an `env -i` process.
        for pid, kind in ((1003, dict(state="Z", env_end=0)), (1004, dict(flags=0x00200040, env_end=0)),
                          (1005, dict())):
            stat(pid, **kind)
            del reads[:]
            self.assertEqual(procscan.read_environ(pid, proc.root), b"")
            self.assertEqual(len(reads), 1, kind)
        # A process that never leaves execve is given up on after EXEC_WAIT, not waited for.
        stat(1006, env_end=0)
        started = time.monotonic()
        self.assertEqual(procscan.read_environ(1006, proc.root), b"")
        self.assertGreater(len(reads), 3)
        self.assertLess(time.monotonic() - started, procscan.EXEC_WAIT + 0.5)

    def test_a_proc_of_another_pid_namespace_is_not_used(self):
        proc = self.make()
        os.remove(f"{proc.root}/self")
        os.symlink("1", f"{proc.root}/self")
        counter = proc.counter()
        self.assertFalse(counter.usable)
        self.assertIsNone(proc.spawn(counter, 1001))
        self.assertIsNone(counter.probe(MARKER, (proc.forks, 1000)))


@pytest.mark.slow  # real child processes
class RealProcTests(unittest.TestCase):
    timeout = 30

    def test_real_proc(self):
        counter = PidCounter()
        if not counter.usable:
            raise unittest.SkipTest("no ns_last_pid here: only the full scan is used")
        marker = procscan.new_marker("test", 1)
        mark = counter.before_spawn()
        leader = subprocess.Popen([sys.executable, "-c", "import subprocess, sys; subprocess.Popen(['sleep', '5'])"],
                                  env={procscan.ENV_NAME: marker, "PATH": "/usr/bin:/bin"})
        leader.wait()
        found = counter.probe(marker, mark)
        self.assertEqual(len(found or []), 1, found)
        self.assertEqual(found, procscan.scan([marker])[marker])
        os.kill(found[0], 9)
        self.assertEqual(counter.probed, 1)

    @defer.inlineCallbacks
    def test_the_dispatcher_uses_the_probe(self):
        state_dir = short_tempdir(self)
        db = open_database(database_path(state_dir))
        self.addCleanup(db.close)
        d = Dispatcher(make_config(state_dir), JobStore(db, state_dir), reactor, publish=lambda args, keep: None)
        pids = d.runner.tracker.pids
        if not pids.usable:
            raise unittest.SkipTest("no ns_last_pid here: only the full scan is used")
        d.startService()
        self.addCleanup(d.stopService)
        d.submit_many({f"t{i}": ["true"] for i in range(5)})
        yield eventually(lambda: len(d.history()) == 5, what="five jobs")
        # One look per command end (not one when the leader exits and one when its pipes
        # close); declined only if the machine made over PROBE_MAX processes meanwhile.
        self.assertEqual(pids.probed + pids.declined, 5)
        self.assertGreaterEqual(pids.probed, 3)


class TrackerTests(unittest.TestCase):
    def test_one_poll_while_commands_wait_none_when_idle(self):
        from twisted.internet.task import Clock
        from sysadmd.dispatcher.runner import ProcessTracker

        class Waiting:
            def __init__(self, marker):
                self.marker = marker

        clock = Clock()
        tracker = ProcessTracker(clock)
        a, b = Waiting("a:1:00"), Waiting("b:2:00")
        tracker.watch(a)
        tracker.add_leader(4242, (1, 2))  # leaders are remembered without touching the poll
        tracker.watch(b)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        tracker.unwatch(a)
        tracker.unwatch(b)
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(tracker.leaders, {4242: 1})

    def test_a_leader_reaped_inside_spawn_is_still_seen_to_exit(self):
        from twisted.internet import error
        from twisted.python.failure import Failure
        from tests.test_dispatcher_service import FakeProcessReactor

        class ReapingReactor(FakeProcessReactor):
            """As Twisted does when the child has exited before spawnProcess returns."""

            def spawnProcess(self, proto, *args, **kwargs):
                transport = super().spawnProcess(proto, *args, **kwargs)
                proto.processExited(Failure(error.ProcessDone(0)))
                return transport

        state_dir = short_tempdir(self)
        db = open_database(database_path(state_dir))
        self.addCleanup(db.close)
        clock = ReapingReactor()
        d = Dispatcher(make_config(state_dir), JobStore(db, state_dir), clock, publish=lambda args, keep: None)
        d.startService()
        job = d.submit("quick", ["true"])
        clock.advance(0)
        self.assertTrue(job.process.leader_gone)
        job.process.pipes_closed(0)
        self.assertEqual(job.state, "finished")
        d.stopService()
