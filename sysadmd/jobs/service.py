"""What happens around the job table: ``jobs`` events, waiters, log followers, retention.

:class:`JobsService` is the table's :class:`~sysadmd.jobs.store.JobWatcher`:

* every creation, state change and progress change becomes a ``jobs`` event
  ``{"kind": "added"|"changed", "job": <the job as core/get_jobs shows it>}`` (read from the
  table only when someone is subscribed);
* ``core/job_wait`` and ``core/job_log`` with ``follow`` park a Deferred here, fired when
  the job finishes (or its output grows), never by polling; a session has at most
  :data:`MAX_WAITS_PER_SESSION` of them, each with a timeout, and they end with it;
* at start, jobs of other producers than the dispatcher that a previous run left
  unfinished are finished ``interrupted`` (their work ended with that run);
* retention: at start and every :data:`RETENTION_INTERVAL` seconds, finished jobs older
  than ``JOB_RETENTION_DAYS`` go, then the oldest finished jobs while they take more than
  ``JOB_STORE_MAX_BYTES`` (rows and output files together).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from sysadmd.jobs import model
from sysadmd.jobs.store import JobTable, JobWatcher

log = Logger()

EVENT = "jobs"  # the event type (registered in sysadmd/events/hub.py)
MAX_WAITS_PER_SESSION = 32  # job_wait and job_log follow requests one session may have parked
RETENTION_INTERVAL = 3600.0


class TooManyWaits(Exception):
    pass


class _Wait:
    def __init__(self, session: Any, job_id: int, d: defer.Deferred, timer: Any, on_output: bool):
        self.session, self.job_id, self.d, self.timer, self.on_output = session, job_id, d, timer, on_output


class JobsService(service.Service, JobWatcher):
    name = "jobs"

    def __init__(self, table: JobTable, clock: Any, publish: Callable[[str, Any], None],
                 subscribers: Callable[[str], int], *, retention_days: float, max_bytes: int):
        self.table = table
        self.clock = clock
        self.publish = publish
        self.subscribers = subscribers
        self.retention_days = retention_days
        self.max_bytes = max_bytes
        self.dispatcher: Any = None  # set by the assembly: aborts dispatcher jobs
        self._waits: Dict[int, List[_Wait]] = {}  # job id -> parked requests
        self._per_session: Dict[str, int] = {}
        self._retention: Optional[task.LoopingCall] = None
        table.watcher = self

    # --- service --------------------------------------------------------------------------
    def startService(self) -> None:
        super().startService()
        left = self.table.interrupt_leftovers()
        if left:
            log.info("{count} jobs were unfinished when the daemon stopped; marked interrupted", count=left)
        self._retention = task.LoopingCall(self.prune)
        self._retention.clock = self.clock
        self._retention.start(RETENTION_INTERVAL, now=True)

    def stopService(self) -> None:
        super().stopService()
        if self._retention is not None and self._retention.running:
            self._retention.stop()
        self._retention = None
        for waits in list(self._waits.values()):
            for wait in list(waits):
                self._release(wait, None)

    def prune(self) -> int:
        try:
            before = self.clock.seconds() - self.retention_days * 86400
            count = self.table.prune(before, self.max_bytes)
        except Exception:
            log.failure("pruning finished jobs failed")
            return 0
        if count:
            log.info("deleted {count} finished jobs (JOB_RETENTION_DAYS={days}, JOB_STORE_MAX_BYTES={cap})",
                     count=count, days=self.retention_days, cap=self.max_bytes)
        return count

    # --- JobWatcher ---------------------------------------------------------------------
    def added(self, job_id: int) -> None:
        self._event("added", job_id)

    def changed(self, job_id: int) -> None:
        self._event("changed", job_id)

    def finished(self, job_id: int) -> None:
        self._event("changed", job_id)
        for wait in list(self._waits.get(job_id, ())):
            self._release(wait, True)

    def output(self, job_id: int) -> None:
        for wait in list(self._waits.get(job_id, ())):
            if wait.on_output:
                self._release(wait, True)

    def _event(self, kind: str, job_id: int) -> None:
        if not self.subscribers(EVENT):
            return
        try:
            job = self.table.get(job_id)
            if job is not None:
                self.publish(EVENT, {"kind": kind, "job": job})
        except Exception:
            log.failure("publishing a jobs event of job {id} failed", id=job_id)

    # --- progress from the dispatcher (its on_progress hook) ------------------------------
    def dispatcher_progress(self, job: Any, progress: Dict[str, Any]) -> None:
        """The dispatcher's ``on_progress(job, {"percent","description","extra"})``."""
        self.table.set_progress(job.record.seq, progress.get("percent"), progress.get("description") or "",
                                progress.get("extra"))

    # --- waiting --------------------------------------------------------------------------
    def wait(self, session: Any, job_id: int, timeout: float, *, on_output: bool) -> defer.Deferred:
        """A Deferred fired with True when the job finishes (*on_output*: or its output
        grows), with False after *timeout* seconds, with None if the session closes."""
        count = self._per_session.get(session.id, 0)
        if count >= MAX_WAITS_PER_SESSION:
            raise TooManyWaits(f"this connection already has {count} job_wait/job_log requests waiting "
                               f"(at most {MAX_WAITS_PER_SESSION})")
        if count == 0:
            session.on_close(self._session_closed)
        self._per_session[session.id] = count + 1
        d: defer.Deferred = defer.Deferred()
        wait = _Wait(session, job_id, d, None, on_output)
        wait.timer = self.clock.callLater(timeout, self._release, wait, False)
        self._waits.setdefault(job_id, []).append(wait)
        return d

    def waiting(self, session: Any) -> int:
        return self._per_session.get(session.id, 0)

    def _release(self, wait: _Wait, result: Optional[bool]) -> None:
        waits = self._waits.get(wait.job_id)
        if not waits or wait not in waits:
            return
        waits.remove(wait)
        if not waits:
            del self._waits[wait.job_id]
        if wait.timer is not None and wait.timer.active():
            wait.timer.cancel()
        left = self._per_session.get(wait.session.id, 1) - 1
        if left > 0:
            self._per_session[wait.session.id] = left
        else:
            self._per_session.pop(wait.session.id, None)
        wait.d.callback(result)

    def _session_closed(self, session: Any) -> None:
        for waits in list(self._waits.values()):
            for wait in list(waits):
                if wait.session is session:
                    self._release(wait, None)
        self._per_session.pop(session.id, None)

    # --- aborting -------------------------------------------------------------------------
    def abort(self, job_id: int) -> Tuple[bool, str]:
        """Abort an unfinished job: ``(True, how)`` or ``(False, why not)``."""
        row = self.table.row(job_id)
        if row is None:
            return False, "404"
        if row["state"] in model.FINISHED_STATES:
            return False, f"job {job_id} has already finished ({row['state']})"
        if row["dispatcher_id"] is not None and self.dispatcher is not None:
            job = self.dispatcher.active.get(row["dispatcher_id"])
            if job is not None and job.record.seq == job_id:
                self.dispatcher.kill([row["dispatcher_id"]])
                return True, "killed"
            return False, f"job {job_id} is not pending or running in the dispatcher"
        handler = self.table.abort_handlers.get(job_id)
        if handler is None:
            return False, f"job {job_id} ({row['method']}) cannot be aborted"
        handler()
        return True, "aborted"
