"""The supervisor: named programs sysadmd keeps running, and the seed's verbs on them.

:meth:`Supervisor.handle` is the one entry point of every front end (``sysadm/supervisor``
on the API, the seed's wire on port 7777): ``handle(verb, name, data, full_access=,
actor=)`` fires with a :class:`Reply` carrying the seed's response kinds.

=========  ==========================================================  ==============
verb       what it does                                                reply
=========  ==========================================================  ==============
start      STOPPED/EXITED/FATAL/BACKOFF → STARTING                      success, redundant
stop       stopsignal to the group, SIGKILL after stopwaitsecs; waits  success, redundant
kill       SIGKILL to the group now; waits until STOPPED               success, redundant
repair     FATAL/BACKOFF → STOPPED, retry count cleared                success, redundant
status     state, pid, uptime, last exit status, restarts              status
pull       the latest pushed definition                                file
push       create or replace (a live run keeps its definition until    success, redundant
           ``reload``)
delete     stop, then remove                                           success
list       the program names                                           list
reload     one program: apply its pushed definition, restarting it     success, redundant
           if it was live (autostart programs start)
restart    reload every program                                        success
=========  ==========================================================  ==============

Limited access may only ``status``, ``list`` and ``pull``; anything else is ``fail``.
Failures (unknown program, bad definition…) are ``fail`` with the reason; an unknown
verb is ``invalid``.  Every state change is a ``supervisor`` event.
"""

from __future__ import annotations

import dataclasses
import os
import signal
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

from twisted.application import service
from twisted.internet import defer
from twisted.logger import Logger

from sysadmd.jobs.model import Owner
from sysadmd.supervisor import definition as defs
from sysadmd.supervisor.definition import Definition, DefinitionError
from sysadmd.supervisor.program import ALIVE, BACKOFF, STOPPED, Program
from sysadmd.supervisor.spawn import user_environment

log = Logger()

VERBS = ("start", "stop", "kill", "repair", "status", "pull", "push", "delete", "list", "reload", "restart")
READ_VERBS = ("status", "list", "pull")
NAMELESS = ("list", "restart")
MAX_PROGRAMS = 1000
LEFTOVER_GRACE = 5.0  # seconds between SIGTERM and SIGKILL to a crashed run's leftovers
OWNER = Owner("", None, "supervisor")  # the owner of program runs in the job table


@dataclass(frozen=True)
class Reply:
    status: str  # "success" | "fail" | "invalid" | "redundant" | "status" | "file" | "list"
    error: str = ""  # fail/invalid: the reason (plain text)
    data: Any = None  # status: the status dict; file: the definition; list: the program names
    job: str = ""  # the program name, for "file" replies


def fail(reason: str) -> Reply:
    return Reply("fail", error=reason)


