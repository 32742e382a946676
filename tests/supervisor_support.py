"""A real Supervisor on a temporary database for the supervisor tests."""

from __future__ import annotations

import os
import sys
from typing import Any, Dict, List, Optional

from twisted.internet import defer, reactor

from sysadmd import migrations
from sysadmd.jobs.store import JobTable
from sysadmd.runtime.db import database_path, open_database
from sysadmd.supervisor import definition as defs
from sysadmd.supervisor.core import Supervisor
from sysadmd.supervisor.spawn import ProgramRunner
from sysadmd.supervisor.store import ProgramStore
from tests.support import short_tempdir

PY = sys.executable
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class StateWatch:
    """Collects the supervisor's events; ``until(name, state)`` fires when one arrives."""

    def __init__(self) -> None:
        self.events: List[Dict[str, Any]] = []
        self.waiting: List[Any] = []

    def __call__(self, args: Dict[str, Any]) -> None:
        self.events.append(args)
        for entry in list(self.waiting):
            name, state, d, call = entry
            if args["program"] == name and args["state"] == state:
                self.waiting.remove(entry)
                call.cancel()
                d.callback(args)

    def states(self, name: str) -> List[str]:
        return [e["state"] for e in self.events if e["program"] == name]

    def until(self, name: str, state: str, timeout: float = 15.0, clock: Any = reactor) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        entry: List[Any] = [name, state, d, None]

        def expire() -> None:
            self.waiting.remove(tuple(entry)) if tuple(entry) in self.waiting else None
            d.errback(AssertionError(f"{name} did not reach {state} in {timeout}s; states: {self.states(name)}"))
        entry[3] = clock.callLater(timeout, expire)
        self.waiting.append(tuple(entry))
        return d


def make_supervisor(testcase: Any, state_dir: Optional[str] = None, clock: Any = reactor, runner: Any = None,
                    start: bool = True):
    state_dir = state_dir or short_tempdir(testcase)
    db = open_database(database_path(state_dir), migrations.SCHEMA)
    testcase.addCleanup(db.close)
    table = JobTable(db, state_dir, clock)
    watch = StateWatch()
    sup = Supervisor(ProgramStore(db, clock.seconds), table, runner or ProgramRunner(reactor), clock, watch,
                     job_path=PATH)
    sup.watch = watch
    sup.state_dir = state_dir
    if start:
        sup.startService()
        testcase.addCleanup(stop, sup, clock)
    return sup


def stop(sup: Supervisor, clock: Any) -> Any:
    """Stop *sup*; on a Clock, let the stop timers (SIGKILL after stopwaitsecs) run."""
    if not sup.running:
        return None
    d = sup.stopService()
    if clock is not reactor:
        for _ in range(10):
            clock.advance(defs.MAX_SECONDS)
    return d


def definition(command: Any, **fields: Any) -> Dict[str, Any]:
    out: Dict[str, Any] = {"command": command, "user": "root", "autostart": False, "startsecs": 0.3}
    out.update(fields)
    return out


def py(code: str) -> List[str]:
    return [PY, "-c", code]


def handled(sup: Supervisor, verb: str, name: Optional[str] = None, data: Any = None, full: bool = True):
    return sup.handle(verb, name, data, full_access=full, actor="test")


os.environ.setdefault("LANG", "C.UTF-8")
