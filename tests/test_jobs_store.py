"""The job table (sysadmd/jobs/): model, dispatcher rows, outcomes, waiters, retention,
the migration of an older release's jobs.  Real SQLite and files; Clock for time."""

from __future__ import annotations

import os
import shutil
import sqlite3

from twisted.internet.task import Clock
from twisted.trial import unittest

from sysadmd.runtime.db import database_path, open_database
from sysadmd import migrations
from sysadmd.dispatcher.service import Dispatcher
from sysadmd.dispatcher.store import JobStore
from sysadmd.jobs import model
from sysadmd.jobs.model import Owner
from sysadmd.jobs.query import QueryError, compile_query
from sysadmd.jobs.service import MAX_WAITS_PER_SESSION, JobsService, TooManyWaits
from sysadmd.jobs.store import JobTable
from sysadmd.session import Identity, Session
from tests.support import RecordingChannel, make_config, short_tempdir
from tests.test_dispatcher_service import FakeProcessReactor, exit_with

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "release-1f9198b")
ALICE = Owner("alice", "password", "192.0.2.7")


class Published:
    def __init__(self):
        self.events = []
        self.subscribed = 1

    def publish(self, name, args):
        self.events.append((name, args))

    def count(self, name):
        return self.subscribed


def make_table(testcase, clock=None, **service_kw):
    state_dir = short_tempdir(testcase, "jt")
    db = open_database(database_path(state_dir), migrations.SCHEMA)
    testcase.addCleanup(db.close)
    clock = clock or Clock()
    table = JobTable(db, state_dir, clock)
    published = Published()
    service = JobsService(table, clock, published.publish, published.count,
                          retention_days=service_kw.get("days", 30), max_bytes=service_kw.get("max_bytes", 1 << 30))
    return table, service, published, clock, state_dir


def session(name="s"):
    s = Session("wss", "192.0.2.7", RecordingChannel(), Clock())
    s.login(Identity("alice", True, "password"), None)
    return s


class JobTableTests(unittest.TestCase):
    def test_a_job_goes_through_its_life_and_every_change_is_an_event(self):
        table, service, published, clock, _ = make_table(self)
        clock.advance(100)
        job_id = table.create("config.save", [{}], ALICE, logs=True)
        clock.advance(1)
        table.started(job_id)
        table.set_progress(job_id, 40.0, "copying", {"files": 3})
        table.append_log(job_id, b"\x00binary\xff\n")
        clock.advance(2)
        table.finish(job_id, "succeeded", result={"size": 9})
        job = table.get(job_id)
        self.assertEqual(job["state"], "SUCCESS")
        self.assertEqual(job["outcome"], "succeeded")
        self.assertEqual(job["progress"], {"percent": 40.0, "description": "copying", "extra": {"files": 3}})
        self.assertEqual(job["owner"], {"user": "alice", "via": "password", "from": "192.0.2.7"})
        self.assertEqual((job["time_created"], job["time_started"], job["time_finished"]), (100, 101, 103))
        self.assertEqual(job["result"], {"size": 9})
        with open(job["logs_path"], "rb") as f:
            self.assertEqual(f.read(), b"\x00binary\xff\n")
        self.assertEqual(set(job), set(model.SELECTABLE) - {k for k in model.SELECTABLE if "." in k})
        kinds = [(args["kind"], args["job"]["state"]) for name, args in published.events]
        self.assertEqual(kinds, [("added", "WAITING"), ("changed", "RUNNING"), ("changed", "RUNNING"),
                                 ("changed", "SUCCESS")])
        self.assertEqual({name for name, _ in published.events}, {"jobs"})

    def test_ids_are_global_and_increasing_across_kinds(self):
        table, _, _, clock, state_dir = make_table(self)
        store = JobStore(table.db, state_dir, table)
        first = table.create("fleet.update", [], ALICE)
        record = store.add("d1", "no_queue", ["true"], "bob@198.51.100.1", clock.seconds())
        third = table.create("fleet.update", [], ALICE)
        self.assertEqual([first, record.seq, third], [first, first + 1, first + 2])
        job = table.get(record.seq)
        self.assertEqual((job["dispatcher_id"], job["method"], job["commands"]), ("d1", "dispatcher.run", ["true"]))
        self.assertEqual(job["owner"], {"user": "bob", "via": None, "from": "198.51.100.1"})

    def test_unknown_outcome_is_refused(self):
        table, *_ = make_table(self)
        job_id = table.create("x", [], ALICE)
        self.assertRaises(ValueError, table.finish, job_id, "done")

    def test_a_restart_finishes_leftover_jobs_as_interrupted_but_not_dispatcher_ones(self):
        table, service, _, clock, state_dir = make_table(self)
        store = JobStore(table.db, state_dir, table)
        running = table.create("x", [], ALICE)
        table.started(running)
        waiting = table.create("x", [], ALICE)
        pending = store.add("d", "no_queue", ["true"], "a@b", clock.seconds())
        service.startService()
        self.addCleanup(service.stopService)
        for job_id in (running, waiting):
            job = table.get(job_id)
            self.assertEqual((job["state"], job["outcome"]), ("ABORTED", "interrupted"))
        self.assertEqual(table.get(pending.seq)["state"], "WAITING")  # the dispatcher runs it again

    def test_events_are_not_built_without_subscribers(self):
        table, service, published, *_ = make_table(self)
        published.subscribed = 0
        table.create("x", [], ALICE)
        self.assertEqual(published.events, [])


