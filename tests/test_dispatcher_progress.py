"""Issue 10 item 4: progress lines on SYSADM_PROGRESS_FD, parsed, bounded, rate-limited,
handed to the dispatcher's on_progress hook.  The parser and the cadence with a Clock;
real commands (a shell writing to the fd, apt-style lines, fd leaks) at the end."""

from __future__ import annotations

import os
import sys

import pytest
from hypothesis import given, settings, strategies as st
from twisted.internet import defer, reactor
from twisted.trial import unittest

from sysadmd.runtime.db import database_path, open_database
from sysadmd.dispatcher import progress
from sysadmd.dispatcher.progress import DESCRIPTION_MAX, LINE_MAX, NOTES_MAX, ProgressParser, in_chain
from sysadmd.dispatcher.service import Dispatcher
from sysadmd.dispatcher.store import JobStore
from tests.support import make_config, short_tempdir
from tests.test_dispatcher_durability import eventually
from tests.test_dispatcher_service import FakeProcessReactor, exit_with
from tests.test_dispatcher_wss import sleep


def parse(*lines: bytes):
    parser = ProgressParser()
    return parser, parser.feed(b"".join(line + b"\n" for line in lines))


class ParserTests(unittest.TestCase):
    def test_plain_lines(self):
        for line, percent, description in ((b"50 half", 50.0, "half"), (b"7", 7.0, ""), (b"12.5% copying  a b", 12.5,
                                           "copying  a b"), (b"  100 done\r", 100.0, "done"), (b"0 start", 0.0, "start")):
            _, report = parse(line)
            self.assertEqual(report, {"percent": percent, "description": description, "extra": {}}, line)

    def test_apt_status_fd_lines(self):
        parser, report = parse(b"dlstatus:1:9.0565:Retrieving file 1 of 3")
        self.assertEqual(report, {"percent": 9.0565, "description": "Retrieving file 1 of 3",
                                  "extra": {"source": "apt", "stage": "download"}})
        report = parser.feed(b"pmstatus:libc6:amd64:20.0000:Preparing to configure libc6:amd64 (x: y)\n")
        self.assertEqual(report, {"percent": 20.0, "description": "Preparing to configure libc6:amd64 (x: y)",
                                  "extra": {"source": "apt", "stage": "install", "package": "libc6:amd64"}})
        report = parser.feed(b"pmerror:foo:35.5:subprocess installed post-installation script returned error exit status 1\n")
        self.assertEqual(report["percent"], 35.5)
        self.assertEqual(report["extra"]["errors"], [{"package": "foo", "message": "subprocess installed "
                                                      "post-installation script returned error exit status 1"}])
        report = parser.feed(b"pmconffile:/etc/foo.conf:40:'/etc/foo.conf' '/etc/foo.conf.dpkg-new' 1 1\n")
        self.assertEqual(report["extra"]["conffiles"], ["/etc/foo.conf"])
        self.assertEqual(report["extra"]["errors"][0]["package"], "foo")  # notes are kept
        self.assertEqual(report["percent"], 40.0)

    def test_garbage_is_counted_not_raised(self):
        parser = ProgressParser()
        for line in (b"hello", b"150 too much", b"-3 negative", b"nan x", b"inf", b"pmstatus:pkg:notanumber:x",
                     b"1e2 exp", b"\xff\xfe", b"50:colon"):
            parser.feed(line + b"\n")
        report = parser.feed(b"\n\n   \n")  # blank lines are nothing
        self.assertIsNone(report)
        self.assertEqual(parser.report(), {"percent": None, "description": "", "extra": {"ignored_lines": 9}})
        report = parser.feed(b"60 fine\n")
        self.assertEqual(report["percent"], 60.0)
        self.assertEqual(report["extra"], {"ignored_lines": 9})

    def test_bounds(self):
        parser = ProgressParser()
        # A line over LINE_MAX, in pieces: dropped whole, counted once, the next line counts.
        parser.feed(b"10 " + b"x" * (LINE_MAX // 2))
        parser.feed(b"y" * LINE_MAX)
        self.assertEqual(len(parser._partial), 0)  # nothing of it is kept
        parser.feed(b"z" * LINE_MAX)
        report = parser.feed(b"tail of the long line\n20 next\n")
        self.assertEqual(report["percent"], 20.0)
        self.assertEqual(report["extra"], {"long_lines": 1})
        _, report = parse(b"30 " + "é\x1b[31m".encode() * 500)
        self.assertEqual(len(report["description"]), DESCRIPTION_MAX)
        self.assertNotIn("\x1b", report["description"])
        parser = ProgressParser()
        for i in range(3 * NOTES_MAX):
            report = parser.feed(b"pmerror:p%d:1:bad\n" % i)
        self.assertEqual([e["package"] for e in report["extra"]["errors"]], [f"p{i}" for i in range(2 * NOTES_MAX, 3 * NOTES_MAX)])

    def test_split_lines_and_last_line_without_newline(self):
        parser = ProgressParser()
        self.assertIsNone(parser.feed(b"4"))
        self.assertIsNone(parser.feed(b"2 ha"))
        self.assertEqual(parser.feed(b"lf\n55")["description"], "half")
        self.assertEqual(parser.finish()["percent"], 55.0)

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.binary(max_size=3 * LINE_MAX // 2) | st.sampled_from(
        [b"\n", b"50 x\n", b"pmstatus:", b":", b"dlstatus:1:2:3\n", b"\r\n", b"100", b"pmerror:a:b:c:d\n"]), max_size=30))
    def test_never_raises_and_stays_bounded(self, chunks):
        parser = ProgressParser()
        for chunk in chunks:
            report = parser.feed(chunk)
            self.assertLessEqual(len(parser._partial), LINE_MAX)
            if report is not None:
                self.check(report)
        report = parser.finish()
        if report is not None:
            self.check(report)

    def check(self, report):
        self.assertEqual(set(report), {"percent", "description", "extra"})
        if report["percent"] is not None:
            self.assertTrue(0 <= report["percent"] <= 100)
        self.assertLessEqual(len(report["description"]), DESCRIPTION_MAX)
        self.assertLessEqual(len(report["extra"].get("errors", [])), NOTES_MAX)
        self.assertLessEqual(len(report["extra"].get("conffiles", [])), NOTES_MAX)

    def test_chain_scaling(self):
        report = {"percent": 50.0, "description": "half", "extra": {"package": "p"}}
        self.assertEqual(in_chain(report, 0, 1), report)
        self.assertEqual(in_chain(report, 1, 4), {"percent": 37.5, "description": "half", "extra": {
            "package": "p", "command": 2, "commands": 4, "command_percent": 50.0}})
        self.assertEqual(in_chain(dict(report, percent=None), 3, 4)["percent"], None)
        self.assertEqual(in_chain(dict(report, percent=100.0), 3, 4)["percent"], 100.0)


