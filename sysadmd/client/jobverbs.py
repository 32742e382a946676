"""The jobs API on the command line: ``sysadm jobs`` and ``sysadm job show|log|wait|abort``.

Everything goes through ``core/get_jobs``, ``core/job_log``, ``core/job_wait`` and
``core/job_abort`` (docs/protocol.md §6.7).  ``job log`` writes the job's output bytes
exactly as stored (base64 on the wire), so ``sysadm job log 12 > out`` is byte for byte
the job's output; with ``--follow`` it waits for more until the job ends.  ``job wait``
exits with the job's code: 0 when it succeeded, the failing command's exit code when it
has one, 1 otherwise (killed, interrupted, could not start).
"""

from __future__ import annotations

import argparse
import base64
import re
import time
from datetime import datetime
from typing import Any, Dict, List

from sysadmd.client import tables
from sysadmd.client.context import Context
from sysadmd.client.errors import EXIT_ERROR_REPLY, EXIT_OK, EXIT_USAGE, ClientError

STATES = ("WAITING", "RUNNING", "SUCCESS", "FAILED", "ABORTED")
LOG_CHUNK = 1024 * 1024  # bytes per core/job_log request
SERVER_WAIT = 20.0  # seconds the server holds one job_wait / followed job_log (below the reply timeout)
BAR_WIDTH = 10
_SPAN = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


# --- registration (called from sysadmd/client/main.py) ------------------------------------

def register(verb: Any, common: argparse.ArgumentParser) -> Any:
    """Add ``jobs`` and ``job …``; returns the ``job`` sub-actions (``attach`` joins them there)."""
    p = verb("jobs", jobs_list, "list jobs: id, name (the dispatcher's job id), state, progress, owner, started, "
             "duration, command")
    p.add_argument("--state", metavar="STATE[,STATE]", help="only these states: " + ", ".join(s.lower() for s in STATES)
                   + " (or 'active' for waiting,running; 'finished' for the last three)")
    p.add_argument("--since", metavar="WHEN", help="only jobs created since WHEN: 30m, 2h, 3d, an ISO date/time or "
                   "epoch seconds")
    p.add_argument("--owner", metavar="USER", help="only jobs started by USER")
    p.add_argument("--limit", metavar="N", type=int, default=50, help="newest N jobs (default 50, at most 1000)")
    p.add_argument("--all", action="store_true", help="jobs in every state: the default without --state (accepted "
                   "for scripts written for the older `sysadm jobs --all`)")
    job = verb("job", None, "one job of the jobs API: show, log, wait, abort")
    actions = job.add_subparsers(dest="job_verb", metavar="ACTION")
    actions.required = True
    jp = actions.add_parser("show", parents=[common], help="every field of job ID")
    jp.add_argument("job_id", metavar="ID", type=_job_id)
    jp.set_defaults(func=job_show)
    jp = actions.add_parser("log", parents=[common], help="every byte job ID printed (--follow: until it ends)")
    jp.add_argument("job_id", metavar="ID", type=_job_id)
    jp.add_argument("--follow", "-f", action="store_true", help="keep printing new output until the job ends")
    jp.add_argument("--offset", metavar="N", type=int, default=0, help="start at byte N of the output")
    jp.set_defaults(func=job_log)
    jp = actions.add_parser("wait", parents=[common], help="wait until job ID ends; exit with its code")
    jp.add_argument("job_id", metavar="ID", type=_job_id)
    jp.set_defaults(func=job_wait)
    jp = actions.add_parser("abort", parents=[common], help="abort (kill) job ID")
    jp.add_argument("job_id", metavar="ID", type=_job_id)
    jp.set_defaults(func=job_abort)
    return actions


def _job_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a job id is a number (see `sysadm jobs`), got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"a job id is a number of at least 1, got {text!r}")
    return value


# --- filters from the command line --------------------------------------------------------