class DispatcherOutcomeTests(unittest.TestCase):
    """Each way a dispatcher job ends has its own outcome (no more ambiguous -1)."""

    def setUp(self):
        self.state_dir = short_tempdir(self, "do")
        self.db = open_database(database_path(self.state_dir), migrations.SCHEMA)
        self.addCleanup(self.db.close)
        self.reactor = FakeProcessReactor()
        self.table = JobTable(self.db, self.state_dir, self.reactor)
        self.dispatcher = self.start()

    def start(self):
        d = Dispatcher(make_config(self.state_dir, JOB_KILL_GRACE=1), JobStore(self.db, self.state_dir, self.table),
                       self.reactor, publish=lambda args, keep: None)
        d.startService()
        return d

    def tearDown(self):
        if self.dispatcher.running:
            self.dispatcher.stopService()

    def run_job(self, job_id, commands, codes):
        job = self.dispatcher.submit(job_id, commands, owner=ALICE)
        self.reactor.advance(0)
        for code in codes:
            exit_with(self.reactor.spawned[-1]["proto"], code)
            self.reactor.advance(0)
        return self.table.get(job.record.seq)

    def test_succeeded_failed_and_signal(self):
        ok = self.run_job("ok", ["true", "true"], [0, 0])
        self.assertEqual((ok["state"], ok["outcome"], ok["return_codes"], ok["error"]),
                         ("SUCCESS", "succeeded", [0, 0], None))
        bad = self.run_job("bad", ["true", "false", "true"], [0, 3])
        self.assertEqual((bad["state"], bad["outcome"], bad["return_codes"]), ("FAILED", "failed", [0, 3]))
        self.assertEqual(bad["error"], "command 2 ('false') exited with code 3")
        self.assertEqual(bad["owner"], ALICE.as_wire())

    def test_could_not_start(self):
        job = self.dispatcher.submit("nope", ["/nonexistent/program-xyz"], owner=ALICE)
        self.reactor.advance(0)
        row = self.table.get(job.record.seq)
        self.assertEqual((row["state"], row["outcome"], row["return_codes"]), ("FAILED", "not_started", [None]))
        self.assertIn("could not start", row["error"])

    def test_killed_pending_and_running(self):
        running = self.dispatcher.submit("r", ["sleep 100"], queue="q1", owner=ALICE)
        pending = self.dispatcher.submit("p", ["sleep 100"], queue="q1", owner=ALICE)
        self.reactor.advance(0)
        self.dispatcher.kill(["p", "r"])
        exit_with(self.reactor.spawned[-1]["proto"], -1)  # the killed process ends
        self.reactor.advance(0)
        for job in (running, pending):
            row = self.table.get(job.record.seq)
            self.assertEqual((row["state"], row["outcome"]), ("ABORTED", "killed"), job)
        self.assertEqual(self.table.get(pending.record.seq)["return_codes"], [])

    def test_interrupted_by_a_daemon_stop(self):
        job = self.dispatcher.submit("long", ["sleep 100"], owner=ALICE)
        self.reactor.advance(0)
        # The daemon dies under the job; the next start finds it stored as running.
        self.dispatcher.running = False
        self.dispatcher = self.start()
        row = self.table.get(job.record.seq)
        self.assertEqual((row["state"], row["outcome"], row["return_codes"]), ("ABORTED", "interrupted", [None]))


