"""The seam between the dispatcher's queues and whatever runs a command: ``CommandRunner``.

The :class:`~sysadmd.dispatcher.service.Dispatcher` owns jobs: queues, chains, output
files and caps, kills, events, durability.  For each command of a chain it asks its
runner to start the command and then only listens: output bytes, progress reports and,
exactly once, the end with a return code.  Today's runner is the process-group runner
(:class:`sysadmd.dispatcher.runner.ProcessGroupRunner`, the default); a supervised
program or a remote agent is another implementation of the same two protocols, passed
as ``Dispatcher(..., runner=...)``.  docs/architecture.md ("A job backend") has the
recipe.

Contract of :meth:`CommandRunner.start`:

* *argv* is the command already split (never given to a shell), *command* the string it
  came from (for messages), *environment* the whole environment the command gets from
  the dispatcher (the runner adds its own entries: the job's *marker*, the progress fd),
  *workdir* its working directory.
* It either raises :class:`CannotStart` (the message becomes the command's output and the
  command ends with ``-1``) or returns a :class:`CommandHandle` and from then on calls
  ``on_output(bytes)`` any number of times, ``on_progress(report)`` any number of times
  (a report is ``{"percent", "description", "extra"}``, see :mod:`.progress`), and
  ``on_ended(code)`` exactly once, last and never from inside ``start``: the exit code,
  or ``-1`` when a signal or a kill ended the command.
* The command is *over* (``on_ended``) only when nothing it started is left running,
  however it detached (the crash-safety guarantee: no orphan survives unnoticed).

*marker* identifies the job's processes: :meth:`CommandRunner.new_marker` makes one when
the job starts, the dispatcher stores it in the job's row before anything is started,
and after a crash the next start hands the markers of the jobs it found cut off to
:meth:`CommandRunner.signal_leftovers` (SIGTERM, then SIGKILL after the grace period).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Protocol, runtime_checkable

OutputCallback = Callable[[bytes], None]
ProgressCallback = Callable[[Dict[str, Any]], None]
EndedCallback = Callable[[int], None]


class CannotStart(Exception):
    """The command could not be started; the message is shown in its output."""


@runtime_checkable
class CommandHandle(Protocol):
    """One started command, until its ``on_ended``."""

    def terminate(self, grace: float) -> None:
        """SIGTERM (or the backend's polite stop) to everything of the command now, SIGKILL
        (the forced stop) after *grace* seconds unless it is over; the command then ends
        with ``-1``.  A second call does nothing."""

    def signal(self, signum: int) -> bool:
        """Send *signum* to everything of the command; ``False`` when nothing got it."""

    def abandon(self) -> None:
        """Stop watching: the dispatcher wrote the command off (it ignored even the forced
        stop); no callback follows."""


@runtime_checkable
class CommandRunner(Protocol):
    """Starts commands for the dispatcher (see the module docstring for the contract)."""

    def new_marker(self, seq: int) -> str:
        """A marker for the job stored as row *seq*, unique to this run of the daemon."""

    def start(self, argv: List[str], *, command: str, environment: Mapping[str, str], workdir: str, marker: str,
              on_output: OutputCallback, on_progress: ProgressCallback, on_ended: EndedCallback) -> CommandHandle:
        """Start one command; raises :class:`CannotStart`."""

    def signal_leftovers(self, markers: Mapping[str, str], signum: int) -> Dict[str, List[int]]:
        """Send *signum* to every process still carrying one of *markers* (marker → job id),
        left by jobs a crash cut off; per marker the ids (pids) of those that got it."""
