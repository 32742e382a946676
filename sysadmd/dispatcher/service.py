"""The dispatcher: queues jobs, runs their commands, streams and stores what happens.

A Twisted ``Service`` with the reactor injected; it owns its timers (the queue pump,
one output-update timer per running job, the SIGKILL escalations of killed commands).

Lifecycle, and what survives a restart:

* start: finished jobs older than ``JOB_RETENTION_DAYS`` are pruned; jobs stored as
  running (the daemon died under them) are finished with ``-1`` for the command that was
  running and ``"interrupted":"true"``, and the processes they left behind (found by the
  exact marker stored in their rows, :mod:`.procscan`) get SIGTERM, then SIGKILL after
  ``JOB_KILL_GRACE``; pending jobs are queued again in their original order and run.
* stop: pending jobs stay pending on disk.  Running jobs are *killed* (SIGTERM to each
  process group, SIGKILL after ``JOB_KILL_GRACE``) and stored as finished and
  interrupted: leaving them running would orphan processes nobody watches or can kill
  through the API any more.  ``stopService`` waits for them, at most the grace period
  plus two seconds.

Output files: a job's file never exceeds ``JOB_OUTPUT_FILE_MAX``.  Room for the tail of
each command of the chain is kept back (``JOB_OUTPUT_CAP`` each, less when the chain is
long: all of them together take at most half the file); the rest is written as it
comes.  What a command prints beyond its room is counted, not written (from its first
dropped byte on, until it ends: one gap per command, whose place is recorded), and when
it ends its last bytes (the tail that events and history show) are appended after the
gap, so every command's range in the file ends with its real last bytes.  All
files together stay under ``JOB_OUTPUT_TOTAL_MAX``: the files of the oldest finished
jobs are deleted first, then running jobs' output is only counted.  Every byte not kept
is counted per command and per job, and history says so (``"output_cut"``).
"""

from __future__ import annotations

import signal
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from sysadmd.dispatcher.backend import CannotStart, CommandRunner
from sysadmd.dispatcher.commands import CommandError, split_command
from sysadmd.dispatcher.job import NO_QUEUE, Job, finished_log
from sysadmd.dispatcher.output import CommandOutput
from sysadmd.dispatcher.queues import JobQueue
from sysadmd.dispatcher.progress import in_chain
from sysadmd.dispatcher.runner import ProcessGroupRunner, job_environment
from sysadmd.dispatcher.store import JobStore, JobRecord, ranges_closed
from sysadmd.jobs.model import Owner
from sysadmd.untrusted import clean, has_surrogate
from sysadmd.wire.envelope import ApiError

log = Logger()

UPDATE_INTERVAL = 0.25  # seconds: at most 4 output updates per second per job
PROGRESS_INTERVAL = 0.25  # seconds: at most 4 progress deliveries per second per job
STOP_SLACK = 2.0  # seconds stopService waits beyond the kill grace period
QUIET_KILL = 10  # a kill of more pending jobs than this logs one summary line, not one per job
SURROGATE = "a lone UTF-16 surrogate (U+D800-U+DFFF), which cannot be stored or sent back; send valid Unicode"

Publish = Callable[[Dict[str, Any], bool], None]  # (event args, store in the events log)
OnProgress = Callable[[Job, Dict[str, Any]], None]  # (job, {"percent", "description", "extra"})


def check_commands(job_id: str, commands: Sequence[Any]) -> List[str]:
    """Validate a chain; raises ApiError 400 naming the job and what is wrong."""
    if not isinstance(job_id, str) or not job_id:
        raise ApiError("400", "a job id must be a non-empty string")
    if has_surrogate(job_id):
        raise ApiError("400", f"job id {clean(job_id)!r} contains {SURROGATE}")
    if not commands:
        raise ApiError("400", f"job {job_id!r}: the list of commands is empty")
    checked = []
    for index, command in enumerate(commands):
        if not isinstance(command, str):
            raise ApiError("400", f"job {job_id!r}: command {index + 1} must be a string")
        if has_surrogate(command):
            raise ApiError("400", f"job {job_id!r}: command {index + 1} ({clean(command)!r}) contains {SURROGATE}")
        try:
            split_command(command)
        except CommandError as e:
            raise ApiError("400", f"job {job_id!r}: command {index + 1} ({command!r}): {e}") from None
        checked.append(command)
    return checked


