"""Issue 7 items 9, 11 and 17 (dispatcher parts): detached processes, lone surrogates,
linear kills, output file caps.  Real processes and real SQLite unless said otherwise."""

from __future__ import annotations

import pytest
import json
import os
import re
import signal
import sys
import time

from twisted.internet import defer, reactor
from twisted.trial import unittest

from sysadmd.wire import envelope
from sysadmd.runtime.db import database_path, open_database
from sysadmd.dispatcher import procscan
from sysadmd.dispatcher.job import Job
from sysadmd.dispatcher.service import Dispatcher
from sysadmd.dispatcher.store import BATCH, JobStore
from sysadmd.wire.envelope import ApiError
from tests.support import alive, make_config, short_tempdir
from tests.test_dispatcher_durability import eventually
from tests.test_dispatcher_service import FakeProcessReactor
from tests.test_dispatcher_wss import sleep

PY = sys.executable

# The leader forks a child that starts a new session and forks the real worker, which
# keeps the job's stdout open; the leader exits at once.
DETACHED = """
import os, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        print('worker', os.getpid(), flush=True)
        if sys.argv[1:] == ['drop-marker']:
            os.execve(sys.executable, [sys.executable, '-c', 'import time; time.sleep(1000)'], {})
        if sys.argv[1:] == ['ignore-term']:
            import signal
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if sys.argv[1:] == ['daemon']:  # let go of the job's output and progress pipe, like a daemon
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.dup2(null, 2)
            os.close(int(os.environ['SYSADM_PROGRESS_FD']))
        time.sleep(1000)
    os._exit(0)
os.wait()
print('leader done', flush=True)
"""


def kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def worker_pid(events, job_id) -> int:
    for e in events:
        if e.get("process_id") == job_id:
            for value in e.values():
                found = re.search(r"^worker (\d+)$", value, re.M) if isinstance(value, str) else None
                if found:
                    return int(found.group(1))
    return 0


class RealDispatcherCase(unittest.TestCase):
    timeout = 30

    def make(self, **config):
        self.state_dir = short_tempdir(self)
        config.setdefault("SOCKET", "none")
        cfg = make_config(self.state_dir, **config)
        self.db = open_database(database_path(self.state_dir))
        self.addCleanup(self.db.close)
        self.store = JobStore(self.db, self.state_dir)
        self.events = []
        self.dispatcher = Dispatcher(cfg, self.store, reactor, publish=lambda args, keep: self.events.append(args))
        self.dispatcher.startService()
        self.addCleanup(lambda: self.dispatcher.stopService() if self.dispatcher.running else None)
        return self.dispatcher

    def script(self, text: str) -> str:
        path = os.path.join(self.state_dir, "detached.py")
        with open(path, "w") as f:
            f.write(text)
        return path

    def finished(self, job_id, timeout=15.0):
        return eventually(lambda: self.dispatcher.history([job_id]), timeout=timeout, what=f"job {job_id} to finish")


