"""Run one command of a job: a child process in its own process group, output merged.

Each command is spawned with ``reactor.spawnProcess`` (never a shell), stdin closed at
once, stdout and stderr both read and handed on in arrival order.  The child gets a
small fixed environment (``PATH`` from ``JOB_PATH``, ``HOME``, ``LANG``, ``SHELL``) and
``JOB_WORKDIR`` as its working directory.

Process groups: every command leads a new session (and so a new process group), so a
kill reaches every process it forked.  On a real POSIX reactor the session is started
inside Twisted's own spawn (:mod:`sysadmd.dispatcher.newsession`, no extra exec).
Elsewhere (or if Twisted's internals change) the command is started through util-linux
``setsid``, which calls ``setsid()`` and execs the command in place; measured on the
2-core test machine (100 sequential ``true`` commands): bare ``spawnProcess`` 274/s,
through ``setsid`` 244/s (0.89x) on the fork path, but about half on the posix_spawn path;
a ``python -c "os.setsid(); os.execv(...)"`` wrapper, the last resort, 31/s.

Processes that leave the group (``setsid``, double forks) are still the job's: the job's
marker is in their environment (:mod:`.procscan`).  A command is over when its leader
has exited *and* no marked process is left; then our ends of its pipes are closed, even
if something unmarked still holds them, so no process can keep a job running by holding
its output open.  A normal exit gives its code; death by a signal, or a kill, gives
``-1``.  Kill = SIGTERM to the group and every marked process, SIGKILL after the grace
period.

Progress: each command also gets a pipe on descriptor :data:`PROGRESS_FD`, announced as
``SYSADM_PROGRESS_FD`` in its environment; its lines are parsed by
:mod:`.progress` and handed on as reports.  Like stdout and stderr it is the child's
only: Twisted creates every pipe close-on-exec and closes the child's end in the daemon
right after the spawn, and our end is closed with the others when the command is over.

This module is the first :class:`~sysadmd.dispatcher.backend.CommandRunner`:
:class:`ProcessGroupRunner`.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import sys
from typing import Any, Dict, List, Mapping, Optional

from twisted.internet import protocol
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from sysadmd.dispatcher import newsession, procscan, progress
from sysadmd.dispatcher.backend import CannotStart, EndedCallback, OutputCallback, ProgressCallback

log = Logger()

PROGRESS_FD = 3  # the child's descriptor of its progress pipe (SYSADM_PROGRESS_FD)

LEADERS_KEPT = 1024  # leader pids a probe skips (ProcessTracker.leaders)
POLL_INTERVAL = 0.5  # seconds between /proc scans while a command waits on processes it left
DRAIN_MAX = 1 << 20  # bytes read from a held-open pipe before our end is closed

SETSID = shutil.which("setsid", path="/usr/bin:/bin:/usr/sbin:/sbin")
PYTHON_SETSID = [sys.executable, "-c", "import os,sys; os.setsid(); os.execv(sys.argv[1], sys.argv[1:])"]


def group_prefix() -> List[str]:
    """The argv prefix that puts a command into a new process group (see module doc)."""
    return [SETSID] if SETSID else list(PYTHON_SETSID)


def job_environment(job_path: str, marker: str = "") -> Dict[str, str]:
    """The whole environment of a dispatcher command: nothing leaks from the daemon (the
    runner adds ``SYSADM_PROGRESS_FD``)."""
    try:
        home = pwd.getpwuid(os.geteuid()).pw_dir
    except KeyError:
        home = "/"
    env = {"PATH": job_path, "HOME": home, "LANG": os.environ.get("LANG") or "C.UTF-8", "SHELL": "/bin/sh"}
    if marker:
        env[procscan.ENV_NAME] = marker
    return env


def resolve_program(program: str, job_path: str, workdir: str) -> str:
    """The executable *program* names, searched in ``JOB_PATH``; raises CannotStart."""
    if "/" in program:
        full = program if os.path.isabs(program) else os.path.join(workdir, program)
        if os.path.isfile(full) and os.access(full, os.X_OK):
            return full
        raise CannotStart(f"cannot start {program!r}: no such executable file")
    found = shutil.which(program, path=job_path)
    if found is None:
        raise CannotStart(f"cannot start {program!r}: not found in PATH {job_path}")
    return found


class CommandProcess(protocol.ProcessProtocol):
    """Hands output, progress, the leader's exit and the pipes' end of one child to its watcher."""

    def __init__(self, on_output: OutputCallback, on_progress: Optional[ProgressCallback] = None):
        self.on_output = on_output
        self.on_progress = on_progress
        self.progress = progress.ProgressParser()
        self.command: Optional["RunningCommand"] = None
        self.pid = 0  # the leader's: Twisted forgets it when it reaps a leader inside spawnProcess
        self.early_exit: Optional[int] = None

    def makeConnection(self, transport: Any) -> None:
        self.pid = getattr(transport, "pid", None) or 0
        super().makeConnection(transport)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == PROGRESS_FD:
            report = self.progress.feed(data)
            if report is not None and self.on_progress is not None:
                self.on_progress(report)
        else:
            self.on_output(data)

    def childConnectionLost(self, childFD: int) -> None:
        if childFD == PROGRESS_FD:
            report = self.progress.finish()
            if report is not None and self.on_progress is not None:
                self.on_progress(report)

    def connectionMade(self) -> None:
        # Commands get no input; a command that reads stdin sees end-of-file at once.
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.on_output(data)

    errReceived = outReceived

    def processExited(self, reason: Failure) -> None:
        if self.command is not None:
            self.command.leader_exited(exit_code(reason))
        else:  # reaped inside spawnProcess (a leader that exits at once): told when attached
            self.early_exit = exit_code(reason)

    def processEnded(self, reason: Failure) -> None:
        if self.command is not None:
            self.command.pipes_closed(exit_code(reason))


def exit_code(reason: Failure) -> int:
    """The exit code of an ended process; ``-1`` when a signal ended it."""
    status = reason.value
    code = getattr(status, "exitCode", None)
    if getattr(status, "signal", None) is not None or code is None:
        return -1
    return code


class ProcessTracker:
    """One ``/proc`` scan every ``interval`` seconds for all commands waiting on their marked
    processes (the leader exited, something it started lives on)."""

    def __init__(self, reactor: Any, interval: float = POLL_INTERVAL):
        self.reactor = reactor
        self.interval = interval
        self.waiting: Dict[str, "RunningCommand"] = {}  # by marker
        self.pids = procscan.PidCounter()
        # The latest leaders made, with the fork count of the mark each was made after:
        # probes need not read those made after their own mark (PidCounter.probe).
        self.leaders: Dict[int, int] = {}
        self._call: Optional[IDelayedCall] = None

    def add_leader(self, pid: int, mark: Optional[procscan.Mark]) -> None:
        if pid > 0:
            self.leaders.pop(pid, None)
            self.leaders[pid] = mark[0] if mark is not None else -1
            if len(self.leaders) > LEADERS_KEPT:
                del self.leaders[next(iter(self.leaders))]

    def watch(self, command: "RunningCommand") -> None:
        self.waiting[command.marker] = command
        if self._call is None or not self._call.active():
            self._call = self.reactor.callLater(self.interval, self._poll)

    def unwatch(self, command: "RunningCommand") -> None:
        if self.waiting.get(command.marker) is command:
            del self.waiting[command.marker]
        if not self.waiting and self._call is not None and self._call.active():
            self._call.cancel()
            self._call = None

    def _poll(self) -> None:
        self._call = None
        if not self.waiting:
            return
        found = procscan.scan(self.waiting)
        for marker, command in list(self.waiting.items()):
            command.marked(found.get(marker, []))


class RunningCommand:
    """A started command until it is over: its leader has exited, no process carrying the
    job's marker is left, and our ends of its output pipes are closed.

    When the leader has exited and nothing marked is left but something still holds the
    pipe (a process that dropped the marker), the pipe is drained and closed: the command
    is over whatever holds it.  Kill = SIGTERM to the process group and to every marked
    process, SIGKILL to both after the grace period (and to any marked process found
    later), so a process that called ``setsid`` is reached too.
    """

    def __init__(self, reactor: Any, transport: Any, marker: str, tracker: ProcessTracker,
                 on_ended: EndedCallback, started_mark: Optional[procscan.Mark] = None, leader: int = 0):
        self.reactor = reactor
        self.transport = transport
        self.pgid = leader or transport.pid or 0
        self.marker = marker
        self.tracker = tracker
        # Where the pid counter stood before the leader was made (see procscan.PidCounter).
        self.started_mark = started_mark
        self.on_ended = on_ended
        self.code = -1
        self.leader_gone = False
        self.pipes_done = False
        self.over = False
        self.killing = False
        self.escalated = False
        self.closed_clean = False  # our ends of the pipes were closed after a scan found nothing
        self._escalation: Optional[IDelayedCall] = None
        self._check_call: Optional[IDelayedCall] = None

    # --- from the process protocol -------------------------------------------------------
    def leader_exited(self, code: int) -> None:
        if self.leader_gone:
            return
        self.leader_gone = True
        self.code = code
        # processEnded usually follows in this same call when the pipes are closed already;
        # otherwise look for what keeps them open on the next turn.
        self._check_call = self.reactor.callLater(0, self.check)

    def pipes_closed(self, code: int) -> None:
        self.pipes_done = True
        if not self.leader_gone:
            self.leader_gone = True
            self.code = code
        self.check()

    # --- deciding whether it is over -------------------------------------------------------
    def check(self) -> None:
        """Scan for the marker now (the leader has exited)."""
        if self._check_call is not None and self._check_call.active():
            self._check_call.cancel()
        self._check_call = None
        if self.over or not self.leader_gone:
            return
        if not self.marker or (self.closed_clean and self.pipes_done):
            # No marker, or the pipes closed because we closed them just after a scan found
            # nothing: no process of the job was left to start another one since.
            self.marked([])
            return
        # Cheap when it can be: only the pids handed out since the leader's are read.
        pids = self.tracker.pids.probe(self.marker, self.started_mark, skip=self.tracker.leaders)
        self.marked(pids if pids is not None else procscan.scan([self.marker]).get(self.marker, []))

    def marked(self, pids: List[int]) -> None:
        """The processes carrying the marker now are *pids*."""
        if self.over:
            return
        if pids:
            if self.escalated:
                self._signal_marked(pids, signal.SIGKILL)
            self.tracker.watch(self)
            return
        self.tracker.unwatch(self)
        if not self.pipes_done:
            self.closed_clean = True
            self._close_pipes()  # processEnded follows, and calls check() again
            if not self.pipes_done:
                return
        self._over()

    def _close_pipes(self) -> None:
        pipes = getattr(self.transport, "pipes", None) or {}
        held = [fd for fd in (1, 2, PROGRESS_FD) if fd in pipes]
        if held:
            log.info("process group {pgid}: its leader exited and no process of the job is left, but its output pipe "
                     "is still held open; closing it", pgid=self.pgid)
        for fd in held:
            reader = pipes.get(fd)
            if reader is None:
                continue
            self._drain(reader)
            self.transport.closeChildFD(fd)

    @staticmethod
    def _drain(reader: Any) -> None:
        """Hand on what is still buffered in the pipe (bounded: a holder may keep writing)."""
        left = DRAIN_MAX
        while left > 0:
            try:
                data = os.read(reader.fileno(), min(65536, left))
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if not data:
                return
            left -= len(data)
            reader.dataReceived(data)

    def _over(self) -> None:
        self.over = True
        self._cancel_timers()
        self.tracker.unwatch(self)
        if self.killing:
            # Anything of the group that survived SIGTERM but let go of the pipes.
            self.signal_group(signal.SIGKILL)
        self.on_ended(-1 if self.killing else self.code)

    def abandon(self) -> None:
        """Stop watching (the dispatcher wrote the command off); nothing is reported."""
        self.over = True
        self._cancel_timers()
        self.tracker.unwatch(self)

    def _cancel_timers(self) -> None:
        for call in (self._escalation, self._check_call):
            if call is not None and call.active():
                call.cancel()
        self._escalation = self._check_call = None

    # --- killing -------------------------------------------------------------------------
    def signal_group(self, signum: int) -> bool:
        """Send *signum* to the whole group; ``False`` when nothing is left in it."""
        if self.pgid <= 1:
            return False
        try:
            os.killpg(self.pgid, signum)
        except ProcessLookupError:
            return False
        except PermissionError:
            log.warn("not allowed to signal process group {pgid}", pgid=self.pgid)
            return False
        return True

    def _signal_marked(self, pids: List[int], signum: int) -> int:
        return sum(1 for pid in pids if procscan.signal_marked(pid, self.marker, signum))

    def signal_all(self, signum: int) -> int:
        """*signum* to the group and to every marked process; how many marked ones got it."""
        self.signal_group(signum)
        if not self.marker:
            return 0
        return self._signal_marked(procscan.scan([self.marker]).get(self.marker, []), signum)

    def signal(self, signum: int) -> bool:
        """*signum* to the group and every marked process; ``False`` when nothing got it."""
        group = self.signal_group(signum)
        marked = self._signal_marked(procscan.scan([self.marker]).get(self.marker, []), signum) if self.marker else 0
        return group or marked > 0

    def terminate(self, grace: float) -> None:
        """SIGTERM everything of the command now, SIGKILL after *grace* seconds unless it is over."""
        if self.killing or self.over:
            return
        self.killing = True
        self.signal_all(signal.SIGTERM)
        self._escalation = self.reactor.callLater(grace, self._escalate)
        if self.leader_gone:
            self.check()

    def _escalate(self) -> None:
        self._escalation = None
        self.escalated = True
        if self.signal_all(signal.SIGKILL) or self.signal_group(0):
            log.info("process group {pgid} outlived SIGTERM; sent SIGKILL", pgid=self.pgid)
        if self.leader_gone:
            self.check()


def spawn(reactor: Any, argv: List[str], *, job_path: str, workdir: str, marker: str, tracker: ProcessTracker,
          on_output: OutputCallback, on_ended: EndedCallback, on_progress: Optional[ProgressCallback] = None,
          environment: Optional[Dict[str, str]] = None) -> RunningCommand:
    """Start *argv* in a new process group with the job's marker and a progress pipe;
    raises :class:`CannotStart`.  *environment* (default :func:`job_environment`) gets the
    marker and ``SYSADM_PROGRESS_FD`` added."""
    program = resolve_program(argv[0], job_path, workdir)
    if not os.path.isdir(workdir):
        raise CannotStart(f"cannot start {argv[0]!r}: working directory {workdir} (JOB_WORKDIR) does not exist")
    proto = CommandProcess(on_output, on_progress)
    fds = {0: "w", 1: "r", 2: "r", PROGRESS_FD: "r"}
    env = dict(environment) if environment is not None else job_environment(job_path)
    if marker:
        env[procscan.ENV_NAME] = marker
    env[progress.ENV_NAME] = str(PROGRESS_FD)
    mark = tracker.pids.before_spawn()
    try:
        if newsession.available(reactor):
            transport = newsession.spawn(reactor, proto, program, [program] + list(argv[1:]), env, workdir, fds)
        else:
            full = group_prefix() + [program] + list(argv[1:])
            transport = reactor.spawnProcess(proto, full[0], full, env=env, path=workdir, usePTY=False, childFDs=fds)
    except Exception as e:  # bad bytes in argv, fork failure, …
        raise CannotStart(f"cannot start {argv[0]!r}: {e}") from None
    command = RunningCommand(reactor, transport, marker, tracker, on_ended, mark, leader=proto.pid)
    tracker.add_leader(command.pgid, mark)
    proto.command = command
    if proto.early_exit is not None:
        command.leader_exited(proto.early_exit)  # it only schedules a check: nothing ends inside spawn
    return command


class ProcessGroupRunner:
    """The :class:`~sysadmd.dispatcher.backend.CommandRunner` of real local processes: each
    command leads its own process group, carries its job's marker, and is over only when
    no marked process is left (see the module docstring)."""

    def __init__(self, reactor: Any):
        self.reactor = reactor
        self.instance = procscan.new_instance()
        self.tracker = ProcessTracker(reactor)

    def new_marker(self, seq: int) -> str:
        return procscan.new_marker(self.instance, seq)

    def start(self, argv: List[str], *, command: str, environment: Mapping[str, str], workdir: str, marker: str,
              on_output: OutputCallback, on_progress: ProgressCallback, on_ended: EndedCallback) -> RunningCommand:
        return spawn(self.reactor, argv, job_path=environment.get("PATH", ""), workdir=workdir, marker=marker,
                     tracker=self.tracker, on_output=on_output, on_ended=on_ended, on_progress=on_progress,
                     environment=dict(environment))

    def signal_leftovers(self, markers: Mapping[str, str], signum: int) -> Dict[str, List[int]]:
        found = procscan.scan(markers)
        return {marker: [pid for pid in pids if procscan.signal_marked(pid, marker, signum)]
                for marker, pids in found.items()}