class CadenceTests(unittest.TestCase):
    """At most 4 deliveries a second per job, the latest wins, the last one is flushed at the end."""

    def make(self):
        state_dir = short_tempdir(self)
        db = open_database(database_path(state_dir))
        self.addCleanup(db.close)
        self.reactor = FakeProcessReactor()
        self.delivered = []
        self.dispatcher = Dispatcher(make_config(state_dir), JobStore(db, state_dir), self.reactor,
                                     publish=lambda args, keep: None,
                                     on_progress=lambda job, report: self.delivered.append(
                                         (self.reactor.seconds(), job.id, report)))
        self.dispatcher.startService()
        self.addCleanup(self.dispatcher.stopService)
        return self.dispatcher

    def test_rate_limit_latest_wins_and_final_flush(self):
        d = self.make()
        job = d.submit("p", ["echo a", "echo b"])
        self.reactor.advance(0)
        proto = self.reactor.spawned[0]["proto"]
        for i in range(100):  # a report every 10 ms for 1 s
            proto.childDataReceived(3, b"%d step %d\n" % (i, i))
            self.reactor.advance(0.01)
        times = [t for t, _, _ in self.delivered]
        self.assertEqual(times[0], 0)  # the first goes out at once
        for earlier, later in zip(times, times[1:]):
            self.assertGreaterEqual(later - earlier, 0.25 - 1e-9)
        self.assertLessEqual(len(self.delivered), 5)
        proto.childDataReceived(3, b"99 last of the first\n")
        exit_with(proto, 0)  # the pending value goes out with the end, not later
        self.assertEqual(self.delivered[-1][2]["description"], "last of the first")
        self.assertEqual(self.delivered[-1][2]["percent"], 49.5)  # command 1 of 2: 0..50
        self.assertEqual(job.progress, self.delivered[-1][2])
        self.reactor.advance(0)
        second = self.reactor.spawned[1]["proto"]
        second.childDataReceived(3, b"50 half of b\n")
        self.reactor.advance(1)
        self.assertEqual(self.delivered[-1][2]["percent"], 75.0)
        self.assertEqual(self.delivered[-1][2]["extra"], {"command": 2, "commands": 2, "command_percent": 50.0})
        exit_with(second, 0)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_progress_of_a_written_off_command_is_ignored(self):
        d = self.make()
        job = d.submit("q", ["echo a"])
        self.reactor.advance(0)
        proto = self.reactor.spawned[0]["proto"]
        exit_with(proto, 0)
        proto.childDataReceived(3, b"10 late\n")
        self.assertIsNone(job.progress)
        self.assertEqual(self.delivered, [])


def open_fds():
    """This process's descriptors and what each is (pipe:[inode], a file, …)."""
    fds = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            fds.add((name, os.readlink(f"/proc/self/fd/{name}")))
        except OSError:  # the listing's own descriptor
            pass
    return fds


