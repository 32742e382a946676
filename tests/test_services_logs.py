"""``sysadm/services`` ``logs``: the bounded backwards reader (:mod:`sysadmd.sysclasses.logtail`),
the SysV backend (a syslog file filtered by tag plus the service's own log file, in a
test log directory, SERVICES_LOG_DIR), a supervised program's run output, and the
action over wss in a real daemon: full access only, limits naming the field."""

from __future__ import annotations

import os
import secrets
import time

import pytest
from twisted.internet import defer
from twisted.trial import unittest

from sysadmd.sysclasses import logtail
from sysadmd.sysclasses import services as services_mod
from sysadmd.sysclasses.sysv import SysvBackend
from sysadmd.wire import envelope
from tests.support import FakePasswords, logged_in_client, make_config, short_tempdir, start_daemon
from tests.supervisor_support import definition, py
from tests.test_client_cli import run_cli
from tests.test_dispatcher_durability import eventually
from tests.test_sysclass_services import SCRIPT, install, kill_quietly

MiB = 1024 * 1024


def write(path, text, mode="w"):
    with open(path, mode) as f:
        f.write(text)
    return path


def syslog_line(tag, text, pid=42):
    return f"Nov 26 05:3{pid % 10}:00 host {tag}[{pid}]: {text}\n"


