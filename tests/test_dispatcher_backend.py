"""Issue 9 item 4: the CommandRunner seam.  The dispatcher's queue, kill, stop and crash
logic driven through a second, in-memory runner (the shape a supervised program or a
remote agent would have); the process-group runner keeps its own real-process tests
(test_sec_dispatcher, test_dispatcher_progress, test_dispatcher_wss)."""

from __future__ import annotations

import signal
from typing import Any, Dict, List, Mapping

from twisted.internet.task import Clock
from twisted.trial import unittest

from sysadmd.runtime.db import database_path, open_database
from sysadmd.dispatcher.backend import CannotStart, CommandHandle, CommandRunner
from sysadmd.dispatcher.runner import ProcessGroupRunner, RunningCommand
from sysadmd.dispatcher.service import Dispatcher
from sysadmd.dispatcher.store import JobStore
from tests.support import make_config, short_tempdir


class MemoryCommand:
    """A command that runs nowhere: the test says what it prints and when it ends."""

    def __init__(self, runner: "MemoryRunner", argv, environment, workdir, marker, on_output, on_progress, on_ended):
        self.runner, self.argv, self.environment, self.workdir, self.marker = runner, argv, environment, workdir, marker
        self.on_output, self.on_progress, self.on_ended = on_output, on_progress, on_ended
        self.signals: List[int] = []
        self.killing = self.over = False
        self.escalation = None

    # what the dispatcher calls
    def terminate(self, grace: float) -> None:
        if self.killing or self.over:
            return
        self.killing = True
        self.signals.append(signal.SIGTERM)
        if not self.runner.ignore_term:
            self.runner.clock.callLater(0, self.end, -1)
        else:
            self.escalation = self.runner.clock.callLater(grace, self._escalate)

    def _escalate(self) -> None:
        self.signals.append(signal.SIGKILL)
        self.end(-1)

    def signal(self, signum: int) -> bool:
        self.signals.append(signum)
        return not self.over

    def abandon(self) -> None:
        self.over = True

    # what the test calls
    def print(self, data: bytes) -> None:
        self.on_output(data)

    def end(self, code: int) -> None:
        if self.over:
            return
        self.over = True
        if self.escalation is not None and self.escalation.active():
            self.escalation.cancel()
        self.on_ended(-1 if self.killing else code)


class MemoryRunner:
    def __init__(self, clock: Clock):
        self.clock = clock
        self.started: List[MemoryCommand] = []
        self.ignore_term = False
        self.leftovers: Dict[str, List[int]] = {}  # marker -> ids of "processes" a crash left
        self.signalled: List[Any] = []

    def new_marker(self, seq: int) -> str:
        return f"memory:{seq}"

    def start(self, argv, *, command, environment: Mapping[str, str], workdir, marker, on_output, on_progress,
              on_ended) -> MemoryCommand:
        if argv[0] == "missing":
            raise CannotStart(f"cannot start {command!r}: this runner has no such program")
        handle = MemoryCommand(self, argv, dict(environment), workdir, marker, on_output, on_progress, on_ended)
        self.started.append(handle)
        return handle

    def signal_leftovers(self, markers: Mapping[str, str], signum: int) -> Dict[str, List[int]]:
        found = {marker: list(self.leftovers[marker]) for marker in markers if self.leftovers.get(marker)}
        self.signalled.append((signum, sorted(found)))
        if signum == signal.SIGKILL:
            for marker in found:
                del self.leftovers[marker]
        return found