class WaitTests(unittest.TestCase):
    def test_wait_fires_on_finish_without_polling(self):
        table, service, _, clock, _ = make_table(self)
        job_id = table.create("x", [], ALICE)
        got = []
        service.wait(session(), job_id, 60, on_output=False).addCallback(got.append)
        self.assertEqual(clock.getDelayedCalls()[0].getTime(), 60)
        table.started(job_id)
        self.assertEqual(got, [])
        table.finish(job_id, "failed", error="boom")
        self.assertEqual(got, [True])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_timeout_and_session_close_release_the_waiter(self):
        table, service, _, clock, _ = make_table(self)
        job_id = table.create("x", [], ALICE)
        s = session()
        timed, closed = [], []
        service.wait(s, job_id, 5, on_output=False).addCallback(timed.append)
        service.wait(s, job_id, 50, on_output=True).addCallback(closed.append)
        clock.advance(5)
        self.assertEqual(timed, [False])
        s.lost()
        self.assertEqual(closed, [None])
        self.assertEqual(service.waiting(s), 0)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_output_releases_followers_only(self):
        table, service, _, clock, _ = make_table(self)
        job_id = table.create("x", [], ALICE, logs=True)
        follower, waiter = [], []
        s = session()
        service.wait(s, job_id, 50, on_output=True).addCallback(follower.append)
        service.wait(s, job_id, 50, on_output=False).addCallback(waiter.append)
        table.append_log(job_id, b"x")
        self.assertEqual((follower, waiter), ([True], []))
        clock.advance(50)

    def test_waiters_per_session_are_bounded(self):
        table, service, _, clock, _ = make_table(self)
        job_id = table.create("x", [], ALICE)
        s = session()
        for _ in range(MAX_WAITS_PER_SESSION):
            service.wait(s, job_id, 10, on_output=False)
        self.assertRaises(TooManyWaits, service.wait, s, job_id, 10, on_output=False)
        service.wait(session(), job_id, 10, on_output=False)  # another session is not affected
        clock.advance(10)
        self.assertEqual(service.waiting(s), 0)


class RetentionTests(unittest.TestCase):
    """Real SQLite and real files: rows and output files go together."""

    def finished_job(self, table, clock, size, at):
        clock.advance(at - clock.seconds())
        job_id = table.create("x", [], ALICE, logs=True)
        table.append_log(job_id, b"x" * size)
        table.finish(job_id, "succeeded")
        return job_id

    def test_old_jobs_go_with_their_files_and_dispatcher_rows(self):
        table, service, _, clock, state_dir = make_table(self, days=2)
        store = JobStore(table.db, state_dir, table)
        old = self.finished_job(table, clock, 10, 1000)
        record = store.add("old-d", "no_queue", ["true"], "a@b", clock.seconds())
        record.state, record.finished, record.return_codes = "finished", clock.seconds(), [0]
        with open(store.log_path(record), "wb") as f:
            f.write(b"out\n")
        store.save(record)
        unfinished = table.create("y", [], ALICE)
        new = self.finished_job(table, clock, 10, 1000 + 86400 * 2 - 10)
        path = table.get(old)["logs_path"]
        clock.advance(20)
        self.assertEqual(service.prune(), 2)
        self.assertIsNone(table.get(old))
        self.assertIsNone(table.get(record.seq))
        self.assertFalse(os.path.exists(path))
        self.assertFalse(os.path.exists(store.log_path(record)))
        self.assertEqual(table.db.execute("SELECT COUNT(*) FROM dispatcher_jobs").fetchone()[0], 0)
        self.assertIsNotNone(table.get(new))
        self.assertIsNotNone(table.get(unfinished))

    def test_size_cap_deletes_the_oldest_first(self):
        table, service, _, clock, _ = make_table(self, max_bytes=30_000)
        ids = [self.finished_job(table, clock, 10_000, 100 + i) for i in range(4)]
        running = table.create("z", [], ALICE, logs=True)
        table.append_log(running, b"y" * 50_000)  # unfinished jobs are never deleted
        paths = [table.get(i)["logs_path"] for i in ids]
        self.assertEqual(service.prune(), 2)
        self.assertEqual([table.get(i) is not None for i in ids], [False, False, True, True])
        self.assertEqual([os.path.exists(p) for p in paths], [False, False, True, True])
        self.assertIsNotNone(table.get(running))
        total = table.db.execute("SELECT SUM(stored_bytes) FROM jobs WHERE time_finished IS NOT NULL").fetchone()[0]
        self.assertLessEqual(total, 30_000)

    def test_retention_runs_at_start_and_every_hour(self):
        table, service, _, clock, _ = make_table(self, days=1)
        old = self.finished_job(table, clock, 1, 10)
        clock.advance(86400 - 3000)
        service.startService()
        self.addCleanup(service.stopService)
        self.assertIsNotNone(table.get(old))  # finished 86400 - 3000 s ago
        clock.advance(3600)
        self.assertIsNone(table.get(old))


