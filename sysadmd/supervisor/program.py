"""One supervised program and its states, as supervisord defines them.

::

    STOPPED ──start──▶ STARTING ──alive startsecs──▶ RUNNING ──exits──▶ EXITED
       ▲                 │  ▲                          │                  │ autorestart=true, or
       │                 │  └───── retry after n s ── BACKOFF             │ =unexpected and the
       │      dies before startsecs (n-th time) ──────▶ │                  │ code not in exitcodes
       │                                                │ n > startretries └──────▶ STARTING
       │                                                ▼
       │                                              FATAL ──repair──▶ STOPPED
       └── STOPPING ◀──stop (stopsignal to the group; SIGKILL after stopwaitsecs)── STARTING/RUNNING

* A run that dies within ``startsecs`` of its start (or cannot be started at all) counts
  one failure; after the n-th the program waits n seconds in ``BACKOFF`` (a Clock
  timer, never a loop) and tries again; the failure after ``startretries`` retries makes
  it ``FATAL``.  Staying up ``startsecs`` clears the count (``RUNNING``).
* A ``RUNNING`` program that exits is ``EXITED`` (its code was in ``exitcodes`` or not)
  and is started again per ``autorestart`` (at once, or as late as
  :data:`MIN_RUN_SPACING` after the previous start: a program with ``startsecs`` 0 that
  crashes at once is never started in a busy loop either).
* ``stop`` sends ``stopsignal`` to the run's process group and every process carrying
  its marker, then SIGKILL after ``stopwaitsecs``; ``kill`` sends SIGKILL at once.
  Either way the program ends ``STOPPED`` and is not restarted.
* A run is over when its leader has exited and no process of its group or marker is left
  (the runner's rule): children a program leaves behind keep it in its state until they
  are gone, so nothing it started runs unsupervised.

Each run is a job of the job table (``method`` ``supervisor.run``): its output (up to
``output_max_bytes``), exit status and times; ``core/job_abort`` of a live run stops
the program.
"""

from __future__ import annotations

import signal
from typing import Any, Callable, Dict, List, Optional

from twisted.internet import defer
from twisted.logger import Logger

from sysadmd.dispatcher.backend import CannotStart
from sysadmd.jobs import model
from sysadmd.supervisor.definition import Definition

log = Logger()

STOPPED, STARTING, RUNNING, BACKOFF, STOPPING, EXITED, FATAL = (
    "STOPPED", "STARTING", "RUNNING", "BACKOFF", "STOPPING", "EXITED", "FATAL")
STATES = (STOPPED, STARTING, RUNNING, BACKOFF, STOPPING, EXITED, FATAL)
ALIVE = (STARTING, RUNNING, STOPPING)  # a run exists
MAX_BACKOFF_DELAY = 60.0
MIN_RUN_SPACING = 1.0  # seconds between the starts of two runs an autorestart chains (startsecs=0 crash loops)
RUN_METHOD = "supervisor.run"


def backoff_delay(failures: int) -> float:
    """Seconds in BACKOFF after the *failures*-th failed start: 1, 2, 3… (supervisord's
    schedule), at most :data:`MAX_BACKOFF_DELAY`."""
    return float(min(max(failures, 1), MAX_BACKOFF_DELAY))


