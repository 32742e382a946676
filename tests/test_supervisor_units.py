"""The supervisor on a Clock: the definition schema, the backoff schedule, the verbs'
replies and access, persistence of definitions (the runs are scripted handles here;
tests/test_supervisor.py runs real processes)."""

from __future__ import annotations

import signal
from typing import Any, List

from twisted.internet import task
from twisted.trial import unittest

from sysadmd.dispatcher.backend import CannotStart
from sysadmd.supervisor import definition as defs
from sysadmd.supervisor.program import backoff_delay
from tests.supervisor_support import definition, handled, make_supervisor


class ScriptedRun:
    def __init__(self, on_ended: Any, pid: int):
        self.on_ended = on_ended
        self.pgid = pid
        self.signals: List[int] = []
        self.terminated = False

    def signal(self, signum: int) -> bool:
        self.signals.append(signum)
        return True

    def terminate(self, grace: float) -> None:
        self.terminated = True
        self.on_ended(-1)

    def end(self, code: int) -> None:
        self.on_ended(code)


class ScriptedRunner:
    """Runs that end when the test says; ``fail_start`` makes starts raise CannotStart."""

    def __init__(self) -> None:
        self.runs: List[ScriptedRun] = []
        self.fail_start = False
        self.leftovers: List[Any] = []

    def new_marker(self, seq: int) -> str:
        return f"test:{seq}"

    def signal_leftovers(self, markers: Any, signum: int) -> Any:
        self.leftovers.append((dict(markers), signum))
        return {}

    def start(self, argv: Any, **kwargs: Any) -> ScriptedRun:
        if self.fail_start:
            raise CannotStart(f"cannot start {argv[0]!r}: no such executable file")
        run = ScriptedRun(kwargs["on_ended"], 1000 + len(self.runs))
        run.kwargs = kwargs
        self.runs.append(run)
        return run


class DefinitionSchema(unittest.TestCase):
    def error(self, data: Any, name: str = "web") -> str:
        with self.assertRaises(defs.DefinitionError) as caught:
            defs.validate(data, name, euid=0)
        return str(caught.exception)

    def test_defaults_and_the_command_string_split_as_the_dispatcher_splits(self):
        d = defs.validate({"command": 'sh -c "sleep 5"', "user": "root"}, "web", euid=0)
        self.assertEqual(d.command, ("sh", "-c", "sleep 5"))
        self.assertEqual((d.autostart, d.autorestart, d.exitcodes, d.startsecs, d.startretries, d.stopsignal,
                          d.stopwaitsecs, d.umask, d.directory), (True, "unexpected", (0,), 1.0, 3, "TERM", 10.0,
                                                                  0o022, "/"))
        self.assertEqual(d.as_json()["umask"], "022")
        self.assertEqual(defs.validate(d.as_json(), "web", euid=0), d)  # pull → push round trip

    def test_every_error_names_its_field(self):
        base = {"command": ["true"], "user": "root"}
        cases = {
            "command": {"user": "root"},
            "user": {"command": ["true"]},
            "directory": dict(base, directory="relative/dir"),
            "environment": dict(base, environment=["A=1"]),
            "environment.SYSADMD_JOB": dict(base, environment={"SYSADMD_JOB": "x"}),
            "umask": dict(base, umask="999"),
            "autostart": dict(base, autostart="yes"),
            "autorestart": dict(base, autorestart=1),
            "exitcodes": dict(base, exitcodes=[0, 256]),
            "startsecs": dict(base, startsecs=-1),
            "startretries": dict(base, startretries=1.5),
            "stopsignal": dict(base, stopsignal="STOP"),
            "stopwaitsecs": dict(base, stopwaitsecs="10"),
            "output_max_bytes": dict(base, output_max_bytes=1 << 40),
            "autostrat": dict(base, autostrat=True),
            "name": dict(base, name="other"),
        }
        for field, data in cases.items():
            self.assertTrue(self.error(data).startswith(field + ":"), (field, self.error(data)))
        self.assertIn("no such user", self.error(dict(base, user="no-such-user-here")))
        self.assertTrue(self.error(base, name=".hidden").startswith("name:"))
        self.assertIn("only as itself", str(self.assertRaises(defs.DefinitionError, defs.validate, base, "web",
                                                               euid=12345)))