class Dispatcher(service.Service):
    name = "dispatcher"

    def __init__(self, config: Any, store: JobStore, reactor: Any, publish: Publish,
                 finished_log_sink: Optional[Callable[[Dict[str, Any]], None]] = None,
                 runner: Optional[CommandRunner] = None, on_progress: Optional[OnProgress] = None):
        """*runner* starts the commands (default: local process groups,
        :class:`~sysadmd.dispatcher.runner.ProcessGroupRunner`); *on_progress* gets each
        job's progress, at most 4 times a second per job (see :meth:`_progress`)."""
        self.config = config
        self.store = store
        self.reactor = reactor
        self.publish = publish
        self.finished_log_sink = finished_log_sink
        self.cap = config.job_output_cap
        self.file_max = config.job_output_file_max
        self.total_max = config.job_output_total_max
        self.output_total = 0  # bytes in all job files
        self._nothing_to_free = False  # no finished job has a file left to delete
        self.queues: Dict[str, JobQueue] = {}
        self.active: Dict[str, Job] = {}  # pending and running jobs by id
        self.runner: CommandRunner = runner if runner is not None else ProcessGroupRunner(reactor)
        self.on_progress = on_progress
        self._pump_call: Optional[IDelayedCall] = None
        self._leftover_call: Optional[IDelayedCall] = None
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
        self.output_total = self.store.total_output_bytes()
        self._nothing_to_free = False
        leftovers = self.store.leftover_markers()
        for record in self.store.unfinished():
            if record.state == "running":
                self._finish_interrupted(record)
            elif record.id in self.active:
                log.warn("dropping stored duplicate pending job {id}", id=record.id)
                record.state, record.finished, record.killed = "finished", now, True
                self.store.save(record)
            else:
                self._enqueue(Job(record, self.cap))
        self._end_leftovers(leftovers)
        self._schedule_pump()

    def _end_leftovers(self, markers: Dict[str, str]) -> None:
        """SIGTERM the processes of jobs cut off by a crash; SIGKILL what is left after the grace."""
        found = self.runner.signal_leftovers(markers, signal.SIGTERM) if markers else {}
        if not found:
            return
        for marker, sent in found.items():
            log.warn("job {id} was cut off by a crash and left {n} processes running (pids {pids}); sent them SIGTERM",
                     id=markers[marker], n=len(sent), pids=",".join(map(str, sent)))
        left = {marker: markers[marker] for marker in found}
        self._leftover_call = self.reactor.callLater(self.config.job_kill_grace, self._kill_leftovers, left)

    def _kill_leftovers(self, markers: Dict[str, str]) -> None:
        self._leftover_call = None
        found = self.runner.signal_leftovers(markers, signal.SIGKILL)
        for marker, sent in found.items():
            log.warn("job {id}: {n} of its left-over processes outlived SIGTERM (pids {pids}); sent them SIGKILL",
                     id=markers[marker], n=len(sent), pids=",".join(map(str, sent)))
        if not found:
            log.info("the left-over processes of jobs {ids} ended after SIGTERM", ids=", ".join(sorted(markers.values())))

    def stopService(self) -> defer.Deferred:
        super().stopService()
        self._stopping = True
        if self._pump_call is not None and self._pump_call.active():
            self._pump_call.cancel()
        self._pump_call = None
        if self._leftover_call is not None and self._leftover_call.active():
            call, self._leftover_call = self._leftover_call, None
            call.cancel()
            self._kill_leftovers(*call.args)  # no waiting left: what ignored SIGTERM gets SIGKILL now
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
                if job.process is not None:
                    job.process.abandon()
                if job.output is not None:
                    self._command_ended(job, -1)
                else:
                    self._finish(job)

    # --- requests -----------------------------------------------------------------------
    def submit(self, job_id: str, commands: Sequence[Any], queue: str = NO_QUEUE, origin: str = "",
               owner: Optional[Owner] = None) -> Job:
        """Queue a job; raises ApiError 400 if the id is pending or running, or a command is bad."""
        return self.submit_many({job_id: commands}, queue=queue, origin=origin, owner=owner)[0]

    def submit_many(self, jobs: Dict[str, Sequence[Any]], queue: str = NO_QUEUE, origin: str = "",
                    owner: Optional[Owner] = None) -> List[Job]:
        """Queue several jobs at once: all of them, or (on any error) none.  Each is also a
        job of the job table (``record.seq`` is its id), owned by *owner* (default: from *origin*)."""
        if not isinstance(queue, str) or not queue:
            raise ApiError("400", "the queue name must be a non-empty string")
        if has_surrogate(queue):
            raise ApiError("400", f"the queue name {clean(queue)!r} contains {SURROGATE}")
        jobs = {job_id: [cmds] if isinstance(cmds, str) else cmds for job_id, cmds in jobs.items()}
        checked = {job_id: check_commands(job_id, commands) for job_id, commands in jobs.items()}
        busy = sorted(job_id for job_id in jobs if job_id in self.active)
        if busy:
            raise ApiError("400", "job id already pending or running: " + ", ".join(busy))
        created = []
        now = self.reactor.seconds()
        records = self.store.add_many([(job_id, queue, checked[job_id], origin, now, owner) for job_id in sorted(checked)])
        for record in records:
            job = Job(record, self.cap)
            self._enqueue(job)
            self._publish(job.pending_event(), True)
            created.append(job)
        self._schedule_pump()
        return created

    def kill(self, job_ids: Iterable[str]) -> List[str]:
        """Kill pending or running jobs; returns the ids that were found.

        Linear in the number of ids: pending jobs leave their queues in O(1) each and are
        stored as killed with a few statements in one transaction."""
        found: Dict[str, None] = {}
        pending: List[Job] = []
        for job_id in job_ids:
            job = self.active.get(job_id)
            if job is None or job_id in found:
                continue
            found[job_id] = None
            job.kill_requested = True
            job.record.killed = True
            if job.state == "pending":
                self.queues[job.queue].remove(job)
                pending.append(job)
            elif job.process is not None:
                job.process.terminate(self.config.job_kill_grace)
        if pending:
            self._finish_killed_pending(pending)
        return list(found)

    def _finish_killed_pending(self, jobs: List[Job]) -> None:
        now = self.reactor.seconds()
        for job in jobs:
            record = job.record
            record.state, record.finished, record.current = "finished", now, -1
            if self.active.get(job.id) is job:
                del self.active[job.id]
        self.store.save_killed_pending([job.record for job in jobs], now)
        quiet = len(jobs) > QUIET_KILL
        if quiet:
            log.info("killed {count} pending jobs: {ids}, …", count=len(jobs),
                     ids=", ".join(job.id for job in jobs[:QUIET_KILL]))
        for job in jobs:
            self._announce_finished(job.finished_event(), quiet=quiet)
            job.done.callback(None)

    def list(self) -> Dict[str, Any]:
        """Pending and running jobs per queue, upstream's ``list`` reply."""
        jobs: Dict[str, Any] = {}
        for name, queue in self.queues.items():
            jobs[name] = {job.id: job.list_entry(pos) for pos, job in enumerate(queue.in_order())}
        return {"jobs": jobs}

    def history(self, job_ids: Optional[Iterable[str]] = None, limit: int = 100) -> List[Dict[str, Any]]:
        """Finished jobs (newest first) with their logs, read back from disk."""
        if job_ids is not None:
            job_ids = [clean(job_id) for job_id in job_ids]
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
        record.marker = self.runner.new_marker(record.seq)  # stored before anything is spawned
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
        record.ranges.append([job.size, -1, 0])
        record.gaps.append(-1)
        job.output = CommandOutput(self.cap)
        self.store.save(record)
        self._publish(job.running_event(), True)
        command = job.commands[index]
        # Callbacks carry the token of their command, so output or an end reported after
        # the command was written off (see _abandon) is ignored.
        token = job.command_token = object()
        try:
            argv = split_command(command)
            job.process = self.runner.start(
                argv, command=command, environment=job_environment(self.config.job_path),
                workdir=self.config.job_workdir, marker=record.marker,
                on_output=lambda data: self._output(job, token, data),
                on_progress=lambda report: self._progress(job, token, report),
                on_ended=lambda code: self._ended(job, token, code))
        except (CannotStart, CommandError) as e:
            record.start_error = str(e)  # the job model's outcome: not_started
            self._output(job, token, f"{e}\n".encode("utf-8", "replace"))
            self._command_ended(job, -1)

    def _output(self, job: Job, token: object, data: bytes) -> None:
        if job.command_token is not token:
            return
        gaps = job.record.gaps
        # Once a command's output has a gap, the rest waits for its end (_save_tail): one
        # gap per command, so its output can be read back by position (JobStore.read_output).
        kept = 0 if gaps[-1] >= 0 else self._write(job, data, self._file_limits(job)[0])
        dropped = len(data) - kept
        if dropped:
            if gaps[-1] < 0:
                gaps[-1] = job.size
            if not job.record.cut:
                log.info("job {id}: its output file is full (JOB_OUTPUT_FILE_MAX / JOB_OUTPUT_TOTAL_MAX); counting "
                         "further output, keeping each command's tail", id=job.id)
            job.record.ranges[-1][2] += dropped
            job.record.cut += dropped
            job.dropped_after_write += dropped
        job.output.feed(data)
        if job.update_timer is None or not job.update_timer.active():
            delay = max(0.0, job.last_update + UPDATE_INTERVAL - self.reactor.seconds())
            job.update_timer = self.reactor.callLater(delay, self._send_update, job)

    def _file_limits(self, job: Job) -> "tuple[int, int]":
        """File sizes up to which the running command may write as its output comes, and
        with its tail when it ends: room for the later commands' tails stays free."""
        count = len(job.commands)
        share = min(self.cap, self.file_max // (2 * count))
        later = count - job.record.current - 1
        return self.file_max - share * (later + 1), self.file_max - share * later

    def _write(self, job: Job, data: bytes, limit: int, last: bool = False) -> int:
        """Append what fits under *limit* (file size) and the total cap; the bytes written
        (the first ones of *data*, or with *last* its last ones)."""
        if job.file_failed:
            return 0
        n = self._reserve(min(len(data), max(0, limit - job.size)))
        if n <= 0:
            return 0
        try:
            if job.file is None:
                # Opened with the first output: most short jobs never print anything.
                job.file = self.store.open_output(job.record)
            job.file.write(data if n >= len(data) else data[len(data) - n:] if last else data[:n])
        except OSError as e:
            self.output_total -= n
            job.file_failed = True  # say it once; events and replies still get the output
            log.error("job {id}: writing its output file failed: {error}", id=job.id, error=e)
            return 0
        job.size += n
        job.dropped_after_write = 0
        return n

    def _reserve(self, n: int) -> int:
        """How many of *n* new bytes the total cap allows, deleting old files if needed."""
        if n <= 0:
            return 0
        over = self.output_total + n - self.total_max
        if over > 0 and not self._nothing_to_free:
            # Free a tenth more than needed, so this is not done for every chunk.
            freed = self.store.free_oldest(over + self.total_max // 10)
            if freed:
                log.info("deleted {bytes} bytes of the oldest finished jobs' output files (JOB_OUTPUT_TOTAL_MAX)",
                         bytes=freed)
            else:
                self._nothing_to_free = True
            self.output_total = max(0, self.output_total - freed)
            over = self.output_total + n - self.total_max
        if over > 0:
            n = max(0, n - over)
        self.output_total += n
        return n

    def _save_tail(self, job: Job) -> None:
        """After a gap, append the ending command's last bytes (the tail history shows)."""
        missing, job.dropped_after_write = job.dropped_after_write, 0
        if not missing or job.output is None:
            return
        tail = job.output.tail_bytes()
        limit = self._file_limits(job)[1]
        piece = tail[len(tail) - min(missing, len(tail)):]
        kept = self._write(job, piece[max(0, len(piece) - (limit - job.size)):], limit, last=True)
        job.record.ranges[-1][2] -= kept
        job.record.cut -= kept

    def _send_update(self, job: Job) -> None:
        job.update_timer = None
        if job.output is None or not job.output.has_unsent:
            return
        text = job.output.take_unsent()
        if text:
            job.last_update = self.reactor.seconds()
            # Progress updates are many and small: they go to subscribers, not the events log.
            self._publish(job.update_event(text), False)

    # --- progress -------------------------------------------------------------------------
    def _progress(self, job: Job, token: object, report: Dict[str, Any]) -> None:
        """A report of the running command, as the job's progress (:func:`.progress.in_chain`:
        command i of n covers the job's percent range [i, i+1] * 100 / n).  Delivered at once
        when the last delivery is 0.25 s old, else when it is (the latest report wins);
        a pending one is delivered when the command ends."""
        if job.command_token is not token:
            return
        job.progress_pending = in_chain(report, job.record.current, len(job.commands))
        if job.progress_timer is not None and job.progress_timer.active():
            return
        delay = job.last_progress + PROGRESS_INTERVAL - self.reactor.seconds()
        if delay <= 0:
            self._deliver_progress(job)
        else:
            job.progress_timer = self.reactor.callLater(delay, self._deliver_progress, job)

    def _deliver_progress(self, job: Job) -> None:
        job.progress_timer = None
        report, job.progress_pending = job.progress_pending, None
        if report is None:
            return
        job.progress = report
        job.last_progress = self.reactor.seconds()
        if self.on_progress is not None:
            try:
                self.on_progress(job, report)
            except Exception:
                log.failure("the progress hook failed for job {id}", id=job.id)

    def _flush_progress(self, job: Job) -> None:
        if job.progress_timer is not None and job.progress_timer.active():
            job.progress_timer.cancel()
        job.progress_timer = None
        if job.progress_pending is not None:
            self._deliver_progress(job)

    def _ended(self, job: Job, token: object, code: int) -> None:
        # The runner reports -1 for a killed command.
        if job.command_token is not token:
            return
        job.process = None
        self._command_ended(job, code)

    def _command_ended(self, job: Job, code: int) -> None:
        self._flush_progress(job)
        if job.update_timer is not None and job.update_timer.active():
            job.update_timer.cancel()
            # The last piece goes out now, so a command's updates add up to its output.
            self._send_update(job)
        job.update_timer = None
        job.process = None
        job.command_token = None
        record = job.record
        self._save_tail(job)
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
        self._nothing_to_free = False  # its file may be deleted now
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

    def _announce_finished(self, event: Dict[str, Any], quiet: bool = False) -> None:
        if not quiet:
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