@pytest.mark.slow  # real child processes
class RealProgressTests(unittest.TestCase):
    timeout = 30

    def make(self, **config):
        self.state_dir = short_tempdir(self)
        db = open_database(database_path(self.state_dir))
        self.addCleanup(db.close)
        self.reports = []
        self.dispatcher = Dispatcher(make_config(self.state_dir, **config), JobStore(db, self.state_dir), reactor,
                                     publish=lambda args, keep: None,
                                     on_progress=lambda job, report: self.reports.append((job.id, report)))
        self.dispatcher.startService()
        self.addCleanup(lambda: self.dispatcher.stopService() if self.dispatcher.running else None)
        return self.dispatcher

    def finished(self, job_id, timeout=15.0):
        return eventually(lambda: self.dispatcher.history([job_id]), timeout=timeout, what=f"job {job_id} to finish")

    @defer.inlineCallbacks
    def baseline(self):
        """The descriptors open once a first job has run (the reactor's child-process waker
        pipe and the database's journal are opened then, for good)."""
        self.dispatcher.submit("warm-up", ["true"])
        yield self.finished("warm-up")
        yield sleep(0.05)
        return open_fds()

    @defer.inlineCallbacks
    def test_a_shell_command_reports_through_the_fd(self):
        d = self.make()
        # Dispatcher commands are split as Qt does (double quotes group), never by a shell.
        command = ("sh -c \"echo '50 half' >&$SYSADM_PROGRESS_FD; sleep 0.4; "
                   "echo 'pmstatus:libc6:amd64:80.0000:Unpacking libc6:amd64' >&$SYSADM_PROGRESS_FD; echo out\"")
        d.submit("sh", [command])
        [job] = yield self.finished("sh")
        self.assertEqual(job[command], "out\n")  # progress lines are not output
        self.assertEqual([r for _, r in self.reports], [
            {"percent": 50.0, "description": "half", "extra": {}},
            {"percent": 80.0, "description": "Unpacking libc6:amd64",
             "extra": {"source": "apt", "stage": "install", "package": "libc6:amd64"}}])

    @defer.inlineCallbacks
    def test_the_progress_fd_does_not_leak(self):
        d = self.make(MAX_PARALLEL_JOBS=4)
        before = yield self.baseline()
        # Each job's child sees only its own pipe as fd 3 and nothing above it.
        probe = (f"{sys.executable} -c \"import os; print([fd for fd in range(1024) "
                 f"if os.path.exists('/proc/self/fd/%d' % fd)])\"")
        d.submit_many({f"fd{i}": [probe] for i in range(4)})
        for i in range(4):
            [job] = yield self.finished(f"fd{i}")
            self.assertEqual(job[probe], "[0, 1, 2, 3]\n")
        yield sleep(0.05)
        self.assertEqual(open_fds() - before, set())

    @defer.inlineCallbacks
    def test_a_grandchild_holding_only_the_progress_fd_does_not_hold_the_job(self):
        workdir = short_tempdir(self)
        d = self.make(JOB_WORKDIR=workdir)
        before = yield self.baseline()
        # The grandchild drops the job's marker (env -i) and its output, keeps fd 3 open.
        command = ("sh -c \"echo '10 starting' >&3; env -i sleep 30 >/dev/null 2>&1 & "
                   "echo $! > pid; echo '90 detached' >&3\"")
        d.submit("held", [command, "echo next"])
        [job] = yield self.finished("held", timeout=10)
        with open(os.path.join(workdir, "pid")) as f:
            pid = int(f.read())
        self.addCleanup(lambda: os.kill(pid, 9))
        self.assertEqual(job["echo next"], "next\n")
        self.assertEqual(job[f"return_codes/{command}"], "0")
        self.assertEqual(self.reports[-1][1]["percent"], 45.0)  # command 1 of 2 at 90 %
        self.assertTrue(os.path.exists(f"/proc/{pid}"))  # it is still running, holding the pipe
        yield sleep(0.05)
        self.assertEqual(open_fds() - before, set())

    @defer.inlineCallbacks
    def test_a_marked_grandchild_that_closed_the_fd_ends_the_job_when_it_exits(self):
        d = self.make()
        # The grandchild keeps the job's marker but lets go of every pipe: the job is over
        # when it exits (found by the marker), neither earlier nor never.
        command = "sh -c \"(exec 3>&- >/dev/null 2>&1; sleep 0.6) & echo '20 forked' >&3\""
        started = reactor.seconds()
        d.submit("closed", [command])
        [job] = yield self.finished("closed", timeout=10)
        self.assertGreaterEqual(reactor.seconds() - started, 0.5)
        self.assertEqual(job[f"return_codes/{command}"], "0")
        self.assertEqual(self.reports, [("closed", {"percent": 20.0, "description": "forked", "extra": {}})])


class EnvNameTests(unittest.TestCase):
    def test_environment_name(self):
        self.assertEqual(progress.ENV_NAME, "SYSADM_PROGRESS_FD")