class Tail(unittest.TestCase):
    def setUp(self):
        self.dir = short_tempdir(self)

    def test_last_lines_oldest_first_with_and_without_final_newline(self):
        path = write(os.path.join(self.dir, "a.log"), "".join(f"line {i}\n" for i in range(1000)))
        self.assertEqual(logtail.tail_lines(path, 3).lines, ["line 997", "line 998", "line 999"])
        write(path, "no newline at the end", "a")
        self.assertEqual(logtail.tail_lines(path, 2).lines, ["line 999", "no newline at the end"])
        everything = logtail.tail_lines(path, 5000, chunk=7)  # many tiny chunks: lines split across them
        self.assertEqual(everything.lines, [f"line {i}" for i in range(1000)] + ["no newline at the end"])
        self.assertTrue(everything.complete)

    def test_agrees_with_reading_the_whole_file_on_random_files(self):
        import random
        rng = random.Random(1414)
        path = os.path.join(self.dir, "r.log")
        for trial in range(300):
            lines = [rng.choice(["", "a", "bc", "x" * rng.randrange(0, 40), "y" * rng.randrange(30, 90)])
                     for _ in range(rng.randrange(0, 30))]
            text = "\n".join(lines) + rng.choice(["", "\n"])
            write(path, text)
            count = rng.randrange(1, 40)
            keep_y = rng.random() < 0.3
            expected = text.split("\n")
            if text.endswith("\n"):
                expected = expected[:-1]
            if text == "":
                expected = []
            expected = [line[:32] + logtail.CUT_MARK if len(line) > 32 else line for line in expected]
            if keep_y:
                expected = [line for line in expected if line.startswith("y")]
            tail = logtail.tail_lines(path, count, line_bytes=32, chunk=rng.randrange(1, 50),
                                      keep=(lambda line: line.startswith(b"y")) if keep_y else None)
            self.assertEqual(tail.lines, expected[-count:] if expected else [], (trial, text, count, keep_y))

    def test_a_long_line_is_cut_at_4_KiB_and_memory_stays_bounded(self):
        path = write(os.path.join(self.dir, "long.log"), "first\n" + "é" * (3 * MiB) + "\nlast\n")
        tail = logtail.tail_lines(path, 10)
        self.assertEqual([tail.lines[0], tail.lines[2]], ["first", "last"])
        cut = tail.lines[1]
        self.assertTrue(cut.endswith(logtail.CUT_MARK))
        self.assertLessEqual(len(cut.encode()), logtail.LINE_BYTES + len(logtail.CUT_MARK.encode()))
        self.assertNotIn("\ufffd", cut)  # not cut inside a UTF-8 sequence

    def test_a_filter_sees_each_line_and_syslog_tags_are_read(self):
        text = (syslog_line("cron", "one") + syslog_line("sshd", "other") + "garbage without a tag\n"
                + "2026-11-26T05:30:00.123456+00:00 host CRON[7]: iso form\n")
        path = write(os.path.join(self.dir, "syslog"), text)
        ours = logtail.tail_lines(path, 10, keep=lambda line: (logtail.syslog_tag(line) or b"").lower() == b"cron")
        self.assertEqual([line.split(": ", 1)[1] for line in ours.lines], ["one", "iso form"])

    def test_not_a_regular_file_is_none(self):
        fifo = os.path.join(self.dir, "fifo.log")
        os.mkfifo(fifo)  # opening it for reading would block without O_NONBLOCK
        self.assertIsNone(logtail.tail_lines(fifo, 10))
        self.assertIsNone(logtail.tail_lines(os.path.join(self.dir, "missing.log"), 10))
        self.assertIsNone(logtail.tail_lines(self.dir, 10))

    def test_a_huge_log_is_scanned_only_64_MiB_back(self):
        path = os.path.join(self.dir, "syslog")
        with open(path, "wb") as f:
            f.write(syslog_line("wanted", "from the start, beyond the scan window").encode())
            block = syslog_line("noise", "x" * 60).encode() * (MiB // 90)
            for _ in range(80):
                f.write(block)
            f.write(syslog_line("wanted", "recent").encode())
        self.assertGreater(os.path.getsize(path), 75 * MiB)
        started = time.monotonic()
        tail = logtail.tail_lines(path, 5, keep=lambda line: logtail.syslog_tag(line) == b"wanted")
        elapsed = time.monotonic() - started
        self.assertEqual([line.split(": ", 1)[1] for line in tail.lines], ["recent"])
        self.assertEqual(tail.scanned, logtail.MAX_SCAN_BYTES)
        self.assertFalse(tail.complete)
        print(f"\nscanned {tail.scanned >> 20} MiB of a {os.path.getsize(path) >> 20} MiB syslog in {elapsed:.2f}s")


class SysvLogs(unittest.TestCase):
    def setUp(self):
        root = short_tempdir(self)
        self.initd = os.path.join(root, "init.d")
        self.logs = os.path.join(root, "log")
        os.makedirs(self.initd)
        os.makedirs(self.logs)
        install(self.initd, "svc", SCRIPT.replace("Provides:          {name}", "Provides:          svcd"), root)
        self.backend = SysvBackend(None, self.initd, self.logs)

    def test_syslog_lines_by_name_or_provides_then_its_own_log(self):
        write(os.path.join(self.logs, "syslog"), syslog_line("svc", "by name") + syslog_line("cron", "not ours")
              + syslog_line("svc/worker", "a part of it")
              + syslog_line("SVCD", "by provides") + syslog_line("svcdx", "not ours either"))
        os.utime(os.path.join(self.logs, "syslog"), (1, 1))
        write(os.path.join(self.logs, "svc.log"), "own 1\nown 2\n")
        os.makedirs(os.path.join(self.logs, "svc"))
        write(os.path.join(self.logs, "svc", "error.log"), "err 1\n")
        write(os.path.join(self.logs, "svc", "notes.txt"), "not a log\n")
        found = self.backend.read_logs("svc", {b"svc", b"svcd"}, 100)
        self.assertEqual([line.rsplit(": ", 1)[-1] for line in found["lines"]],
                         ["by name", "a part of it", "by provides", "own 1", "own 2", "err 1"])
        self.assertIn(os.path.join(self.logs, "syslog"), found["source"])
        self.assertIn(os.path.join(self.logs, "svc.log"), found["source"])
        self.assertEqual(self.backend.read_logs("svc", {b"svc", b"svcd"}, 2)["lines"], ["own 2", "err 1"])

    def test_no_log_at_all_says_where_it_looked(self):
        found = self.backend.read_logs("svc", {b"svc"}, 10)
        self.assertEqual(found["lines"], [])
        self.assertIn(self.logs, found["source"])


class Requests(unittest.TestCase):
    def test_fields_are_checked(self):
        self.assertEqual(services_mod.log_request({"service": "cron"}), ("cron", 200))
        self.assertEqual(services_mod.log_request({"service": "cron", "lines": 5000}), ("cron", 5000))
        for args, field in (({"service": "cron", "lines": 5001}, "'lines'"), ({"service": "cron", "lines": 0}, "'lines'"),
                            ({"service": "cron", "lines": "9"}, "'lines'"), ({"service": "cron", "lines": True}, "'lines'"),
                            ({"service": "../passwd"}, "'service'"), ({"service": ["cron"]}, "'service'"), ({}, "'service'")):
            with self.assertRaises(envelope.ApiError) as e:
                services_mod.log_request(args)
            self.assertEqual(e.exception.code, "400")
            self.assertIn(field, e.exception.detail)

    def test_the_reply_is_bounded_keeping_the_newest(self):
        lines = ["x" * 4095] * 5000
        kept = services_mod.bounded(lines)
        self.assertLessEqual(sum(len(line) + 1 for line in kept), services_mod.LOG_REPLY_BYTES)
        self.assertEqual(len(kept), services_mod.LOG_REPLY_BYTES // 4096)


@pytest.mark.slow  # a real daemon, a real init script and a supervised program
class LogsOverWss(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        if services_mod.systemd_runs():
            raise unittest.SkipTest("the SysV backend is used only without systemd")
        root = short_tempdir(self)
        self.initd = os.path.join(root, "init.d")
        self.logdir = os.path.join(root, "log")
        os.makedirs(self.initd)
        os.makedirs(self.logdir)
        self.name = f"lgt{secrets.token_hex(3)}"
        install(self.initd, self.name, SCRIPT, root)
        self.addCleanup(kill_quietly, root, self.name)
        write(os.path.join(self.logdir, "syslog"), syslog_line(self.name, "started by init") + syslog_line("cron", "other"))
        os.utime(os.path.join(self.logdir, "syslog"), (1, 1))  # older than any file a test writes
        cfg = make_config(short_tempdir(self), SERVICES_INITD_DIR=self.initd, SERVICES_LOG_DIR=self.logdir,
                          LIMITED_ACCESS_GROUPS="daemon")
        self.running = yield start_daemon(self, cfg, passwords=FakePasswords({"root": "pw", "daemon": "pw2"}))
        self.root = yield logged_in_client(self, self.running, "root", "pw")

    def logs(self, client, **args):
        return client.call("sysadm", "services", dict(args, action="logs"))

    @defer.inlineCallbacks
    def test_sysv_logs_full_access_only_and_limits(self):
        reply = yield self.logs(self.root, service=self.name, lines=10)
        self.assertEqual(reply["name"], "response", reply)
        self.assertEqual(set(reply["args"]), {"service", "lines", "source"})
        self.assertEqual(reply["args"]["service"], self.name)
        self.assertEqual(len(reply["args"]["lines"]), 1)
        self.assertTrue(reply["args"]["lines"][0].endswith(f"{self.name}[42]: started by init"))

        limited = yield logged_in_client(self, self.running, "daemon", "pw2")
        denied = yield self.logs(limited, service=self.name)
        self.assertEqual((denied["name"], denied["args"]["code"]), ("error", "403"), denied)
        listed = yield limited.call("sysadm", "services", {"action": "list_services"})
        self.assertEqual(listed["name"], "response")  # listing stays open to limited users

        too_many = yield self.logs(self.root, service=self.name, lines=5001)
        self.assertEqual(too_many["args"]["code"], "400", too_many)
        self.assertIn("'lines'", too_many["args"]["detail"])
        bad = yield self.logs(self.root, service="../../etc/shadow")
        self.assertEqual(bad["args"]["code"], "400", bad)
        self.assertIn("'service'", bad["args"]["detail"])
        unknown = yield self.logs(self.root, service="nosuch")
        self.assertEqual(unknown["args"]["code"], "400", unknown)
        self.assertIn("no service named nosuch", unknown["args"]["detail"])

    @defer.inlineCallbacks
    def test_the_cli_verb_prints_the_lines(self):
        if os.geteuid() != 0:
            raise unittest.SkipTest("full access over the local socket needs root")
        home = short_tempdir(self, "cli")
        with open(os.path.join(self.logdir, f"{self.name}.log"), "w") as f:
            f.write("".join(f"own line {i}\n" for i in range(10)))
        sock = self.running.config.socket
        shown = yield run_cli(home, "--socket", sock, "services", "logs", self.name, "-n", "3")
        self.assertEqual((shown.code, shown.out), (0, "own line 7\nown line 8\nown line 9\n"), shown.err)
        self.assertIn(f"{self.name}.log", shown.err)
        wrong = yield run_cli(home, "--socket", sock, "services", "logs", self.name, "-n", "6000")
        self.assertEqual(wrong.code, 2, wrong.err)
        self.assertIn("-n must be from 1 to 5000", wrong.err)

    @defer.inlineCallbacks
    def test_a_supervised_programs_logs_are_its_run_output(self):
        sup = self.running.daemon.supervisor
        reply = yield self.root.call("sysadm", "supervisor", {
            "action": "push", "job": "talker",
            "data": definition(py("import time\nfor i in range(3): print('said', i, flush=True)\ntime.sleep(60)"))})
        self.assertEqual(reply["args"], {"result": "success"}, reply)
        before = yield self.logs(self.root, service="talker")
        self.assertEqual(before["args"]["lines"], [], before)
        self.assertIn("has not run yet", before["args"]["source"])
        yield self.root.call("sysadm", "supervisor", {"action": "start", "job": "talker"})
        yield eventually(lambda: sup.programs["talker"].state == "RUNNING")

        @defer.inlineCallbacks
        def said():
            reply = yield self.logs(self.root, service="talker", lines=2)
            return reply["args"]["lines"] == ["said 1", "said 2"]
        yield eventually_async(said)
        reply = yield self.logs(self.root, service="talker", lines=2)
        self.assertIn(f"job {sup.programs['talker'].job_id}", reply["args"]["source"])


@defer.inlineCallbacks
def eventually_async(check, timeout=15.0, step=0.05):
    """Poll the Deferred-returning *check* until it fires True (bounded)."""
    from twisted.internet import reactor, task
    deadline = time.monotonic() + timeout
    while True:
        if (yield check()):
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        yield task.deferLater(reactor, step, lambda: None)