class Supervisor(service.Service):
    name = "supervisor"

    def __init__(self, store: Any, jobs: Any, runner: Any, clock: Any,
                 publish: Callable[[Dict[str, Any]], Any], *, job_path: str, euid: Optional[int] = None):
        self.store = store
        self.jobs = jobs  # the JobTable
        self.runner = runner  # a ProgramRunner
        self.clock = clock
        self.publish = publish
        self.job_path = job_path
        self.owner = OWNER
        self.euid = os.geteuid() if euid is None else euid
        self.programs: Dict[str, Program] = {}
        self._leftover_call: Any = None
        self._started = False

    # --- service ------------------------------------------------------------------------------
    def startService(self) -> None:
        super().startService()
        markers: Dict[str, str] = {}
        for data, marker in self.store.load():
            try:
                definition = defs.validate(data, data.get("name"), euid=self.euid, check_user=False)
            except DefinitionError as e:
                log.error("stored program {name!r} cannot be used: {error}", name=data.get("name"), error=str(e))
                continue
            self.programs[definition.name] = Program(definition, self)
            if marker:
                markers[marker] = definition.name
        found = self.runner.signal_leftovers(markers, signal.SIGTERM) if markers else {}
        self.store.clear_markers()
        if found:
            for marker, pids in found.items():
                log.warn("program {name}: its run was cut off by a crash and left {n} processes (pids {pids}); "
                         "sent them SIGTERM", name=markers[marker], n=len(pids), pids=",".join(map(str, pids)))
            left = {marker: markers[marker] for marker in found}
            self._leftover_call = self.clock.callLater(LEFTOVER_GRACE, self._kill_leftovers, left)
        else:
            self._autostart()

    def _kill_leftovers(self, markers: Dict[str, str]) -> None:
        self._leftover_call = None
        for marker, pids in self.runner.signal_leftovers(markers, signal.SIGKILL).items():
            log.warn("program {name}: {n} left-over processes outlived SIGTERM; sent them SIGKILL",
                     name=markers[marker], n=len(pids))
        self._autostart()

    def _autostart(self) -> None:
        if not self.running:
            return
        for program in list(self.programs.values()):
            if program.definition.autostart and program.state == STOPPED:
                program.start()

    def stopService(self) -> defer.Deferred:
        super().stopService()
        if self._leftover_call is not None and self._leftover_call.active():
            self._leftover_call.cancel()
        self._leftover_call = None
        stops = []
        for program in self.programs.values():
            d = program.stop()
            if d is not None:
                stops.append(d)  # stopsignal now, SIGKILL after stopwaitsecs
        return defer.DeferredList(stops)

    # --- what programs ask ------------------------------------------------------------------
    def environment(self, definition: Definition) -> Dict[str, str]:
        env = user_environment(definition.user, self.job_path)
        env.update(dict(definition.environment))
        return env

    def changed(self, program: Program, old: str, extra: Dict[str, Any]) -> None:
        args = {"program": program.name, "state": program.state, "from": old, "pid": program.pid,
                "time": self.clock.seconds()}
        if program.state in ("EXITED", STOPPED, "FATAL", BACKOFF):
            args["last_exit_status"] = program.last_exit
        if program.last_error and program.state in (BACKOFF, "FATAL"):
            args["error"] = program.last_error
        args.update(extra)
        log.info("program {name}: {old} -> {new}", name=program.name, old=old, new=program.state)
        try:
            self.publish(args)
        except Exception:
            log.failure("publishing a supervisor event failed")

    # --- the verbs ----------------------------------------------------------------------------
    def handle(self, verb: str, name: Optional[str], data: Optional[dict], *, full_access: bool,
               actor: str) -> defer.Deferred:
        """The :class:`Reply` to *verb* (see the module docstring); never fails."""
        try:
            d = defer.maybeDeferred(self._handle, verb, name, data, full_access, actor)
        except Exception as e:  # pragma: no cover - maybeDeferred catches
            d = defer.fail(e)

        def broken(failure: Any) -> Reply:
            log.failure("supervisor {verb} {name} from {actor} failed", failure, verb=verb, name=name, actor=actor)
            return fail(f"internal error while doing {verb}: {failure.getErrorMessage()}")
        return d.addErrback(broken)

    def _handle(self, verb: Any, name: Any, data: Any, full_access: bool, actor: str) -> Any:
        if not isinstance(verb, str) or verb not in VERBS:
            shown = repr(verb)[:40]
            return Reply("invalid", error=f"unknown command {shown}; expected one of: {', '.join(VERBS)}")
        if not full_access and verb not in READ_VERBS:
            return fail(f"{verb} needs full access ({actor} has read access: status, list, pull)")
        if verb in NAMELESS:
            log.info("{actor}: supervisor {verb}", actor=actor, verb=verb)
            return self.list_names() if verb == "list" else self.reload_all()
        try:
            defs.check_name(name)
        except DefinitionError as e:
            return fail(f"job {e}")
        if verb != "status":
            log.info("{actor}: supervisor {verb} {name}", actor=actor, verb=verb, name=name)
        if verb == "push":
            return self.push(name, data)
        program = self.programs.get(name)
        if program is None:
            return fail(f"no program named {name!r} (push its definition first)")
        return getattr(self, "do_" + verb)(program)

    def list_names(self) -> Reply:
        return Reply("list", data=sorted(self.programs))

    def statuses(self) -> List[Dict[str, Any]]:
        return [self.programs[name].status() for name in sorted(self.programs)]

    def do_status(self, program: Program) -> Reply:
        return Reply("status", data=program.status())

    def do_pull(self, program: Program) -> Reply:
        return Reply("file", job=program.name, data=program.latest.as_json())

    def do_start(self, program: Program) -> Reply:
        outcome = program.start()
        return Reply(outcome) if outcome in ("success", "redundant") else fail(outcome)

    def do_stop(self, program: Program, forced: bool = False) -> Any:
        d = program.stop(forced)
        if d is None:
            return Reply("redundant")
        return d.addCallback(lambda _: Reply("success"))

    def do_kill(self, program: Program) -> Any:
        return self.do_stop(program, forced=True)

    def do_repair(self, program: Program) -> Reply:
        return Reply(program.repair())

    def push(self, name: str, data: Any) -> Reply:
        if data is None:
            return fail("push needs data: the program's definition (a JSON object)")
        try:
            new = defs.validate(data, name, euid=self.euid)
        except DefinitionError as e:
            return fail(str(e))
        program = self.programs.get(name)
        if program is None and len(self.programs) >= MAX_PROGRAMS:
            return fail(f"there are {len(self.programs)} programs already (at most {MAX_PROGRAMS})")
        if program is not None and new == program.latest:
            return Reply("redundant")
        self.store.save(name, new.as_json())
        if program is None:
            self.programs[name] = Program(new, self)
        elif program.state in ALIVE or program.state == BACKOFF:
            program.pending = new  # the live run keeps its definition until reload
        else:
            program.definition, program.pending = new, None
        return Reply("success")

    def set_autostart(self, name: str, autostart: bool) -> Reply:
        """``autostart`` of *name* (stored; it changes no running program): the
        ``enable``/``disable`` of ``sysadm/services``."""
        program = self.programs.get(name)
        if program is None:
            return fail(f"no program named {name!r} (push its definition first)")
        if program.latest.autostart == autostart:
            return Reply("redundant")
        program.definition = dataclasses.replace(program.definition, autostart=autostart)
        if program.pending is not None:
            program.pending = dataclasses.replace(program.pending, autostart=autostart)
        self.store.save(name, program.latest.as_json())
        return Reply("success")

    @defer.inlineCallbacks
    def do_delete(self, program: Program) -> Any:
        stopped = program.stop()
        if stopped is not None:
            yield stopped
        if self.programs.get(program.name) is program:
            del self.programs[program.name]
            self.store.delete(program.name)
            program.forget()
        return Reply("success")

    @defer.inlineCallbacks
    def do_reload(self, program: Program) -> Any:
        if program.pending is None or program.pending == program.definition:
            program.pending = None
            return Reply("redundant")
        was_live = program.state in ALIVE or program.state == BACKOFF
        stopped = program.stop()
        if stopped is not None:
            yield stopped
        if program.pending is not None:
            program.definition, program.pending = program.pending, None
        if was_live or program.definition.autostart:
            program.start()
        return Reply("success")

    @defer.inlineCallbacks
    def reload_all(self) -> Any:
        pending = [p for p in self.programs.values() if p.pending is not None]
        yield defer.DeferredList([self.do_reload(p) for p in pending])
        return Reply("success")
