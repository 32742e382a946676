"""``sysadm run``, ``sysadm job attach``, ``sysadm jobs``, ``sysadm kill``: dispatcher jobs
from the terminal.

``run`` subscribes to ``dispatcher`` events *before* it submits the job, prints the
output as the ``running`` updates arrive and exits with the job's last return code.
Events carry at most ``JOB_OUTPUT_CAP`` bytes per update; what they leave out is read
from the job's stored output (:mod:`.jobwatch`), so stdout gets every byte the job
printed, in order (bytes the server did not keep are counted on stderr).  Ctrl-C on a
terminal asks whether to kill the job (a second Ctrl-C leaves it running and exits);
without a terminal to ask on, Ctrl-C detaches: the job goes on on the server and
``sysadm`` exits 130.

``run --detach`` submits the job, prints its id and returns.  ``job attach ID`` prints a
pending, running or finished job's output from its first byte by reading the stored
output alone (:class:`~sysadmd.client.jobwatch.StoredOutputReader`), follows it while it
runs and exits with the job's code, like ``run`` would have.
"""

from __future__ import annotations

import getpass
import re
import secrets
import signal
import time
from collections import deque
from typing import Any, Deque, List, Optional

from twisted.internet import defer

from sysadmd.client import tables
from sysadmd.client.context import Context
from sysadmd.client.errors import (EXIT_CONNECT, EXIT_ERROR_REPLY, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, ClientError,
                                   ErrorReply)
from sysadmd.client.jobwatch import FetchUnavailable, JobFollower, StoredOutputReader


def new_job_id(user: Optional[str] = None) -> str:
    """``cli-<user>-<UTC time>-<random>``: readable in ``sysadm jobs``, unique enough."""
    who = user or _local_user()
    who = re.sub(r"[^A-Za-z0-9_.-]", "_", who)[:32] or "user"
    return f"cli-{who}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(3)}"


def _local_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "user"