class QueryStandInTests(unittest.TestCase):
    """What the job API relies on from sysadmd.jobs.query, on the job table's columns."""

    def test_bad_parts_are_named(self):
        for filters, options, part in [
            ([["id", "=~", 1]], {}, "filters[0][1]: unknown operator"),
            ([["id", "=", 1], ["nope", "=", 1]], {}, "filters[1][0]: unknown field 'nope'"),
            ([["id", "=", "x"]], {}, "filters[0][2]: expected a number"),
            ([], {"order_by": ["-bogus"]}, "options.order_by[0]"),
            ([], {"limit": -1}, "options.limit"),
            ("x", {}, "filters"),
        ]:
            with self.assertRaises(QueryError) as caught:
                compile_query(filters, options, model.COLUMNS)
            self.assertIn(part, str(caught.exception))

    def test_values_are_parameters_never_sql(self):
        q = compile_query([["owner.user", "=", "x' OR 1=1 --"], ["state", "in", ["RUNNING", "WAITING"]]],
                          {"order_by": ["-id"], "limit": 5}, model.COLUMNS)
        self.assertEqual(q.where, "(owner_user = ? AND (state IN (?, ?)))")
        self.assertEqual(q.params, ["x' OR 1=1 --", "RUNNING", "WAITING"])
        self.assertEqual((q.order_by, q.limit), ("id DESC", 5))


class ReleaseJobsMigrate(unittest.TestCase):
    """The first release's dispatcher jobs become jobs with numeric ids, owner and outcome."""

    def test_old_jobs_get_numeric_ids_and_new_ones_follow(self):
        state = os.path.join(short_tempdir(self, "mg"), "sysadmd")
        shutil.copytree(os.path.join(FIXTURE, "sysadmd"), state)
        os.chmod(state, 0o700)
        db = open_database(database_path(state), migrations.SCHEMA)
        self.addCleanup(db.close)
        table = JobTable(db, state)
        jobs = {j["dispatcher_id"]: j for j in (table.get(i) for i in (1, 2))}
        self.assertEqual(sorted(jobs), ["backup-home", "failing"])
        home, failing = jobs["backup-home"], jobs["failing"]
        self.assertEqual((home["id"], home["state"], home["outcome"], home["return_codes"]), (1, "SUCCESS", "succeeded", [0, 0]))
        self.assertEqual((failing["state"], failing["outcome"], failing["return_codes"]), ("FAILED", "failed", [3]))
        self.assertEqual(failing["error"], "command 1 exited with code 3")
        self.assertEqual(home["owner"], {"user": "alice", "via": None, "from": "127.0.0.1"})
        with open(home["logs_path"], "rb") as f:
            self.assertEqual(f.read(), b"one\ntwo\n")
        store = JobStore(db, state, table)
        record = store.add("next", "no_queue", ["true"], "root@::1", 0.0)
        self.assertEqual(record.seq, 3)
        raw = sqlite3.connect(database_path(state))
        self.addCleanup(raw.close)
        self.assertEqual(raw.execute("SELECT seq FROM dispatcher_jobs WHERE id = 'next'").fetchone()[0], 3)