@pytest.mark.slow  # real daemons or child processes
class DetachedProcessTests(RealDispatcherCase):
    """Item 9: processes that call setsid are the job's; a held pipe cannot keep it running."""

    @defer.inlineCallbacks
    def test_kill_reaches_a_setsid_worker_holding_the_output_open(self):
        d = self.make(JOB_KILL_GRACE=1)
        script = self.script(DETACHED)
        d.submit("detached", [f"{PY} {script}", "echo never"])
        pid = yield eventually(lambda: worker_pid(self.events, "detached"), what="the worker's pid")
        self.addCleanup(kill_quietly, pid)
        self.assertNotEqual(os.getpgid(pid), d.active["detached"].process.pgid)  # out of the job's group
        yield eventually(lambda: d.active["detached"].process.leader_gone, what="the leader to exit")
        yield sleep(1.0)
        self.assertEqual(d.active["detached"].state, "running")  # its worker still runs
        self.assertEqual(d.kill(["detached"]), ["detached"])
        [job] = yield self.finished("detached")
        self.assertEqual(job["killed"], "true")
        self.assertEqual(job[f"return_codes/{PY} {script}"], "-1")
        self.assertNotIn("return_codes/echo never", job)
        self.assertFalse(alive(pid), "the setsid worker survived the kill")

    @defer.inlineCallbacks
    def test_a_daemon_started_by_a_job_belongs_to_it_until_killed(self):
        d = self.make(JOB_KILL_GRACE=1)
        script = self.script(DETACHED)
        d.submit("daemon", [f"{PY} {script} daemon"])
        pid = yield eventually(lambda: worker_pid(self.events, "daemon"), what="the worker's pid")
        self.addCleanup(kill_quietly, pid)
        yield eventually(lambda: d.active["daemon"].process.pipes_done, what="the pipes to close")
        yield sleep(1.0)
        self.assertEqual(d.active["daemon"].state, "running")
        self.assertEqual(d.list()["jobs"]["no_queue"]["daemon"]["state"], "running")
        d.kill(["daemon"])
        [job] = yield self.finished("daemon")
        self.assertEqual(job["killed"], "true")
        self.assertFalse(alive(pid))

    @defer.inlineCallbacks
    def test_a_worker_that_ignores_sigterm_gets_sigkill_after_the_grace(self):
        d = self.make(JOB_KILL_GRACE=0.5)
        script = self.script(DETACHED)
        d.submit("stubborn", [f"{PY} {script} ignore-term"])
        pid = yield eventually(lambda: worker_pid(self.events, "stubborn"), what="the worker's pid")
        self.addCleanup(kill_quietly, pid)
        d.kill(["stubborn"])
        [job] = yield self.finished("stubborn")
        self.assertEqual(job["killed"], "true")
        self.assertFalse(alive(pid))

    @defer.inlineCallbacks
    def test_a_worker_that_respawns_on_sigterm_is_hunted_down(self):
        # On SIGTERM the worker forks a new detached worker (which inherits the marker) and exits.
        respawn = DETACHED.replace("time.sleep(1000)\n    os._exit(0)", """signal_respawn()
        time.sleep(1000)
    os._exit(0)""").replace("import os, sys, time", """import os, sys, time, signal
def respawn(*_):
    if os.fork() == 0:
        os.setsid()
        print('worker', os.getpid(), flush=True)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(1000)
    os._exit(0)
def signal_respawn():
    signal.signal(signal.SIGTERM, respawn)""")
        d = self.make(JOB_KILL_GRACE=1)
        script = self.script(respawn)
        d.submit("hydra", [f"{PY} {script}"])
        first = yield eventually(lambda: worker_pid(self.events, "hydra"), what="the worker's pid")
        self.addCleanup(kill_quietly, first)
        marker = d.active["hydra"].record.marker
        d.kill(["hydra"])
        [job] = yield self.finished("hydra")
        self.assertEqual(job["killed"], "true")
        workers = {int(n) for n in re.findall(r"^worker (\d+)$", job[f"{PY} {script}"], re.M)}
        self.assertEqual(len(workers), 2, job)  # the first worker and the one it forked on SIGTERM
        self.assertFalse(any(alive(pid) for pid in workers))
        self.assertEqual(procscan.scan([marker]), {})

    @defer.inlineCallbacks
    def test_four_setsid_sleeps_no_longer_block_new_jobs(self):
        d = self.make(MAX_PARALLEL_JOBS=4, JOB_KILL_GRACE=1)
        ids = [f"s{i}" for i in range(4)]
        d.submit_many({job_id: ["setsid sleep 1000"] for job_id in ids})
        d.submit("fifth", ["echo fifth"])
        # util-linux setsid forks (the leader leads a group already) and exits: sleep holds the pipe.
        markers = yield eventually(lambda: [d.active[i].record.marker for i in ids]
                                   if all(d.active[i].record.marker for i in ids) else None, what="jobs to start")
        found = yield eventually(lambda: (lambda f: f if len(f) == 4 else None)(procscan.scan(markers)),
                                 what="the four sleeps")
        pids = [pid for pids in found.values() for pid in pids]
        for pid in pids:
            self.addCleanup(kill_quietly, pid)
        yield eventually(lambda: all(d.active[i].process is not None and d.active[i].process.leader_gone for i in ids),
                         what="the setsid leaders to exit")
        self.assertEqual(d.active["fifth"].state, "pending")
        self.assertEqual(sorted(d.kill(ids)), ids)
        [fifth] = yield self.finished("fifth")
        self.assertEqual(fifth["echo fifth"], "fifth\n")
        for job_id in ids:
            [job] = d.history([job_id])
            self.assertEqual(job["killed"], "true")
        yield eventually(lambda: not any(alive(pid) for pid in pids), what="the sleeps to be gone")

    @defer.inlineCallbacks
    def test_job_ends_when_only_an_unmarked_process_holds_the_pipe(self):
        d = self.make()
        script = self.script(DETACHED)
        d.submit("held", [f"{PY} {script} drop-marker", "echo next"])
        pid = yield eventually(lambda: worker_pid(self.events, "held"), what="the worker's pid")
        self.addCleanup(kill_quietly, pid)
        [job] = yield self.finished("held")
        self.assertEqual(job[f"return_codes/{PY} {script} drop-marker"], "0")
        self.assertIn("leader done\n", job[f"{PY} {script} drop-marker"])
        self.assertEqual(job["echo next"], "next\n")
        self.assertTrue(alive(pid), "the unmarked holder is not the job's and is left alone")
        self.assertEqual(procscan.scan([self.store.finished(["held"])[0].marker]), {})

    def test_marker_matching_is_exact(self):
        env = b"A=1\0SYSADMD_JOB=abc:1:ff\0XSYSADMD_JOB=abc:1:00\0"
        self.assertEqual(procscan.markers_in(env), ["abc:1:ff"])
        self.assertEqual(procscan.markers_in(b"SYSADMD_JOB=x"), ["x"])
        # A process carrying a longer marker is not the job's.
        self.assertFalse(procscan.signal_marked(os.getpid(), "no-such-marker", 0))