class SeamTests(unittest.TestCase):
    def make(self, **config):
        self.state_dir = short_tempdir(self)
        self.db = open_database(database_path(self.state_dir))
        self.addCleanup(self.db.close)
        self.store = JobStore(self.db, self.state_dir)
        self.clock = Clock()
        self.runner = MemoryRunner(self.clock)
        self.events: List[Dict[str, Any]] = []
        self.progress: List[Any] = []
        self.dispatcher = Dispatcher(make_config(self.state_dir, **config), self.store, self.clock,
                                     publish=lambda args, keep: self.events.append(args), runner=self.runner,
                                     on_progress=lambda job, report: self.progress.append((job.id, report)))
        self.dispatcher.startService()
        self.addCleanup(self.stop, self.dispatcher)
        return self.dispatcher

    def stop(self, dispatcher):
        # Not waited for: a test that failed half way may leave a command nobody ends.
        if dispatcher.running:
            dispatcher.stopService()
            self.clock.advance(0)
            self.clock.advance(60)

    def finished(self, job_id):
        return [e for e in self.events if e["process_id"] == job_id and e["state"] == "finished"]

    def test_both_runners_provide_the_interface(self):
        self.make()
        self.assertIsInstance(self.runner, CommandRunner)
        self.assertIsInstance(ProcessGroupRunner(self.clock), CommandRunner)
        for handle in (MemoryCommand, RunningCommand):
            for name in ("terminate", "signal", "abandon"):
                self.assertTrue(callable(getattr(handle, name)), (handle, name))
        default = Dispatcher(make_config(self.state_dir), self.store, self.clock, publish=lambda a, k: None)
        self.assertIsInstance(default.runner, ProcessGroupRunner)

    def test_queue_chain_output_and_progress_through_the_runner(self):
        d = self.make(JOB_PATH="/opt/bin:/bin", JOB_WORKDIR="/srv")
        job = d.submit("first", ["build one", "build two", "never"], queue="pkg_queue")
        d.submit("second", ["build three"], queue="pkg_queue")
        self.clock.advance(0)
        [one] = self.runner.started
        self.assertEqual(one.argv, ["build", "one"])
        self.assertEqual(one.environment["PATH"], "/opt/bin:/bin")
        self.assertEqual(one.workdir, "/srv")
        self.assertEqual(one.marker, job.record.marker)
        self.assertEqual(self.store.unfinished()[0].marker, one.marker)  # stored before the start
        one.print(b"one\n")
        one.on_progress({"percent": 40.0, "description": "compiling", "extra": {}})
        self.assertEqual(job.progress["percent"], 40.0 / 3)
        one.end(0)
        two = self.runner.started[1]
        two.end(2)  # the chain stops here; the queue moves on
        [done] = self.finished("first")
        self.assertEqual((done["build one"], done["return_codes/build one"], done["return_codes/build two"]),
                         ("one\n", "0", "2"))
        self.assertNotIn("return_codes/never", done)
        self.clock.advance(0)
        self.assertEqual(self.runner.started[2].argv, ["build", "three"])
        self.runner.started[2].end(0)
        self.assertEqual(self.progress, [("first", {"percent": 40.0 / 3, "description": "compiling", "extra": {
            "command": 1, "commands": 3, "command_percent": 40.0}})])

    def test_a_command_the_runner_cannot_start(self):
        d = self.make()
        d.submit("m", ["missing thing", "echo never"])
        self.clock.advance(0)
        [done] = self.finished("m")
        self.assertEqual(done["return_codes/missing thing"], "-1")
        self.assertIn("this runner has no such program", done["missing thing"])

    def test_kill_terminates_with_the_grace_and_frees_the_queue(self):
        d = self.make(JOB_KILL_GRACE=3)
        d.submit("stubborn", ["serve"], queue="pkg_queue")
        d.submit("next", ["serve"], queue="pkg_queue")
        self.clock.advance(0)
        self.runner.ignore_term = True
        [command] = self.runner.started
        self.assertEqual(d.kill(["stubborn"]), ["stubborn"])
        self.assertEqual(command.signals, [signal.SIGTERM])
        self.clock.advance(2.9)
        self.assertEqual(self.finished("stubborn"), [])
        self.clock.advance(0.1)
        self.assertEqual(command.signals, [signal.SIGTERM, signal.SIGKILL])
        [done] = self.finished("stubborn")
        self.assertEqual((done["killed"], done["return_codes/serve"]), ("true", "-1"))
        self.clock.advance(0)
        self.assertEqual(len(self.runner.started), 2)
        self.runner.started[1].end(0)

    def test_stop_interrupts_running_keeps_pending_and_restart_runs_them(self):
        d = self.make()
        d.submit("running", ["serve"], queue="pkg_queue")
        d.submit("pending", ["serve"], queue="pkg_queue")
        self.clock.advance(0)
        stopped = d.stopService()
        self.clock.advance(0)  # the memory command obeys SIGTERM on the next turn
        self.assertTrue(stopped.called)
        [done] = self.finished("running")
        self.assertEqual(done["interrupted"], "true")
        self.assertEqual([r.id for r in self.store.unfinished()], ["pending"])
        d.startService()
        self.clock.advance(0)
        self.assertEqual(len(self.runner.started), 2)
        self.runner.started[1].end(0)
        self.assertEqual(self.finished("pending")[0]["return_codes/serve"], "0")

    def test_after_a_crash_the_runner_ends_what_the_jobs_left(self):
        d = self.make(JOB_KILL_GRACE=2)
        job = d.submit("cut", ["serve", "never"])
        self.clock.advance(0)
        marker = job.record.marker
        # The daemon dies here: the row says running; the runner still sees its processes.
        d.running = False
        self.runner.leftovers[marker] = [101, 102]
        restarted = Dispatcher(make_config(self.state_dir, JOB_KILL_GRACE=2), self.store, self.clock,
                               publish=lambda args, keep: self.events.append(args), runner=self.runner)
        restarted.startService()
        self.addCleanup(self.stop, restarted)
        [done] = self.finished("cut")
        self.assertEqual((done["interrupted"], done["return_codes/serve"]), ("true", "-1"))
        self.assertEqual(self.runner.signalled, [(signal.SIGTERM, [marker])])
        self.clock.advance(2)
        self.assertEqual(self.runner.signalled[-1], (signal.SIGKILL, [marker]))
        self.assertEqual(self.runner.leftovers, {})

    def test_a_command_that_ignores_even_the_forced_stop_is_written_off(self):
        d = self.make(JOB_KILL_GRACE=1)
        d.submit("stuck", ["serve"])
        self.clock.advance(0)
        [command] = self.runner.started
        command.terminate = lambda grace: command.signals.append("ignored")  # stuck in the kernel
        stopped = d.stopService()
        self.clock.advance(1 + 2.0)  # the grace and STOP_SLACK
        self.assertTrue(stopped.called)
        self.assertTrue(command.over)  # abandoned: no callback expected any more
        [done] = self.finished("stuck")
        self.assertEqual(done["interrupted"], "true")
        command.on_output(b"late")  # a late report of a written-off command changes nothing
        command.on_ended(0)
        self.assertEqual(len(self.finished("stuck")), 1)
        self.assertIsInstance(command, CommandHandle)
