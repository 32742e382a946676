"""The supervisor's programs as a ``sysadm/services`` backend (docs/protocol.md §6.10).

:class:`SupervisorBackend` has the methods of
:class:`sysadmd.sysclasses.services.ServiceBackend`: ``list_services`` shows each program
(``tag`` ``supervisor``, ``is_enabled`` = ``autostart``, ``is_running`` = STARTING,
RUNNING or STOPPING), and ``start``/``stop``/``restart``/``enable``/``disable`` act on it
through :meth:`Supervisor.handle` (restart: stop, then start; enable/disable: set
``autostart``, which changes no running program).  It is asked after the host's own
backends, so a SysV script of the same name wins.
"""

from __future__ import annotations

from typing import Any, Dict

from twisted.internet import defer

from sysadmd.supervisor.core import Reply, Supervisor
from sysadmd.supervisor.program import ALIVE
from sysadmd.wire.envelope import ApiError


class SupervisorBackend:
    name = "supervisor"

    def __init__(self, supervisor: Supervisor):
        self.supervisor = supervisor

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
