"""The supervisor's programs as a ``sysadm/services`` backend (docs/protocol.md §6.10).

:class:`SupervisorBackend` has the methods of
:class:`sysadmd.sysclasses.services.ServiceBackend`: ``list_services`` shows each program
(``tag`` ``supervisor``, ``is_enabled`` = ``autostart``, ``is_running`` = STARTING,
RUNNING or STOPPING), and ``start``/``stop``/``restart``/``enable``/``disable`` act on it
through :meth:`Supervisor.handle` (restart: stop, then start; enable/disable: set
``autostart``, which changes no running program), and ``logs`` gives the last lines of
the output of the program's current run, or its last one (its job's output file in the
job table; none before the first run, or once the job store pruned it).  It is asked
after the host's own backends, so a SysV script of the same name wins.
"""

from __future__ import annotations

from typing import Any, Dict

from twisted.internet import defer, threads

from sysadmd.supervisor.core import Reply, Supervisor
from sysadmd.supervisor.program import ALIVE
from sysadmd.sysclasses import logtail
from sysadmd.wire.envelope import ApiError


class SupervisorBackend:
    name = "supervisor"

    def __init__(self, supervisor: Supervisor, reactor: Any = None):
        self.supervisor = supervisor
        self.reactor = reactor  # None: logs are read in the calling thread

    def logs(self, name: str, lines: int) -> defer.Deferred:
        program = self.supervisor.programs.get(name)
        if program is None:
            return defer.fail(ApiError("400", f"no supervised program named {name}"))
        job_id = program.job_id
        if job_id is None:
            return defer.succeed({"lines": [], "source": f"program {name} has not run yet"})
        row = self.supervisor.jobs.row(job_id)
        path = row["logs_path"] if row is not None else None
        source = f"job {job_id} (program {name}, {'running' if program.state in ALIVE else 'last run'})"
        if not path:
            return defer.succeed({"lines": [], "source": source + ": its output was pruned"})

        def read() -> Any:
            tail = logtail.tail_lines(path, lines)
            if tail is None:
                return {"lines": [], "source": source + ": its output was pruned"}
            return {"lines": tail.lines, "source": source}
        if self.reactor is None:
            return defer.maybeDeferred(read)
        return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), read)

    def list(self) -> defer.Deferred:
        out: Dict[str, Any] = {}
        for name, program in sorted(self.supervisor.programs.items()):
            definition = program.latest
            out[name] = {"name": name, "tag": "supervisor", "path": "",
                         "description": "supervised program: " + " ".join(definition.command)[:200],
                         "is_enabled": "true" if definition.autostart else "false",
                         "is_running": "true" if program.state in ALIVE else "false"}
        return defer.succeed(out)

    def owns(self, name: str) -> bool:
        return name in self.supervisor.programs

    @defer.inlineCallbacks
    def act(self, verb: str, name: str) -> Any:
        actor = "sysadm/services"
        if verb in ("enable", "disable"):
            reply = self.supervisor.set_autostart(name, verb == "enable")
        elif verb == "restart":
            reply = yield self.supervisor.handle("stop", name, None, full_access=True, actor=actor)
            if reply.status in ("success", "redundant"):
                reply = yield self.supervisor.handle("start", name, None, full_access=True, actor=actor)
        else:
            reply = yield self.supervisor.handle(verb, name, None, full_access=True, actor=actor)
        if not isinstance(reply, Reply) or reply.status not in ("success", "redundant"):
            raise ApiError("400", getattr(reply, "error", "") or f"{verb} {name} failed")
        return reply
