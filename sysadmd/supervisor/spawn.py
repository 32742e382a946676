"""Starting a supervised program: the dispatcher's process-group runner plus user and umask.

:class:`ProgramRunner` wraps :class:`~sysadmd.dispatcher.runner.ProcessGroupRunner` (the
``CommandRunner`` seam) and shares its process tracker, its markers and its
``signal_leftovers``: a program's run leads its own session and process group and
carries a ``SYSADMD_JOB`` marker in its environment, so stopping reaches every process
it started, and after a daemon crash the next start finds and ends its leftovers (the
supervisor keeps the marker of each live run in ``supervisor_programs.marker``).

What it adds for programs: the child sets its ``umask`` and, when the definition names
another user, drops to that user with that user's groups (``initgroups``) before it
executes the program.  Both happen in the forked child, so these starts take Twisted's
fork path, never ``posix_spawn`` (which has no umask or group hook).
"""

from __future__ import annotations

import functools
import os
import pwd
from typing import Any, Dict, List, Mapping, Optional

from sysadmd.dispatcher import newsession
from sysadmd.dispatcher.backend import CannotStart, EndedCallback, OutputCallback
from sysadmd.dispatcher.runner import CommandProcess, ProcessGroupRunner, RunningCommand, resolve_program
from sysadmd.dispatcher import procscan


class _ProgramProcess(newsession.NewSessionProcess):
    """A new session leader that sets its umask in the child (then Twisted drops the uid)."""

    umask = 0o022

    def _setupChild(self, *args: Any, **kwargs: Any) -> None:
        os.umask(self.umask)
        super()._setupChild(*args, **kwargs)

    def _trySpawnInsteadOfFork(self, *args: Any, **kwargs: Any) -> bool:
        return False  # the umask (and any uid change) needs the fork path


@functools.lru_cache(maxsize=None)  # at most 512 umasks
def _process_class(mask: int) -> type:
    return type("ProgramProcess", (_ProgramProcess,), {"umask": mask})


def user_environment(user: str, path: str) -> Dict[str, str]:
    """The base environment of a program run as *user* ("" = the daemon's own user)."""
    try:
        entry = pwd.getpwnam(user) if user else pwd.getpwuid(os.geteuid())
        home, name, shell = entry.pw_dir, entry.pw_name, entry.pw_shell or "/bin/sh"
    except KeyError:
        home, name, shell = "/", user or str(os.geteuid()), "/bin/sh"
    return {"PATH": path, "HOME": home, "USER": name, "LOGNAME": name, "SHELL": shell,
            "LANG": os.environ.get("LANG") or "C.UTF-8"}


class ProgramRunner:
    """Starts program runs (see the module docstring)."""

    def __init__(self, reactor: Any, runner: Optional[ProcessGroupRunner] = None):
        self.reactor = reactor
        self.runner = runner or ProcessGroupRunner(reactor)

    def new_marker(self, seq: int) -> str:
        return self.runner.new_marker(seq)

    def signal_leftovers(self, markers: Mapping[str, str], signum: int) -> Dict[str, List[int]]:
        return self.runner.signal_leftovers(markers, signum)

    def start(self, argv: List[str], *, environment: Mapping[str, str], workdir: str, marker: str, user: str,
              umask: int, on_output: OutputCallback, on_ended: EndedCallback) -> RunningCommand:
        """Start *argv* as *user* ("" or the daemon's own: no change) with *umask*; raises
        :class:`CannotStart`."""
        if not newsession.available(self.reactor):
            raise CannotStart("this reactor cannot start programs in a new session (not a POSIX reactor)")
        uid = gid = None
        if user:
            try:
                entry = pwd.getpwnam(user)
            except KeyError:
                raise CannotStart(f"cannot start {argv[0]!r}: user {user!r} does not exist (any more)") from None
            if entry.pw_uid != os.geteuid():
                if os.geteuid() != 0:
                    raise CannotStart(f"cannot start {argv[0]!r} as {user!r}: the daemon does not run as root")
                uid, gid = entry.pw_uid, entry.pw_gid
        program = resolve_program(argv[0], environment.get("PATH", ""), workdir)
        if not os.path.isdir(workdir):
            raise CannotStart(f"cannot start {argv[0]!r}: directory {workdir} does not exist")
        env = dict(environment)
        env[procscan.ENV_NAME] = marker
        proto = CommandProcess(on_output)
        tracker = self.runner.tracker
        mark = tracker.pids.before_spawn()
        try:
            transport = _process_class(umask)(self.reactor, program, [program] + list(argv[1:]), env, workdir, proto,
                                              uid, gid, {0: "w", 1: "r", 2: "r"})
        except Exception as e:  # fork failure, bad bytes in argv…
            raise CannotStart(f"cannot start {argv[0]!r}: {e}") from None
        command = RunningCommand(self.reactor, transport, marker, tracker, on_ended, mark, leader=proto.pid)
        tracker.add_leader(command.pgid, mark)
        proto.command = command
        if proto.early_exit is not None:
            command.leader_exited(proto.early_exit)
        return command