class SurrogateTests(RealDispatcherCase):
    """Item 11: nothing that cannot be encoded is stored; old bad rows do not break history."""

    def test_lone_surrogates_are_refused_before_anything_is_stored(self):
        d = self.make()
        for job_id, commands, field in (("ok", ["echo \ud800"], "command 1"), ("bad\udfff", ["echo a"], "job id"),
                                        ("ok2", ["echo a", "printf \udc80"], "command 2")):
            with self.assertRaises(ApiError) as caught:
                d.submit(job_id, commands)
            self.assertEqual(caught.exception.code, "400")
            self.assertIn(field, str(caught.exception))
            self.assertIn("surrogate", str(caught.exception))
            str(caught.exception).encode("utf-8")  # the error itself can be sent
        with self.assertRaises(ApiError):
            d.submit("q", ["echo a"], queue="pkg\ud800")
        self.assertEqual(self.db.execute("SELECT COUNT(*) FROM dispatcher_jobs").fetchone()[0], 0)
        self.assertEqual(self.events, [])

    @defer.inlineCallbacks
    def test_history_repairs_or_skips_bad_rows_stored_by_older_versions(self):
        d = self.make()
        d.submit("good", ["echo good"])
        yield self.finished("good")
        # As the old code stored a job whose command had a lone surrogate (json.dumps escapes it).
        self.db.execute(
            "INSERT INTO dispatcher_jobs (id, queue, commands, origin, state, created, finished, return_codes, ranges,"
            " log_file) VALUES ('old', 'no_queue', ?, 'root@local', 'finished', 1, 2, '[-1]', '[[0, 0]]', 'x.log')",
            (json.dumps(["echo \ud800"]),))
        self.db.execute(
            "INSERT INTO dispatcher_jobs (id, queue, commands, origin, state, created, finished, log_file)"
            " VALUES ('broken', 'no_queue', '[\"unterminated', '', 'finished', 1, 3, '')")
        self.db.execute(
            "INSERT INTO dispatcher_jobs (id, queue, commands, origin, state, created, log_file)"
            " VALUES ('broken-pending', 'no_queue', 'not json', '', 'pending', 1, '')")
        history = d.history()
        self.assertEqual([j["process_id"] for j in history], ["old", "good"])
        self.assertEqual(history[0]["cmd_list"], ["echo \ufffd"])
        self.assertEqual(history[0]["return_codes/echo \ufffd"], "-1")
        envelope.encode({"history": history}).encode("utf-8")  # the whole reply can be sent
        self.assertEqual(d.history(["\ud800"]), [])  # a query id with a surrogate is no error either
        # A restart closes the unreadable pending row instead of failing on it.
        yield d.stopService()
        d.startService()
        self.assertNotIn("broken-pending", d.active)
        self.assertEqual(self.db.execute("SELECT state FROM dispatcher_jobs WHERE id = 'broken-pending'").fetchone()[0],
                         "finished")