class Interrupts:
    """Ctrl-C while a job runs: ask on a terminal (and kill on yes), detach otherwise."""

    def __init__(self, ctx: Context, follower: JobFollower, stop: defer.Deferred):
        self.ctx = ctx
        self.follower = follower
        self.stop = stop  # fired with an exit code to leave early
        self.prompting = False
        self.previous: Any = None

    def install(self) -> None:
        self.previous = signal.signal(signal.SIGINT, self._signal)

    def uninstall(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            self.previous = None

    def _signal(self, signum: int, frame: Any) -> None:
        if self.prompting:
            raise KeyboardInterrupt  # leaves the blocking prompt below
        self.ctx.reactor.callFromThread(self.interrupted)

    def interrupted(self) -> None:
        job = self.follower.job_id
        if self.follower.done or self.stop.called:
            return
        if self.follower.kill_requested:
            self.ctx.note(f"\nsysadm: not waiting any longer; job {job} was asked to stop (`sysadm jobs` shows it)")
            self.stop.callback(EXIT_INTERRUPTED)
            return
        if not _is_tty(self.ctx.stdin):
            # Nobody to ask: a script's Ctrl-C (SIGINT) must not destroy work it may
            # not own. Leave the job running and say how to find it again.
            self.ctx.note(f"\nsysadm: detached from job {job}; it goes on on the server:\n"
                          f"  `sysadm job attach {job}` follows it again (from its first byte), "
                          f"`sysadm kill {job}` stops it")
            self.stop.callback(EXIT_INTERRUPTED)
            return
        self.ctx.err.write(f"\nKill job {job}? [y/N] ")
        self.ctx.err.flush()
        self.prompting = True
        try:
            answer = self.ctx.stdin.readline()
        except KeyboardInterrupt:
            self.ctx.note(f"\nsysadm: leaving job {job} running (`sysadm job attach {job}` follows it again, "
                          f"`sysadm kill {job}` stops it)")
            self.stop.callback(EXIT_INTERRUPTED)
            return
        finally:
            self.prompting = False
        if answer.strip().lower() not in ("y", "yes"):
            self.ctx.note("continuing; Ctrl-C again to be asked again")
            return
        self.kill()

    def kill(self) -> None:
        job = self.follower.job_id
        self.follower.kill_requested = True
        self.ctx.note(f"sysadm: killing job {job}")
        d = defer.ensureDeferred(self.ctx.ask("rpc", "dispatcher", {"action": "kill", "job_id": [job]}, what="kill"))

        def failed(failure):
            message = getattr(failure.value, "message", str(failure.value))
            self.ctx.note(f"sysadm: could not kill job {job}: {message}")

        d.addErrback(failed)


class OutputPrinter:
    """Feeds the job's events to the follower one at a time (reading stored output where
    they left some out) and fires *finished* with the exit code after the last byte."""

    def __init__(self, ctx: Context, follower: JobFollower, finished: defer.Deferred):
        self.ctx = ctx
        self.follower = follower
        self.finished = finished
        self.queue: Deque[Any] = deque()
        self.busy = False

    def on_event(self, message: dict) -> None:
        if message.get("name") != "dispatcher" or self.finished.called:
            return
        args = message.get("args")
        if not self.follower.concerns(args):
            return
        self.queue.append(args)
        if not self.busy:
            self.busy = True
            d = defer.ensureDeferred(self._drain())
            d.addErrback(self._failed)

    async def _drain(self) -> None:
        try:
            while self.queue and not self.finished.called:
                for item in self.follower.feed(self.queue.popleft()):
                    if item[0] == "fetch":
                        await self.follower.resolve(item[1], self.fetch, self.write)
                    else:
                        self.write(*item)
                if self.follower.done and not self.finished.called:
                    self.finished.callback(self.follower.exit_code)
        finally:
            self.busy = False

    def _failed(self, failure: Any) -> None:
        if not self.finished.called:
            self.finished.callback(("failed", failure))

    async def fetch(self, index: int, offset: int, length: int) -> Any:
        return await read_output(self.ctx, self.follower.job_id, index, offset, length)

    def write(self, stream: str, text: str) -> None:
        write(self.ctx, stream, text)


async def read_output(ctx: Context, job_id: str, index: int, offset: int, length: int) -> Any:
    """One ``read_output`` reply; a refusal raises :class:`FetchUnavailable`."""
    request = {"action": "read_output", "job_id": job_id, "command": index, "offset": offset, "length": length}
    try:
        return await ctx.ask("rpc", "dispatcher", request, what="reading the job's stored output")
    except ErrorReply as e:
        raise FetchUnavailable(f"error {e.code} {e.text}" + (f": {e.detail}" if e.detail else "")) from None


def write(ctx: Context, stream: str, text: str) -> None:
    target = ctx.out if stream == "out" else ctx.err
    target.write(text)
    target.flush()


def _is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


async def run(ctx: Context) -> int:
    commands: List[str] = ctx.options.commands
    empty = [i + 1 for i, c in enumerate(commands) if not c.strip()]
    if empty:
        raise ClientError(f"command {empty[0]} is empty; each CMD is one command line such as 'ls -l /tmp'", EXIT_USAGE)
    job_id = ctx.options.id or new_job_id(ctx.options.user)
    spec: Any = commands[0] if len(commands) == 1 else commands
    if getattr(ctx.options, "detach", False):
        await _submit(ctx, job_id, spec)
        if ctx.json_output:
            ctx.emit_json({"job_id": job_id}, compact=True)
        else:
            ctx.say(job_id)
        ctx.note(f"sysadm: job {job_id} runs on the server; `sysadm job attach {job_id}` follows its output "
                 f"and exits with its code")
        return EXIT_OK
    follower = JobFollower(job_id, commands)
    finished: defer.Deferred = defer.Deferred()
    printer = OutputPrinter(ctx, follower, finished)
    ctx.conn.event_listeners.append(printer.on_event)
    await ctx.ask("events", "subscribe", ["dispatcher"], what="subscribing to dispatcher events")
    await _submit(ctx, job_id, spec)
    if ctx.json_output:
        ctx.note(f"job {job_id} submitted")

    interrupts = Interrupts(ctx, follower, finished)
    interrupts.install()
    lost: defer.Deferred = defer.Deferred()

    def connection_closed(reason: Any) -> Any:
        if not lost.called:
            lost.callback(("lost", reason))
        return reason

    ctx.conn.closed.addBoth(connection_closed)
    try:
        result = await defer.DeferredList([finished, lost], fireOnOneCallback=True, consumeErrors=True)
    finally:
        interrupts.uninstall()
    if isinstance(result, list):  # cancelled (SIGTERM): every member failed, none fired
        raise defer.CancelledError()
    value = result[0]
    if isinstance(value, tuple) and value and value[0] == "lost":
        reason = value[1][1] if isinstance(value[1], tuple) else value[1]
        raise ClientError(
            f"connection lost while job {job_id} was running ({reason or 'closed'}); it goes on on the server:\n"
            f"  `sysadm job attach {job_id}` follows it again, `sysadm kill {job_id}` stops it", EXIT_CONNECT)
    if isinstance(value, tuple) and value and value[0] == "failed":
        value[1].raiseException()  # e.g. a read of the stored output that got no reply
    return int(value)


async def _submit(ctx: Context, job_id: str, spec: Any) -> None:
    started = await ctx.ask("rpc", "dispatcher", {"action": "run", job_id: spec}, what="submitting the job")
    names = started.get("started") if isinstance(started, dict) else None
    if not isinstance(names, list) or job_id not in names:
        raise ClientError(f"the server did not start job {job_id} (reply: {started!r})", EXIT_ERROR_REPLY)


# --- sysadm job attach ---------------------------------------------------------------------

ATTACH_POLL = 2.0  # seconds between looks at a job that sends no events (see StoredOutputReader)


async def attach(ctx: Context) -> int:
    """Follow a pending, running or finished dispatcher job from its first byte; its exit code."""
    job_id: str = ctx.options.job_id
    finished_log: List[dict] = []
    probe = JobFollower(job_id)
    reader: List[StoredOutputReader] = []

    def on_event(message: dict) -> None:
        args = message.get("args")
        if message.get("name") != "dispatcher" or not probe.concerns(args):
            return
        log = args if "process_id" in args else args.get("process_details")
        if isinstance(log, dict) and log.get("state") == "finished":
            finished_log[:] = [log]
        if reader:
            reader[0].nudge()

    ctx.conn.event_listeners.append(on_event)
    await ctx.ask("events", "subscribe", ["dispatcher"], what="subscribing to dispatcher events")
    commands = await _job_commands(ctx, job_id)

    async def fetch(index: int, offset: int, length: int) -> Any:
        return await read_output(ctx, job_id, index, offset, length)

    async def sleep(seconds: float, wake: defer.Deferred) -> None:
        done: defer.Deferred = defer.Deferred()
        timer = ctx.reactor.callLater(seconds, lambda: done.called or done.callback(None))
        wake.addCallback(lambda _: done.called or done.callback(None))
        try:
            await done
        finally:
            if timer.active():
                timer.cancel()

    reader.append(StoredOutputReader(job_id, commands, fetch, lambda stream, text: write(ctx, stream, text), sleep,
                                     ATTACH_POLL))
    try:
        await reader[0].read_all()
    except FetchUnavailable as e:
        raise ClientError(f"cannot read job {job_id}'s stored output ({e})", EXIT_ERROR_REPLY) from None
    log = finished_log[0] if finished_log else await _finished_log(ctx, job_id)
    follower = JobFollower(job_id, commands)
    for stream, text in follower.finish(log):
        write(ctx, stream, text)
    return follower.exit_code if follower.exit_code is not None else 255


async def _job_commands(ctx: Context, job_id: str) -> List[str]:
    """The commands of the pending or running job *job_id*, else of the newest finished one."""
    listing = await ctx.ask("rpc", "dispatcher", {"action": "list"}, what="listing jobs")
    queues = listing.get("jobs") if isinstance(listing, dict) else None
    for jobs_in_queue in (queues.values() if isinstance(queues, dict) else ()):
        info = jobs_in_queue.get(job_id) if isinstance(jobs_in_queue, dict) else None
        if isinstance(info, dict) and isinstance(info.get("commands"), list):
            return [str(c) for c in info["commands"]]
    entry = await _history_entry(ctx, job_id)
    if entry is None:
        raise ClientError(f"no job {job_id} is pending, running or in the server's history "
                          f"(`sysadm jobs --all` lists them)", EXIT_ERROR_REPLY)
    commands = entry.get("cmd_list")
    if not isinstance(commands, list):
        raise ClientError(f"the server's history entry of job {job_id} has no command list", EXIT_ERROR_REPLY)
    return [str(c) for c in commands]


async def _history_entry(ctx: Context, job_id: str) -> Optional[dict]:
    reply = await ctx.ask("rpc", "dispatcher", {"action": "history", "job_id": job_id, "limit": 1},
                          what="reading the job history")
    entries = reply.get("history") if isinstance(reply, dict) else None
    return entries[0] if isinstance(entries, list) and entries and isinstance(entries[0], dict) else None


async def _finished_log(ctx: Context, job_id: str) -> dict:
    entry = await _history_entry(ctx, job_id)
    if entry is None:
        raise ClientError(f"job {job_id} ended but the server's history has no entry for it", EXIT_ERROR_REPLY)
    return entry


async def jobs(ctx: Context) -> int:
    listing = await ctx.ask("rpc", "dispatcher", {"action": "list"}, what="listing jobs")
    history = None
    if getattr(ctx.options, "all", False):
        history = await ctx.ask("rpc", "dispatcher", {"action": "history"}, what="reading the job history")
    if ctx.json_output:
        ctx.emit_json(listing if history is None else {"list": listing, "history": history})
        return EXIT_OK
    rows = []
    queues = listing.get("jobs", {}) if isinstance(listing, dict) else {}
    for queue in sorted(queues):
        for job_id, info in sorted((queues[queue] or {}).items()):
            info = info if isinstance(info, dict) else {}
            commands = info.get("commands") or []
            rows.append([job_id, queue, info.get("state", "?"), info.get("queue_position", ""),
                         " ; ".join(commands) if isinstance(commands, list) else commands])
    if rows:
        for line in tables.render(["id", "queue", "state", "pos", "commands"], rows):
            ctx.say(line)
    else:
        ctx.say("no pending or running jobs")
    if history is not None:
        _show_history(ctx, history)
    return EXIT_OK


def _show_history(ctx: Context, history: Any) -> None:
    """Finished jobs from ``{"history":[<finished process log + "queue">, …]}``."""
    entries = history.get("history") if isinstance(history, dict) else None
    if not isinstance(entries, list) or not entries:
        ctx.say("\nno finished jobs")
        return
    rows = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        commands = entry.get("cmd_list") if isinstance(entry.get("cmd_list"), list) else []
        codes = [str(entry.get(f"return_codes/{c}", "")) for c in commands]
        rows.append([entry.get("process_id", "?"), entry.get("queue", ""), entry.get("time_finished", ""),
                     ",".join(codes), " ; ".join(commands)])
    ctx.say("")
    for line in tables.render(["finished job", "queue", "time finished", "codes", "commands"], rows):
        ctx.say(line)


async def kill(ctx: Context) -> int:
    wanted: List[str] = ctx.options.job_ids
    reply = await ctx.ask("rpc", "dispatcher", {"action": "kill", "job_id": wanted}, what="kill")
    killed = reply.get("killed", {}).get("jobs", []) if isinstance(reply, dict) else []
    if ctx.json_output:
        ctx.emit_json(reply)
    else:
        for job_id in killed:
            ctx.say(f"killed {job_id}")
    missing = [j for j in wanted if j not in killed]
    for job_id in missing:
        ctx.note(f"sysadm: no pending or running job {job_id}")
    return EXIT_ERROR_REPLY if missing else EXIT_OK
