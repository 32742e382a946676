"""The dispatcher: queues jobs, runs their commands, streams and stores what happens.

A Twisted ``Service`` with the reactor injected; it owns its timers (the queue pump,
one output-update timer per running job, the SIGKILL escalations of killed commands).

Lifecycle, and what survives a restart:

* start: finished jobs older than ``JOB_RETENTION_DAYS`` are pruned; jobs stored as
  running (the daemon died under them) are finished with ``-1`` for the command that was
  running and ``"interrupted":"true"``; pending jobs are queued again in their original
  order and run.
* stop: pending jobs stay pending on disk.  Running jobs are *killed* (SIGTERM to each
  process group, SIGKILL after ``JOB_KILL_GRACE``) and stored as finished and
  interrupted: leaving them running would orphan processes nobody watches or can kill
  through the API any more.  ``stopService`` waits for them, at most the grace period
  plus two seconds.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from sysadmd.dispatcher.commands import CommandError, split_command
from sysadmd.dispatcher.job import NO_QUEUE, Job, finished_log
from sysadmd.dispatcher.output import CommandOutput
from sysadmd.dispatcher.queues import JobQueue
from sysadmd.dispatcher.runner import CannotStart, spawn
from sysadmd.dispatcher.store import JobStore, JobRecord, ranges_closed
from sysadmd.envelope import ApiError

log = Logger()

UPDATE_INTERVAL = 0.25  # seconds: at most 4 output updates per second per job
STOP_SLACK = 2.0  # seconds stopService waits beyond the kill grace period

Publish = Callable[[Dict[str, Any], bool], None]  # (event args, store in the events log)


def check_commands(job_id: str, commands: Sequence[Any]) -> List[str]:
    """Validate a chain; raises ApiError 400 naming the job and what is wrong."""
    if not commands:
        raise ApiError("400", f"job {job_id!r}: the list of commands is empty")
    checked = []
    for index, command in enumerate(commands):
        if not isinstance(command, str):
            raise ApiError("400", f"job {job_id!r}: command {index + 1} must be a string")
        try:
            split_command(command)
        except CommandError as e:
            raise ApiError("400", f"job {job_id!r}: command {index + 1} ({command!r}): {e}") from None
        checked.append(command)
    return checked


class Dispatcher(service.Service):
    name = "dispatcher"

    def __init__(self, config: Any, store: JobStore, reactor: Any, publish: Publish,
                 finished_log_sink: Optional[Callable[[Dict[str, Any]], None]] = None):
        self.config = config
        self.store = store
        self.reactor = reactor
        self.publish = publish
        self.finished_log_sink = finished_log_sink
        self.cap = config.job_output_cap
        self.queues: Dict[str, JobQueue] = {}
        self.active: Dict[str, Job] = {}  # pending and running jobs by id
        self._pump_call: Optional[IDelayedCall] = None
        self._pumping = False
        self._stopping = False

    # --- service ------------------------------------------------------------------------
    def startService(self) -> None:
        super().startService()
        self._stopping = False
        # Whatever is still queued in memory (after a stop) is reloaded from disk.
        self.queues, self.active = {}, {}
        now = self.reactor.seconds()
        pruned = self.store.prune(now - self.config.job_retention_days * 86400)
        if pruned:
            log.info("pruned {count} finished dispatcher jobs older than {days} days", count=pruned,
                     days=self.config.job_retention_days)
        for record in self.store.unfinished():
            if record.state == "running":
                self._finish_interrupted(record)
            elif record.id in self.active:
                log.warn("dropping stored duplicate pending job {id}", id=record.id)
                record.state, record.finished, record.killed = "finished", now, True
                self.store.save(record)
            else:
                self._enqueue(Job(record, self.cap))
        self._schedule_pump()

    def stopService(self) -> defer.Deferred:
        super().stopService()
        self._stopping = True
        if self._pump_call is not None and self._pump_call.active():
            self._pump_call.cancel()
        self._pump_call = None
        running = [job for job in self.active.values() if job.state == "running"]
        if not running:
            return defer.succeed(None)
        grace = self.config.job_kill_grace
        for job in running:
            job.stopping = True
            if job.process is not None:
                job.process.terminate(grace)
        waited = defer.DeferredList([job.done for job in running])
        give_up = self.reactor.callLater(grace + STOP_SLACK, self._abandon, running)
        waited.addBoth(lambda _: give_up.cancel() if give_up.active() else None)
        return waited

    def _abandon(self, jobs: List[Job]) -> None:
        """Processes that ignore even SIGKILL (stuck in the kernel): store them as ended."""
        for job in jobs:
            if job.state == "running":
                log.warn("job {id}: its process did not end; stored as interrupted", id=job.id)
                if job.output is not None:
                    self._command_ended(job, -1)
                else:
                    self._finish(job)

    # --- requests -----------------------------------------------------------------------
    def submit(self, job_id: str, commands: Sequence[Any], queue: str = NO_QUEUE, origin: str = "") -> Job:
        """Queue a job; raises ApiError 400 if the id is pending or running, or a command is bad."""
        return self.submit_many({job_id: commands}, queue=queue, origin=origin)[0]

    def submit_many(self, jobs: Dict[str, Sequence[Any]], queue: str = NO_QUEUE, origin: str = "") -> List[Job]:
        """Queue several jobs at once: all of them, or (on any error) none."""
        if not isinstance(queue, str) or not queue:
            raise ApiError("400", "the queue name must be a non-empty string")
        jobs = {job_id: [cmds] if isinstance(cmds, str) else cmds for job_id, cmds in jobs.items()}
        busy = sorted(job_id for job_id in jobs if job_id in self.active)
        if busy:
            raise ApiError("400", "job id already pending or running: " + ", ".join(busy))
        checked = {job_id: check_commands(job_id, commands) for job_id, commands in jobs.items()}
        created = []
        for job_id in sorted(checked):
            record = self.store.add(job_id, queue, checked[job_id], origin, self.reactor.seconds())
            job = Job(record, self.cap)
            self._enqueue(job)
            self._publish(job.pending_event(), True)
            created.append(job)
        self._schedule_pump()
        return created

    def kill(self, job_ids: Iterable[str]) -> List[str]:
        """Kill pending or running jobs; returns the ids that were found."""
        found = []
        for job_id in job_ids:
            job = self.active.get(job_id)
            if job is None or job_id in found:
                continue
            found.append(job_id)
            job.kill_requested = True
            job.record.killed = True
            if job.state == "pending":
                self.queues[job.queue].remove(job)
                self._finish(job)
            elif job.process is not None:
                job.process.terminate(self.config.job_kill_grace)
        return found

    def list(self) -> Dict[str, Any]:
        """Pending and running jobs per queue, upstream's ``list`` reply."""
        jobs: Dict[str, Any] = {}
        for name, queue in self.queues.items():
            jobs[name] = {job.id: job.list_entry(pos) for pos, job in enumerate(queue.in_order())}
        return {"jobs": jobs}

    def history(self, job_ids: Optional[Iterable[str]] = None, limit: int = 100) -> List[Dict[str, Any]]:
        """Finished jobs (newest first) with their logs, read back from disk."""
        records = self.store.finished(job_ids, limit)
        return [dict(finished_log(r, self.store.command_logs(r, self.cap)), queue=r.queue) for r in records]

    # --- queueing -----------------------------------------------------------------------
    def _enqueue(self, job: Job) -> None:
        queue = self.queues.get(job.queue)
        if queue is None:
            queue = self.queues[job.queue] = JobQueue.named(job.queue, self.config.max_parallel_jobs)
        queue.add(job)
        self.active[job.id] = job

    def _schedule_pump(self) -> None:
        # One pump per reactor turn: the run reply goes out before the jobs start.
        if self.running and not self._stopping and (self._pump_call is None or not self._pump_call.active()):
            self._pump_call = self.reactor.callLater(0, self._pump_timer)

    def _pump_timer(self) -> None:
        self._pump_call = None
        self._pump()

    def _pump(self) -> None:
        """Start every job that has room to run."""
        if self._pumping:
            # Called again from inside a start (a command that cannot start finishes its
            # job at once): the running loop picks the freed slot up, no recursion.
            return
        self._pumping = True
        try:
            for queue in list(self.queues.values()):
                if self._stopping:
                    break
                for job in queue.next_to_start():
                    self._start(job)
        finally:
            self._pumping = False

    # --- running ------------------------------------------------------------------------
    def _start(self, job: Job) -> None:
        record = job.record
        record.state = "running"
        record.started = self.reactor.seconds()
        job.size = 0  # a job only ever runs once: a restart finishes running jobs
        self._next_command(job)

    def _next_command(self, job: Job) -> None:
        record = job.record
        index = len(record.return_codes)
        failed = bool(record.return_codes) and record.return_codes[-1] != 0
        if index >= len(job.commands) or failed or job.kill_requested or job.stopping:
            self._finish(job)
            return
        record.current = index
        record.ranges.append([job.size, -1])
        job.output = CommandOutput(self.cap)
        self.store.save(record)
        self._publish(job.running_event(), True)
        command = job.commands[index]
        # Callbacks carry the token of their command, so output or an end reported after
        # the command was written off (see _abandon) is ignored.
        token = job.command_token = object()
        try:
            argv = split_command(command)
            job.process = spawn(self.reactor, argv, job_path=self.config.job_path, workdir=self.config.job_workdir,
                                on_output=lambda data: self._output(job, token, data),
                                on_ended=lambda code: self._ended(job, token, code))
        except (CannotStart, CommandError) as e:
            self._output(job, token, f"{e}\n".encode("utf-8", "replace"))
            self._command_ended(job, -1)

    def _output(self, job: Job, token: object, data: bytes) -> None:
        if job.command_token is not token:
            return
        if not job.file_failed:
            try:
                if job.file is None:
                    # Opened with the first output: most short jobs never print anything.
                    job.file = self.store.open_output(job.record)
                job.file.write(data)
            except OSError as e:
                job.file_failed = True  # say it once; events and replies still get the output
                log.error("job {id}: writing its output file failed: {error}", id=job.id, error=e)
        job.size += len(data)
        job.output.feed(data)
        if job.update_timer is None or not job.update_timer.active():
            delay = max(0.0, job.last_update + UPDATE_INTERVAL - self.reactor.seconds())
            job.update_timer = self.reactor.callLater(delay, self._send_update, job)

    def _send_update(self, job: Job) -> None:
        job.update_timer = None
        if job.output is None or not job.output.has_unsent:
            return
        text = job.output.take_unsent()
        if text:
            job.last_update = self.reactor.seconds()
            # Progress updates are many and small: they go to subscribers, not the events log.
            self._publish(job.update_event(text), False)

    def _ended(self, job: Job, token: object, code: int) -> None:
        if job.command_token is not token:
            return
        process, job.process = job.process, None
        if process is not None:
            process.ended()
            if process.killing:
                code = -1
        self._command_ended(job, code)

    def _command_ended(self, job: Job, code: int) -> None:
        if job.update_timer is not None and job.update_timer.active():
            job.update_timer.cancel()
            # The last piece goes out now, so a command's updates add up to its output.
            self._send_update(job)
        job.update_timer = None
        job.process = None
        job.command_token = None
        record = job.record
        record.return_codes.append(code)
        record.ranges[-1][1] = job.size
        job.logs.append(job.output.text() if job.output is not None else "")
        job.output = None
        self._next_command(job)

    def _finish(self, job: Job) -> None:
        record = job.record
        record.state = "finished"
        record.finished = self.reactor.seconds()
        record.current = -1
        if job.stopping and not job.kill_requested:
            record.interrupted = True
        if job.file is not None:
            job.file.close()
            job.file = None
        self.store.save(record)
        queue = self.queues.get(job.queue)
        if queue is not None:
            queue.remove(job)
        if self.active.get(job.id) is job:
            del self.active[job.id]
        self._announce_finished(job.finished_event())
        job.done.callback(None)
        if self.running and not self._stopping:
            self._pump()  # a slot is free: fill it now, not a reactor turn later

    def _finish_interrupted(self, record: JobRecord) -> None:
        """A job stored as running when the daemon (re)starts: it was cut off."""
        record.ranges = ranges_closed(record.ranges, self.store.output_size(record))
        if len(record.return_codes) < len(record.ranges):
            record.return_codes.append(-1)
        record.state = "finished"
        record.interrupted = True
        record.current = -1
        record.finished = self.reactor.seconds()
        self.store.save(record)
        log.info("job {id} was running when the daemon stopped; marked interrupted", id=record.id)
        self._announce_finished(finished_log(record, self.store.command_logs(record, self.cap)))

    def _announce_finished(self, event: Dict[str, Any]) -> None:
        codes = [event[f"return_codes/{c}"] for c in event["cmd_list"] if f"return_codes/{c}" in event]
        flags = "".join(f" ({flag})" for flag in ("killed", "interrupted") if event.get(flag) == "true")
        log.info("job {id} finished{flags}: return codes {codes}", id=event["process_id"], flags=flags,
                 codes=",".join(codes) or "none (nothing ran)")
        self._publish(event, True)
        if self.finished_log_sink is not None:
            try:
                self.finished_log_sink(event)
            except Exception:
                log.failure("writing the dispatcher log of job {id} failed", id=event.get("process_id"))

    def _publish(self, event: Dict[str, Any], keep: bool) -> None:
        # A failing subscriber or log write must not leave a job half way through a state change.
        try:
            self.publish(event, keep)
        except Exception:
            log.failure("publishing a dispatcher event of job {id} failed", id=event.get("process_id"))
