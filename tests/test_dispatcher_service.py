"""The Dispatcher service with a fake process reactor and a Clock: queues, cadence, caps.

No real processes here: ``spawnProcess`` is recorded and the test plays the child
(output chunks, exit codes), so timing is exact.
"""

import os

from twisted.internet import error
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial import unittest

from sysadmd.runtime.db import database_path, open_database
from sysadmd.dispatcher.service import Dispatcher
from sysadmd.dispatcher.store import JobStore
from sysadmd.wire.envelope import ApiError
from tests.support import make_config, short_tempdir


class FakeTransport:
    pid = 0  # never a real process group: the runner refuses to signal pgid <= 1

    def __init__(self):
        self.stdin_closed = False

    def closeStdin(self):
        self.stdin_closed = True


class FakeProcessReactor(Clock):
    """A Clock that records spawnProcess calls instead of forking."""

    def __init__(self):
        super().__init__()
        self.spawned = []

    def spawnProcess(self, proto, executable, args, env=None, path=None, usePTY=False, childFDs=None):
        transport = FakeTransport()
        proto.makeConnection(transport)
        self.spawned.append({"proto": proto, "args": args, "env": env, "path": path, "transport": transport,
                             "child_fds": childFDs})
        return transport


def exit_with(proto, code):
    if code == 0:
        proto.processEnded(Failure(error.ProcessDone(0)))
    else:
        proto.processEnded(Failure(error.ProcessTerminated(exitCode=code)))