@pytest.mark.slow  # real daemons or child processes
class LinearKillTests(unittest.TestCase):
    """Item 17: killing N pending jobs costs O(N) (counted, not timed), in one transaction."""

    def make(self):
        state_dir = short_tempdir(self)
        db = open_database(database_path(state_dir))
        self.addCleanup(db.close)
        self.db = db
        self.clock = FakeProcessReactor()  # never advanced: every job stays pending
        self.published = 0

        def publish(args, keep):
            self.published += 1

        d = Dispatcher(make_config(state_dir), JobStore(db, state_dir), self.clock, publish=publish)
        d.startService()
        self.addCleanup(d.stopService)
        return d

    def count_kill(self, n):
        d = self.make()
        ids = [f"job-{i:05d}" for i in range(n)]
        d.submit_many({job_id: ["true"] for job_id in ids}, queue="pkg_queue")
        self.assertEqual(len(d.queues["pkg_queue"].pending), n)
        statements = []
        comparisons = [0]
        original_eq = Job.__eq__

        def counting_eq(a, b):  # what a list/deque removal by value would call
            comparisons[0] += 1
            return a is b

        Job.__eq__ = counting_eq
        Job.__hash__ = object.__hash__
        self.db.set_trace_callback(statements.append)
        self.published = 0
        try:
            started = time.perf_counter()
            killed = d.kill(ids)
            self.elapsed = time.perf_counter() - started
        finally:
            self.db.set_trace_callback(None)
            Job.__eq__ = original_eq
            del Job.__hash__
        self.assertEqual(len(killed), n)
        self.assertEqual(d.list(), {"jobs": {"pkg_queue": {}}})
        self.assertEqual(self.db.execute("SELECT COUNT(*) FROM dispatcher_jobs WHERE state = 'finished' AND killed = 1")
                         .fetchone()[0], n)
        return len(statements), comparisons[0], self.published, statements

    def test_killing_30000_pending_jobs_is_one_call_with_linear_work(self):
        n = 30000
        count, comparisons, published, statements = self.count_kill(n)
        self.assertLessEqual(count, n // BATCH + 5)  # batched updates, not one per job
        self.assertEqual([s for s in statements if s in ("BEGIN", "COMMIT")], ["BEGIN", "COMMIT"])
        self.assertLessEqual(comparisons, n)
        self.assertEqual(published, n)  # one finished event per job
        print(f"\nkilled {n} pending jobs in {self.elapsed:.2f}s with {count} SQL statements")

    def test_work_grows_linearly(self):
        small = self.count_kill(2000)
        large = self.count_kill(8000)
        work_small = small[0] + small[1] + small[2]
        work_large = large[0] + large[1] + large[2]
        self.assertLessEqual(work_large, 4 * work_small + 20)


@pytest.mark.slow  # real daemons or child processes
class OutputCapTests(RealDispatcherCase):
    """Item 17: a job's output file is capped, keeps its head and the tail, and says what was cut."""

    @defer.inlineCallbacks
    def test_file_keeps_head_and_tail_and_history_counts_the_cut(self):
        d = self.make(JOB_OUTPUT_CAP=1024, JOB_OUTPUT_FILE_MAX=8192)
        script = self.script("import sys\nsys.stdout.write('H' * 100 + 'x' * 200000 + 'THE-END')\n")
        d.submit("big", [f"{PY} {script}", "echo after"])
        [job] = yield self.finished("big")
        record = self.store.finished(["big"])[0]
        path = self.store.log_path(record)
        with open(path, "rb") as f:
            data = f.read()
        # The head (the file less JOB_OUTPUT_CAP kept back for each of the two commands'
        # tails), the first command's last bytes, then the second command's output.
        self.assertEqual(len(data), 6144 + 1024 + 6)
        self.assertEqual(data[:6144], b"H" * 100 + b"x" * 6044)
        self.assertEqual(data[6144:7168], b"x" * (1024 - 7) + b"THE-END")
        self.assertEqual(data[7168:], b"after\n")
        total = 100 + 200000 + 7
        text = job[f"{PY} {script}"]
        self.assertEqual(text, f"[… {total - 1024} bytes cut; {total - 7168} of them are not in the job log either]\n"
                         + "x" * (1024 - 7) + "THE-END")
        self.assertEqual(job["echo after"], "after\n")
        self.assertEqual(job["output_cut"], str(total - 7168))
        self.assertEqual(record.cut, total - 7168)
        self.assertEqual(record.ranges, [[0, 7168, total - 7168], [7168, 7174, 0]])

    @defer.inlineCallbacks
    def test_every_command_of_a_chain_keeps_its_tail_within_the_file_cap(self):
        d = self.make(JOB_OUTPUT_CAP=1024, JOB_OUTPUT_FILE_MAX=8192)
        script = self.script("import sys\nsys.stdout.write(sys.argv[1] * 5000 + 'END-' + sys.argv[1])\n")
        commands = [f"{PY} {script} {name}" for name in "ABCD"]
        d.submit("chain", commands)
        [job] = yield self.finished("chain")
        with open(self.store.log_path(self.store.finished(["chain"])[0]), "rb") as f:
            size = len(f.read())
        self.assertEqual(size, 8192)
        for name, command in zip("ABCD", commands):
            self.assertEqual(job[f"return_codes/{command}"], "0")
            self.assertTrue(job[command].endswith(name * (1024 - 5) + "END-" + name), job[command][:100])
            if name == "A":  # its first bytes, then the 909 last ones: all of it is in the file
                self.assertTrue(job[command].startswith("[… 3981 bytes cut; full output in the job log]\n"))
            else:
                self.assertRegex(job[command], r"^\[… 3981 bytes cut; \d+ of them are not in the job log either\]\n")
        self.assertEqual(job["output_cut"], str(4 * 5005 - 8192))

    @defer.inlineCallbacks
    def test_total_cap_deletes_the_oldest_finished_files_first(self):
        d = self.make(JOB_OUTPUT_CAP=1024, JOB_OUTPUT_FILE_MAX=8192, JOB_OUTPUT_TOTAL_MAX=65536, MAX_PARALLEL_JOBS=1)
        ids = [f"j{i:02d}" for i in range(12)]
        for job_id in ids:
            d.submit(job_id, ["head -c 8000 /dev/zero"])
            yield self.finished(job_id)
        self.assertLessEqual(self.store.total_output_bytes(), 65536)
        oldest = d.history(["j00"])[0]
        self.assertEqual(oldest["output_cut"], "8000")
        self.assertTrue(oldest["return_codes/head -c 8000 /dev/zero"], "0")
        self.assertTrue(oldest["head -c 8000 /dev/zero"].startswith("[… 8000 bytes cut; 8000 of them are not in"))
        newest = d.history(["j11"])[0]
        self.assertNotIn("output_cut", newest)
        self.assertEqual(len(newest["head -c 8000 /dev/zero"]), 1024 + len("[… 6976 bytes cut; full output in the job log]\n"))


class SurrogateApiTests(unittest.TestCase):
    """Item 11 through a real daemon's request pipeline (as the local socket or a direct
    caller would hand the request on, whatever the envelope did)."""

    timeout = 30

    @defer.inlineCallbacks
    def test_run_and_history_with_lone_surrogates_answer_and_store_nothing_bad(self):
        from sysadmd.wire.envelope import Request
        from sysadmd.session import Identity
        from tests.support import RecordingChannel, start_daemon

        running = yield start_daemon(self, make_config(short_tempdir(self), SOCKET="none"))
        server = running.server
        session = server.open_session("test", "local", RecordingChannel(), identity=Identity("root", True, "peer-uid"),
                                      timers=False)
        self.addCleanup(session.lost)

        def call(args):
            return server.api.handle(session, Request("rpc", "dispatcher", "s", args))

        for args in ({"action": "run", "bad\ud800": "echo a"}, {"action": "run", "ok": "echo \udc00"},
                     {"action": "run", "ok": ["echo a", "echo \ud800"]}):
            reply = yield call(args)
            self.assertEqual(reply["args"]["code"], "400")
            self.assertIn("surrogate", reply["args"]["detail"])
            envelope.encode(reply).encode("utf-8")
        reply = yield call({"action": "run", "fine": "echo fine"})
        self.assertEqual(reply["args"], {"started": ["fine"]})
        dispatcher = running.daemon.dispatcher
        yield eventually(lambda: dispatcher.history(["fine"]), what="job fine")
        for job_id in ("\ud800", ["fine", "\udfff"]):
            reply = yield call({"action": "history", "job_id": job_id})
            envelope.encode(reply).encode("utf-8")
        self.assertEqual([j["process_id"] for j in reply["args"]["history"]], ["fine"])
        reply = yield call({"action": "kill", "job_id": ["\ud800"]})
        self.assertEqual(reply["args"], {"killed": {"jobs": []}})
        server.logs.flush()
        entries = server.logs.read(["dispatcher", "hostinfo"], 0, time.time() + 10)
        envelope.encode([list(e) for e in entries]).encode("utf-8")
        self.assertEqual(server.db.execute("SELECT COUNT(*) FROM dispatcher_jobs").fetchone()[0], 1)


class StoreMigrationTests(unittest.TestCase):
    def test_a_database_of_the_previous_version_gets_the_new_columns(self):
        from sysadmd.migrations import m0001_initial

        state_dir = short_tempdir(self)
        db = open_database(database_path(state_dir))
        self.addCleanup(db.close)
        m0001_initial.apply(db)  # the first release's tables, unversioned, as it left them
        self.assertNotIn("marker", [r[1] for r in db.execute("PRAGMA table_info(dispatcher_jobs)")])
        db.execute("INSERT INTO dispatcher_jobs (id, queue, commands, state, created, finished, return_codes, ranges)"
                   " VALUES ('old', 'no_queue', '[\"echo a\"]', 'finished', 1, 2, '[0]', '[[0, 2]]')")
        store = JobStore(db, state_dir)
        [record] = store.finished()
        self.assertEqual((record.marker, record.cut, record.ranges), ("", 0, [[0, 2, 0]]))
        self.assertEqual(store.command_logs(record, 1024), ["[… 2 bytes cut; 2 of them are not in the job log either]\n"])