class BackoffSchedule(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.runner = ScriptedRunner()
        self.sup = make_supervisor(self, clock=self.clock, runner=self.runner)

    def push(self, name: str, **fields: Any) -> None:
        reply = self.successResultOf(handled(self.sup, "push", name, definition(["prog"], **fields)))
        self.assertEqual(reply.status, "success", reply)

    def test_delays_grow_one_second_per_failure_then_fatal(self):
        self.assertEqual([backoff_delay(n) for n in (1, 2, 3, 10, 500)], [1, 2, 3, 10, 60])
        self.push("crash", startsecs=1, startretries=3)
        handled(self.sup, "start", "crash")
        starts = [self.clock.seconds()]
        for attempt in range(4):
            self.runner.runs[-1].end(2)  # dies at once, within startsecs
            if attempt < 3:
                self.assertEqual(self.sup.programs["crash"].state, "BACKOFF")
                self.clock.advance(backoff_delay(attempt + 1) - 0.01)
                self.assertEqual(len(self.runner.runs), attempt + 1)  # not before its delay
                self.clock.advance(0.01)
                starts.append(self.clock.seconds())
        self.assertEqual(self.sup.programs["crash"].state, "FATAL")
        self.assertEqual([round(b - a, 2) for a, b in zip(starts, starts[1:])], [1, 2, 3])
        self.clock.advance(3600)
        self.assertEqual(len(self.runner.runs), 4)  # FATAL stays put: 1 + startretries runs
        self.assertEqual(self.sup.watch.states("crash")[-2:], ["BACKOFF", "FATAL"])

    def test_staying_up_startsecs_clears_the_count(self):
        self.push("flaky", startsecs=2, startretries=1)
        handled(self.sup, "start", "flaky")
        self.runner.runs[-1].end(1)
        self.clock.advance(1)
        self.clock.advance(2)  # the retry stays up startsecs: RUNNING, count cleared
        self.assertEqual((self.sup.programs["flaky"].state, self.sup.programs["flaky"].failures), ("RUNNING", 0))
        self.runner.runs[-1].end(1)  # unexpected exit from RUNNING: restarted at once
        self.assertEqual(self.sup.watch.states("flaky")[-3:], ["RUNNING", "EXITED", "STARTING"])

    def test_startsecs_zero_crash_loop_restarts_at_most_once_a_second(self):
        self.push("quick", startsecs=0, autorestart=True)
        handled(self.sup, "start", "quick")
        self.clock.advance(0.2)
        self.runner.runs[-1].end(0)
        self.assertEqual((self.sup.programs["quick"].state, len(self.runner.runs)), ("EXITED", 1))
        self.clock.advance(0.79)
        self.assertEqual(len(self.runner.runs), 1)
        self.clock.advance(0.01)
        self.assertEqual((self.sup.programs["quick"].state, len(self.runner.runs)), ("RUNNING", 2))
        self.clock.advance(5)
        self.runner.runs[-1].end(0)  # lived long enough: again at once
        self.assertEqual(len(self.runner.runs), 3)
        self.clock.advance(0.1)
        self.runner.runs[-1].end(0)
        self.assertEqual(self.successResultOf(handled(self.sup, "stop", "quick")).status, "success")
        self.clock.advance(10)  # the due autorestart was cancelled by stop
        self.assertEqual((self.sup.programs["quick"].state, len(self.runner.runs)), ("STOPPED", 3))

    def test_a_program_that_cannot_start_backs_off_too(self):
        self.runner.fail_start = True
        self.push("missing", startretries=1)
        handled(self.sup, "start", "missing")
        self.assertEqual(self.sup.programs["missing"].state, "BACKOFF")
        self.clock.advance(1)
        self.assertEqual(self.sup.programs["missing"].state, "FATAL")
        status = self.successResultOf(handled(self.sup, "status", "missing")).data
        self.assertIn("no such executable", status["error"])
        job = self.sup.jobs.get(status["job"])
        self.assertEqual((job["state"], job["outcome"]), ("FAILED", "not_started"))

    def test_stop_sends_stopsignal_then_sigkill_after_stopwaitsecs(self):
        self.push("svc", stopsignal="HUP", stopwaitsecs=7, startsecs=0)
        handled(self.sup, "start", "svc")
        run = self.runner.runs[-1]
        d = handled(self.sup, "stop", "svc")
        self.assertEqual(run.signals, [signal.SIGHUP])
        self.clock.advance(6.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertTrue(run.terminated)
        self.assertEqual(self.successResultOf(d).status, "success")
        self.assertEqual(self.sup.programs["svc"].state, "STOPPED")

    def test_stop_in_backoff_cancels_the_retry(self):
        self.push("crash", startretries=5)
        handled(self.sup, "start", "crash")
        self.runner.runs[-1].end(1)
        self.assertEqual(self.successResultOf(handled(self.sup, "stop", "crash")).status, "success")
        self.clock.advance(100)
        self.assertEqual((len(self.runner.runs), self.sup.programs["crash"].state), (1, "STOPPED"))


class Verbs(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.runner = ScriptedRunner()
        self.sup = make_supervisor(self, clock=self.clock, runner=self.runner)

    def reply(self, verb: str, name: Any = None, data: Any = None, full: bool = True):
        return self.successResultOf(handled(self.sup, verb, name, data, full))

    def test_limited_access_reads_only(self):
        self.assertEqual(self.reply("push", "web", definition(["prog"])).status, "success")
        for verb in ("start", "stop", "kill", "repair", "push", "delete", "reload", "restart"):
            reply = self.reply(verb, "web", definition(["x"]), full=False)
            self.assertEqual(reply.status, "fail", verb)
            self.assertIn("needs full access", reply.error)
        self.assertEqual(self.reply("list", full=False).data, ["web"])
        self.assertEqual(self.reply("status", "web", full=False).data["state"], "STOPPED")
        pulled = self.reply("pull", "web", full=False)
        self.assertEqual((pulled.status, pulled.job, pulled.data["command"]), ("file", "web", ["prog"]))

    def test_bad_requests(self):
        self.assertEqual(self.reply("frobnicate", "web").status, "invalid")
        self.assertEqual(self.reply(None, "web").status, "invalid")
        bad = self.reply("start", "../etc")
        self.assertEqual(bad.status, "fail")
        self.assertTrue(bad.error.startswith("job name:"), bad.error)
        self.assertIn("no program named 'ghost'", self.reply("status", "ghost").error)
        self.assertTrue(self.reply("push", "web", {"command": ["x"], "user": "root", "startsecs": "1"})
                        .error.startswith("startsecs:"))
        self.assertIn("needs data", self.reply("push", "web", None).error)

    def test_push_while_running_waits_for_reload(self):
        self.reply("push", "web", definition(["v1"], startsecs=0))
        self.reply("start", "web")
        self.assertEqual(self.reply("push", "web", definition(["v2"], startsecs=0)).status, "success")
        self.assertEqual(self.reply("push", "web", definition(["v2"], startsecs=0)).status, "redundant")
        self.assertEqual(self.reply("pull", "web").data["command"], ["v2"])
        self.assertTrue(self.reply("status", "web").data["reload_pending"])
        self.assertEqual(len(self.runner.runs), 1)  # still the v1 run
        d = handled(self.sup, "reload", "web")
        self.runner.runs[-1].end(-1)  # it obeys the stop signal
        self.assertEqual(self.successResultOf(d).status, "success")
        self.assertEqual(self.runner.runs[-1].kwargs["environment"]["PATH"], self.sup.job_path)
        self.assertEqual(len(self.runner.runs), 2)
        self.assertEqual(self.sup.programs["web"].definition.command, ("v2",))
        self.assertEqual(self.sup.programs["web"].state, "RUNNING")
        self.assertEqual(self.reply("reload", "web").status, "redundant")

    def test_delete_stops_then_removes_and_definitions_survive_a_restart(self):
        self.reply("push", "keep", definition(["k"], autostart=True, environment={"A": "1"}))
        self.reply("push", "gone", definition(["g"], startsecs=0))
        self.reply("start", "gone")
        d = handled(self.sup, "delete", "gone")
        self.assertEqual(self.runner.runs[-1].signals, [signal.SIGTERM])
        self.runner.runs[-1].end(-1)
        self.assertEqual(self.successResultOf(d).status, "success")
        self.assertEqual(self.reply("list").data, ["keep"])
        self.successResultOf(self.sup.stopService())
        again = make_supervisor(self, state_dir=self.sup.state_dir, clock=self.clock, runner=self.runner)
        self.assertEqual(self.successResultOf(handled(again, "list")).data, ["keep"])
        self.assertEqual(again.programs["keep"].definition.environment, (("A", "1"),))
        self.assertEqual(again.programs["keep"].state, "STARTING")  # autostart