class DispatcherServiceTests(unittest.TestCase):
    def make(self, **config):
        self.state_dir = short_tempdir(self)
        cfg = make_config(self.state_dir, **config)
        db = open_database(database_path(self.state_dir))
        self.addCleanup(db.close)
        self.reactor = FakeProcessReactor()
        self.events, self.times = [], []
        self.finished_logs = []
        self.store = JobStore(db, self.state_dir)
        self.dispatcher = Dispatcher(cfg, self.store, self.reactor,
                                     publish=self.capture,
                                     finished_log_sink=self.finished_logs.append)
        self.dispatcher.startService()
        self.addCleanup(self.stop)
        return self.dispatcher

    def capture(self, args, keep):
        self.events.append(args)
        self.times.append(self.reactor.seconds())

    def stop(self):
        if self.dispatcher.running:
            self.dispatcher.stopService()
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def states(self, job_id):
        return [e["state"] for e in self.events if e["process_id"] == job_id]

    def test_spawn_arguments_and_environment(self):
        d = self.make(JOB_WORKDIR="/tmp", JOB_PATH="/usr/bin:/bin")
        d.submit("j", ['echo "a b" c'])
        self.reactor.advance(0)
        spawned = self.reactor.spawned[0]
        self.assertTrue(spawned["args"][-3].endswith("/echo"))
        self.assertEqual(spawned["args"][-2:], ["a b", "c"])
        self.assertIn("setsid", spawned["args"][0] + " ".join(spawned["args"][1:3]))
        self.assertEqual(sorted(spawned["env"]), ["HOME", "LANG", "PATH", "SHELL", "SYSADMD_JOB", "SYSADM_PROGRESS_FD"])
        self.assertEqual(spawned["env"]["PATH"], "/usr/bin:/bin")
        self.assertEqual(spawned["env"]["SYSADM_PROGRESS_FD"], "3")
        self.assertEqual(spawned["child_fds"], {0: "w", 1: "r", 2: "r", 3: "r"})
        self.assertEqual(spawned["path"], "/tmp")
        self.assertTrue(spawned["transport"].stdin_closed)
        exit_with(spawned["proto"], 0)

    def test_pkg_queue_runs_one_at_a_time_in_order(self):
        d = self.make()
        for name in ("p1", "p2", "p3"):
            d.submit(name, ["true"], queue="pkg_queue")
        self.reactor.advance(0)
        self.assertEqual(len(self.reactor.spawned), 1)
        listed = d.list()["jobs"]["pkg_queue"]
        self.assertEqual(listed["p1"], {"commands": ["true"], "queue_position": "0", "state": "running"})
        self.assertEqual(listed["p3"], {"commands": ["true"], "queue_position": "2", "state": "pending"})
        order = []
        for expected in ("p1", "p2", "p3"):
            running = list(d.queues["pkg_queue"].running.values())
            self.assertEqual([j.id for j in running], [expected])
            order.append(expected)
            exit_with(self.reactor.spawned[-1]["proto"], 0)
            self.reactor.advance(0)
        self.assertEqual(order, ["p1", "p2", "p3"])
        self.assertEqual(len(self.reactor.spawned), 3)
        self.assertEqual(d.list(), {"jobs": {"pkg_queue": {}}})

    def test_parallel_cap_of_no_queue(self):
        d = self.make(MAX_PARALLEL_JOBS=2)
        for name in ("a", "b", "c"):
            d.submit(name, ["true"])
        self.reactor.advance(0)
        self.assertEqual(len(self.reactor.spawned), 2)
        self.assertEqual(d.list()["jobs"]["no_queue"]["c"], {"commands": ["true"], "state": "pending"})
        exit_with(self.reactor.spawned[0]["proto"], 0)
        self.reactor.advance(0)
        self.assertEqual(len(self.reactor.spawned), 3)
        self.assertEqual(d.list()["jobs"]["no_queue"]["c"]["state"], "running")
        for s in self.reactor.spawned[1:]:
            exit_with(s["proto"], 0)

    def test_output_updates_at_most_four_per_second_and_coalesced(self):
        d = self.make()
        d.submit("s", ["echo x"])
        self.reactor.advance(0)
        proto = self.reactor.spawned[0]["proto"]
        fed = []
        for i in range(200):  # a chunk every 10 ms for 2 s
            chunk = f"{i},".encode()
            fed.append(chunk)
            proto.outReceived(chunk)
            self.reactor.advance(0.01)
        self.reactor.advance(1)
        updates = [e for e in self.events if e["state"] == "running" and "echo x" in e and e["echo x"]]
        sent_at = [t for t, e in zip(self.times, self.events) if e in updates]
        for earlier, later in zip(sent_at, sent_at[1:]):
            self.assertGreaterEqual(later - earlier, 0.25 - 1e-9)
        self.assertLessEqual(len(updates), 9)  # 2 s at 4/s, plus the first at once
        self.assertGreaterEqual(len(updates), 7)
        self.assertEqual("".join(u["echo x"] for u in updates), b"".join(fed).decode())
        self.assertEqual(self.reactor.getDelayedCalls(), [])  # the update timer is idle now
        for u in updates:
            self.assertEqual(u["current_cmd"], "echo x")
            self.assertEqual(u["cmd_list"], ["echo x"])
            self.assertIn("time_started", u)
        proto.outReceived(b"last")  # output just before the end is flushed, not dropped
        exit_with(proto, 0)
        self.assertEqual(self.events[-2]["echo x"], "last")
        finished = self.events[-1]
        self.assertEqual(finished["state"], "finished")
        self.assertEqual(finished["echo x"], b"".join(fed).decode() + "last")

    def test_output_cap_in_events_full_output_on_disk(self):
        d = self.make(JOB_OUTPUT_CAP=1024)
        job = d.submit("big", ["echo x"])
        self.reactor.advance(0)
        proto = self.reactor.spawned[0]["proto"]
        proto.outReceived(b"A" * 3000)
        proto.outReceived(b"B" * 2000 + b"END\n")
        self.reactor.advance(1)
        update = [e for e in self.events if e["state"] == "running" and e.get("echo x")][0]
        self.assertTrue(update["echo x"].startswith("[… 3980 bytes cut; full output in the job log]\n"))
        exit_with(proto, 0)
        log = self.events[-1]["echo x"]
        self.assertTrue(log.startswith("[… 3980 bytes cut; full output in the job log]\n"), log[:80])
        self.assertTrue(log.endswith("BEND\n"))
        with open(self.store.log_path(job.record), "rb") as f:
            self.assertEqual(f.read(), b"A" * 3000 + b"B" * 2000 + b"END\n")
        history = d.history(["big"])
        self.assertEqual(history[0]["echo x"], log)

    def test_chain_stops_at_first_failure_with_exact_events(self):
        d = self.make()
        d.submit("c", ["echo one", "false", "echo never"])
        self.assertEqual(self.events, [{"cmd_list": ["echo one", "false", "echo never"], "process_id": "c", "state": "pending"}])
        self.reactor.advance(0)
        first = self.reactor.spawned[0]["proto"]
        first.outReceived(b"one\n")
        self.reactor.advance(0)
        exit_with(first, 0)
        exit_with(self.reactor.spawned[1]["proto"], 1)
        self.assertEqual(len(self.reactor.spawned), 2)
        self.assertEqual(self.states("c"), ["pending", "running", "running", "running", "finished"])
        second_start = self.events[3]
        self.assertEqual(second_start["current_cmd"], "false")
        self.assertEqual(second_start["echo one"], "one\n")
        self.assertEqual(second_start["return_codes/echo one"], "0")
        self.assertEqual(second_start["false"], "")
        finished = dict(self.events[-1])
        self.assertEqual(finished.pop("time_started"), finished.pop("time_finished"))  # Clock time 0
        self.assertEqual(finished, {
            "cmd_list": ["echo one", "false", "echo never"], "process_id": "c", "state": "finished",
            "echo one": "one\n", "return_codes/echo one": "0",
            "false": "", "return_codes/false": "1",
        })
        self.assertEqual(self.finished_logs, [self.events[-1]])

    def test_duplicate_and_bad_submissions(self):
        d = self.make()
        d.submit("dup", ["true"])
        with self.assertRaises(ApiError) as e:
            d.submit_many({"dup": ["true"], "other": ["true"]})
        self.assertEqual(e.exception.code, "400")
        self.assertIn("dup", e.exception.detail)
        self.assertNotIn("other", d.active)
        for bad in ([], [""], ["  "], [3]):
            with self.assertRaises(ApiError) as e:
                d.submit("bad", bad)
            self.assertIn("'bad'", e.exception.detail)
        self.reactor.advance(0)
        exit_with(self.reactor.spawned[0]["proto"], 0)
        d.submit("dup", ["true"])  # finished ids may be reused
        self.reactor.advance(0)
        exit_with(self.reactor.spawned[1]["proto"], 0)
        self.assertEqual(len(d.history(["dup"])), 2)

    def test_command_that_cannot_start(self):
        d = self.make()
        d.submit("n", ["no-such-program-xyz --flag", "echo never"])
        self.reactor.advance(0)
        self.assertEqual(self.reactor.spawned, [])
        finished = self.events[-1]
        self.assertEqual(finished["state"], "finished")
        self.assertEqual(finished["return_codes/no-such-program-xyz --flag"], "-1")
        self.assertIn("cannot start 'no-such-program-xyz'", finished["no-such-program-xyz --flag"])
        self.assertNotIn("return_codes/echo never", finished)  # never reached: no keys, as upstream
        self.assertNotIn("echo never", finished)

    def test_many_jobs_that_cannot_start_do_not_recurse(self):
        d = self.make(MAX_PARALLEL_JOBS=2)
        d.submit_many({f"n{i:03d}": ["no-such-program-xyz"] for i in range(300)})
        self.reactor.advance(0)
        self.assertEqual(d.list(), {"jobs": {"no_queue": {}}})
        self.assertEqual(sum(1 for e in self.events if e["state"] == "finished"), 300)

    def test_kill_pending_job(self):
        d = self.make()
        d.submit("first", ["true"], queue="pkg_queue")
        d.submit("second", ["true"], queue="pkg_queue")
        self.reactor.advance(0)
        self.assertEqual(d.kill(["second", "nope"]), ["second"])
        finished = self.events[-1]
        self.assertEqual(finished["process_id"], "second")
        self.assertEqual(finished["killed"], "true")
        self.assertNotIn("return_codes/true", finished)  # nothing ran
        self.assertNotIn("time_started", finished)
        exit_with(self.reactor.spawned[0]["proto"], 0)
        self.reactor.advance(0)
        self.assertEqual(len(self.reactor.spawned), 1)  # the killed job never ran
        self.assertEqual(self.states("second"), ["pending", "finished"])

    def test_stop_keeps_pending_jobs_for_the_next_start(self):
        d = self.make()
        d.submit("later", ["true"], queue="pkg_queue")
        d.stopService()
        self.reactor.advance(0)
        self.assertEqual(self.reactor.spawned, [])
        d.startService()
        self.reactor.advance(0)
        self.assertEqual(len(self.reactor.spawned), 1)
        exit_with(self.reactor.spawned[0]["proto"], 0)
        self.assertEqual(self.events[-1]["return_codes/true"], "0")

    def test_stored_running_job_is_finished_interrupted_at_start(self):
        d = self.make()
        job = d.submit("r", ["echo a", "echo b"])
        d.stopService()
        record = job.record
        record.state, record.started, record.current = "running", 0.0, 0
        record.ranges = [[0, -1]]
        self.store.save(record)
        with open(self.store.log_path(record), "wb") as f:
            f.write(b"partial output\n")
        d.startService()
        finished = self.events[-1]
        self.assertEqual(finished["interrupted"], "true")
        self.assertEqual(finished["echo a"], "partial output\n")
        self.assertEqual(finished["return_codes/echo a"], "-1")
        self.assertNotIn("return_codes/echo b", finished)
        self.reactor.advance(0)
        self.assertEqual(self.reactor.spawned, [])
        self.assertEqual(d.history(["r"])[0]["interrupted"], "true")

    def test_prune_old_finished_jobs(self):
        d = self.make(JOB_RETENTION_DAYS=1)
        job = d.submit("old", ["echo x"])
        self.reactor.advance(0)
        self.reactor.spawned[0]["proto"].outReceived(b"x\n")
        exit_with(self.reactor.spawned[0]["proto"], 0)
        path = self.store.log_path(job.record)
        self.assertTrue(os.path.exists(path))
        d.stopService()
        self.reactor.advance(2 * 86400)
        d.startService()
        self.assertEqual(d.history(), [])
        self.assertFalse(os.path.exists(path))