class Program:
    """The live side of one definition; driven by :class:`~sysadmd.supervisor.core.Supervisor`."""

    def __init__(self, definition: Definition, host: Any):
        self.definition = definition  # what the current (or next) run uses
        self.pending: Optional[Definition] = None  # pushed while it ran: applied by reload
        self.host = host  # the Supervisor: clock, runner, jobs, store, publish, environment
        self.state = STOPPED
        self.handle: Any = None
        self.pid: Optional[int] = None
        self.job_id: Optional[int] = None
        self.failures = 0  # failed starts in a row (supervisord's backoff count)
        self.restarts = 0  # automatic starts since the last start asked for
        self.time_started: Optional[float] = None  # of the current run
        self.last_exit: Optional[int] = None  # exit code of the last run (-1: a signal ended it)
        self.last_exit_time: Optional[float] = None
        self.last_error = ""  # why the last start failed, if it did
        self._timer: Any = None
        self._output = 0
        self._stop_waiters: List[defer.Deferred] = []

    @property
    def name(self) -> str:
        return self.definition.name

    @property
    def latest(self) -> Definition:
        return self.pending or self.definition

    # --- what the verbs call ----------------------------------------------------------------
    def start(self) -> str:
        """``success``, ``redundant`` (already starting or running) or a reason it cannot."""
        if self.state in (STARTING, RUNNING):
            return "redundant"
        if self.state == STOPPING:
            return f"program {self.name} is stopping; start it when it has stopped"
        self._cancel_timer()
        self.failures = 0
        self.restarts = 0
        self._spawn()
        return "success"

    def stop(self, forced: bool = False) -> Optional[defer.Deferred]:
        """Stop (``forced``: SIGKILL at once); a Deferred fired when it is STOPPED, or
        None when there was nothing to stop."""
        if self.state == BACKOFF or (self.state == EXITED and self._timer is not None):
            self._cancel_timer()  # the retry, or the autorestart, that was due
            self._set(STOPPED)
            return defer.succeed(None)
        if self.state not in ALIVE:
            return None
        d: defer.Deferred = defer.Deferred()
        self._stop_waiters.append(d)
        if self.state == STOPPING:
            if forced:
                self.handle.terminate(0)
            return d
        self._set(STOPPING)
        self._cancel_timer()
        if forced or self.definition.signum == signal.SIGKILL:
            self.handle.terminate(0)
        else:
            self.handle.signal(self.definition.signum)
            self._timer = self.host.clock.callLater(self.definition.stopwaitsecs, self._stop_timeout)
        return d

    def repair(self) -> str:
        if self.state not in (FATAL, BACKOFF):
            return "redundant"
        self._cancel_timer()
        self.failures = 0
        self.restarts = 0
        self._set(STOPPED)
        return "success"

    def status(self) -> Dict[str, Any]:
        now = self.host.clock.seconds()
        return {
            "name": self.name,
            "state": self.state,
            "pid": self.pid if self.state in ALIVE else None,
            "uptime": round(now - self.time_started, 3) if self.state in (RUNNING, STOPPING) and self.time_started
            else 0,
            "time_started": self.time_started,
            "last_exit_status": self.last_exit,
            "time_exited": self.last_exit_time,
            "restarts": self.restarts,
            "retries": self.failures,
            "job": self.job_id,
            "error": self.last_error or None,
            "reload_pending": self.pending is not None,
        }

    # --- runs -------------------------------------------------------------------------------
    def _spawn(self) -> None:
        d = self.definition
        self._set(STARTING)
        self._output = 0
        self.last_error = ""
        table = self.host.jobs
        self.job_id = table.create(RUN_METHOD, [self.name], self.host.owner, commands=[" ".join(d.command)],
                                   logs=True, abort=self._abort)
        marker = self.host.runner.new_marker(self.job_id)
        self.host.store.set_marker(self.name, marker)  # before the process exists: crash recovery
        env = self.host.environment(d)
        try:
            handle = self.host.runner.start(list(d.command), environment=env, workdir=d.directory, marker=marker,
                                            user=d.user, umask=d.umask, on_output=self._on_output,
                                            on_ended=lambda code, job=self.job_id: self._ended(job, code))
        except CannotStart as e:
            self.host.store.set_marker(self.name, None)
            self.last_error = str(e)
            table.append_log(self.job_id, f"sysadmd: {e}\n".encode())
            table.finish(self.job_id, model.NOT_STARTED, error=str(e), return_codes=[None])
            log.warn("program {name}: {error}", name=self.name, error=str(e))
            self._failed_start()
            return
        self.handle = handle
        self.pid = handle.pgid
        self.time_started = self.host.clock.seconds()
        table.started(self.job_id)
        if d.startsecs <= 0:
            self._running()
        else:
            self._timer = self.host.clock.callLater(d.startsecs, self._running)

    def _running(self) -> None:
        self._timer = None
        if self.state == STARTING:
            self.failures = 0
            self._set(RUNNING)

    def _on_output(self, data: bytes) -> None:
        limit = self.definition.output_max_bytes
        if self.job_id is None or self._output > limit:
            return
        room = limit - self._output
        self._output += len(data)
        try:
            if len(data) <= room:
                self.host.jobs.append_log(self.job_id, data)
            else:
                self._output = limit + 1
                self.host.jobs.append_log(self.job_id, data[:room] + (
                    f"\nsysadmd: output beyond output_max_bytes={limit} of this run is dropped\n".encode()))
        except Exception:
            log.failure("program {name}: keeping its output failed", name=self.name)

    def _ended(self, job_id: int, code: int) -> None:
        if job_id != self.job_id:
            return
        was = self.state
        self.handle = None
        self._cancel_timer()
        self.host.store.set_marker(self.name, None)
        self.last_exit = code
        self.last_exit_time = self.host.clock.seconds()
        expected = code in self.definition.exitcodes
        if was == STOPPING:
            outcome = model.KILLED
        else:
            outcome = model.SUCCEEDED if expected and was == RUNNING else model.FAILED_OUTCOME
        error = None if outcome == model.SUCCEEDED else (
            "stopped" if was == STOPPING else f"exited with {code}" if code >= 0 else "ended by a signal")
        self.host.jobs.finish(job_id, outcome, error=error, return_codes=[code if code >= 0 else None])
        if was == STOPPING:
            self._set(STOPPED)
            waiters, self._stop_waiters = self._stop_waiters, []
            for d in waiters:
                d.callback(None)
        elif was == STARTING:
            self.last_error = (f"exited with {code}" if code >= 0 else "ended by a signal") + \
                f" within startsecs={self.definition.startsecs:g}"
            self._failed_start()
        else:  # RUNNING
            self._set(EXITED, expected=expected)
            restart = self.definition.autorestart
            if restart is True or (restart == "unexpected" and not expected):
                lived = self.host.clock.seconds() - (self.time_started or 0)
                if lived >= MIN_RUN_SPACING:
                    self._autorestart()
                else:
                    self._timer = self.host.clock.callLater(MIN_RUN_SPACING - lived, self._autorestart)

    def _failed_start(self) -> None:
        self.failures += 1
        self._set(BACKOFF)
        if self.failures > self.definition.startretries:
            log.warn("program {name}: gave up after {n} failed starts", name=self.name, n=self.failures)
            self._set(FATAL)
            return
        self._timer = self.host.clock.callLater(backoff_delay(self.failures), self._retry)

    def _autorestart(self) -> None:
        self._timer = None
        if self.state == EXITED:
            self.restarts += 1
            self._spawn()

    def _retry(self) -> None:
        self._timer = None
        if self.state == BACKOFF:
            self.restarts += 1
            self._spawn()

    def _stop_timeout(self) -> None:
        self._timer = None
        if self.state == STOPPING and self.handle is not None:
            log.info("program {name}: still running {secs}s after SIG{sig}; sending SIGKILL", name=self.name,
                     secs=self.definition.stopwaitsecs, sig=self.definition.stopsignal)
            self.handle.terminate(0)

    def _abort(self) -> None:
        """core/job_abort of the current run: stop the program."""
        self.stop()

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _set(self, state: str, **extra: Any) -> None:
        old, self.state = self.state, state
        if old != state:
            self.host.changed(self, old, extra)

    def forget(self) -> None:
        """The program was deleted (it is STOPPED): drop its timers."""
        self._cancel_timer()


Changed = Callable[[Program, str, Dict[str, Any]], None]