def parse_since(text: str, now: float) -> float:
    """Epoch seconds of ``--since``: a span back from *now* (30m, 2h, 3d, 1w), an ISO date
    or date-time (local time), or epoch seconds."""
    text = text.strip()
    match = _SPAN.match(text)
    if match:
        return now - float(match.group(1)) * _UNITS[match.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ClientError(f"--since {text!r}: expected a span such as 30m, 2h, 3d, an ISO date such as "
                          "2026-11-26 or 2026-11-26T08:00, or epoch seconds", EXIT_USAGE) from None


def parse_states(text: str) -> List[str]:
    states: List[str] = []
    for part in text.split(","):
        name = part.strip().upper()
        if name == "ACTIVE":
            states += ["WAITING", "RUNNING"]
        elif name == "FINISHED":
            states += ["SUCCESS", "FAILED", "ABORTED"]
        elif name in STATES:
            states.append(name)
        else:
            raise ClientError(f"--state {part.strip()!r}: expected one of {', '.join(s.lower() for s in STATES)}, "
                              "active or finished", EXIT_USAGE)
    return states


def list_filters(options: Any, now: float) -> List[List[Any]]:
    filters: List[List[Any]] = []
    if options.state:
        filters.append(["state", "in", parse_states(options.state)])
    if options.since:
        filters.append(["time_created", ">=", parse_since(options.since, now)])
    if options.owner:
        filters.append(["owner.user", "=", options.owner])
    return filters


# --- rendering ----------------------------------------------------------------------------

def progress_bar(job: Dict[str, Any]) -> str:
    """``[#####-----]  50%`` while a percentage is known, else how it ended or stands."""
    percent = (job.get("progress") or {}).get("percent")
    if job.get("state") == "RUNNING" and isinstance(percent, (int, float)):
        filled = max(0, min(BAR_WIDTH, int(round(percent / 100 * BAR_WIDTH))))
        return f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {percent:3.0f}%"
    if job.get("outcome"):
        codes = [c for c in job.get("return_codes") or [] if c]
        return f"{job['outcome']} ({codes[-1]})" if job["outcome"] == "failed" and codes else job["outcome"]
    return "running" if job.get("state") == "RUNNING" else "waiting"


def owner_text(job: Dict[str, Any]) -> str:
    owner = job.get("owner") or {}
    user = owner.get("user") or "-"
    where = owner.get("from") or ""
    return f"{user}@{where}" if where else user


def when(ts: Any, now: float) -> str:
    if not isinstance(ts, (int, float)):
        return "-"
    moment = datetime.fromtimestamp(ts)
    if moment.date() == datetime.fromtimestamp(now).date():
        return moment.strftime("%H:%M:%S")
    return moment.strftime("%Y-%m-%d %H:%M")


def duration(job: Dict[str, Any], now: float) -> str:
    start = job.get("time_started")
    if not isinstance(start, (int, float)):
        return "-"
    end = job.get("time_finished")
    seconds = max(0.0, (end if isinstance(end, (int, float)) else now) - start)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def command_text(job: Dict[str, Any]) -> str:
    commands = job.get("commands")
    if isinstance(commands, list) and commands:
        return " ; ".join(str(c) for c in commands)
    arguments = job.get("arguments")
    return f"{job.get('method', '?')} {arguments!r}" if arguments else str(job.get("method", "?"))


def job_rows(jobs: List[Dict[str, Any]], now: float) -> List[List[str]]:
    return [[str(j.get("id")), j.get("dispatcher_id") or "-", str(j.get("state", "?")).lower(), progress_bar(j), owner_text(j),
             when(j.get("time_started"), now), duration(j, now), command_text(j)] for j in jobs]


# --- verbs --------------------------------------------------------------------------------

async def jobs_list(ctx: Context) -> int:
    options = ctx.options
    if not 1 <= options.limit <= 1000:
        raise ClientError(f"--limit must be from 1 to 1000, got {options.limit}", EXIT_USAGE)
    now = time.time()
    filters = list_filters(options, now)
    jobs = await ctx.ask("core", "get_jobs", [filters, {"order_by": ["-id"], "limit": options.limit}],
                         what="listing jobs")
    if ctx.json_output:
        ctx.emit_json(jobs)
        return EXIT_OK
    if not jobs:
        ctx.say("no jobs" + (" match" if filters else ""))
        return EXIT_OK
    for line in tables.render(["id", "name", "state", "progress", "owner", "started", "duration", "command"],
                              job_rows(list(reversed(jobs)), now)):
        ctx.say(line)
    return EXIT_OK


async def _get(ctx: Context, job_id: int) -> Dict[str, Any]:
    return await ctx.ask("core", "get_jobs", [[["id", "=", job_id]], {"get": True}], what=f"reading job {job_id}")


async def job_show(ctx: Context) -> int:
    job = await _get(ctx, ctx.options.job_id)
    if ctx.json_output:
        ctx.emit_json(job)
        return EXIT_OK
    now = time.time()
    progress = job.get("progress") or {}
    lines = [
        ("id", job.get("id")), ("state", f"{job.get('state')} ({progress_bar(job)})"), ("method", job.get("method")),
        ("command", command_text(job)), ("return codes", job.get("return_codes")), ("error", job.get("error")),
        ("owner", f"{owner_text(job)} via {(job.get('owner') or {}).get('via') or 'unknown'}"),
        ("queue", job.get("queue")), ("dispatcher id", job.get("dispatcher_id")),
        ("created", when(job.get("time_created"), now)), ("started", when(job.get("time_started"), now)),
        ("finished", when(job.get("time_finished"), now)), ("duration", duration(job, now)),
        ("progress", f"{progress.get('percent')}% {progress.get('description') or ''}".strip()
         if progress.get("percent") is not None else (progress.get("description") or None)),
        ("result", job.get("result")), ("log file", job.get("logs_path")),
    ]
    for name, value in lines:
        if value not in (None, "", []):
            ctx.say(f"{name + ':':15}{value}")
    return EXIT_OK


def _write_bytes(ctx: Context, data: bytes) -> None:
    buffer = getattr(ctx.out, "buffer", None)
    if buffer is None:
        ctx.out.write(data.decode("utf-8", "replace"))
        ctx.out.flush()
        return
    ctx.out.flush()
    try:
        buffer.write(data)
        buffer.flush()
    except BrokenPipeError:
        die = getattr(ctx.out, "_die", None)
        if die is None:
            raise
        die()


def _server_wait(ctx: Context) -> float:
    """How long the server may hold a request: well inside the client's reply timeout."""
    timeout = ctx.timeout
    return SERVER_WAIT if timeout is None else max(0.5, min(SERVER_WAIT, timeout / 2))


async def job_log(ctx: Context) -> int:
    job_id, offset, follow = ctx.options.job_id, ctx.options.offset, ctx.options.follow
    while True:
        args = {"id": job_id, "offset": offset, "length": LOG_CHUNK, "follow": follow, "timeout": _server_wait(ctx)}
        reply = await ctx.ask("core", "job_log", args, what=f"reading the output of job {job_id}")
        data = base64.b64decode(reply.get("data") or "")
        if data:
            _write_bytes(ctx, data)
        offset = reply.get("next_offset", offset + len(data))
        if reply.get("eof"):
            break
        if not follow and not data and offset >= reply.get("size", 0):
            break  # everything printed so far, and no waiting asked for
    cut = reply.get("cut") or 0
    if cut:
        ctx.note(f"sysadm: {cut} bytes of job {job_id}'s output were not kept by the server "
                 "(JOB_OUTPUT_FILE_MAX / JOB_OUTPUT_TOTAL_MAX)")
    return EXIT_OK


def exit_code_of(job: Dict[str, Any]) -> int:
    if job.get("outcome") == "succeeded":
        return EXIT_OK
    codes = [c for c in job.get("return_codes") or [] if isinstance(c, int)]
    if job.get("outcome") == "failed" and codes and codes[-1] > 0:
        return min(codes[-1], 255)
    return EXIT_ERROR_REPLY


async def job_wait(ctx: Context) -> int:
    job_id = ctx.options.job_id
    while True:
        job = await ctx.ask("core", "job_wait", [job_id, {"timeout": _server_wait(ctx)}], what=f"waiting for job {job_id}")
        if job.get("state") in ("SUCCESS", "FAILED", "ABORTED"):
            break
    if ctx.json_output:
        ctx.emit_json(job)
    else:
        error = f": {job['error']}" if job.get("error") else ""
        ctx.say(f"job {job_id} {job.get('state')} ({job.get('outcome')}) after {duration(job, time.time())}{error}")
    return exit_code_of(job)


async def job_abort(ctx: Context) -> int:
    job_id = ctx.options.job_id
    reply = await ctx.ask("core", "job_abort", [job_id], what=f"aborting job {job_id}")
    if ctx.json_output:
        ctx.emit_json(reply)
    else:
        ctx.say(f"aborted job {job_id} ({reply.get('aborted')})")
    return EXIT_OK
