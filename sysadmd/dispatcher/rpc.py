"""``rpc/dispatcher``: run, list and kill jobs, plus our ``history`` (docs/protocol.md §6.4).

Requests (``args`` is an object; ``action`` matches case-insensitively)::

    {"action":"run","job1":"echo hi","job2":["mkdir /tmp/x","ls /tmp/x"]}
      → {"started":["job1","job2"]}            (full access; sorted ids; all jobs in no_queue)
      → {"started":[…],"skipped":{"job3":"…"}} when a value was neither a string nor a list
    {"action":"list"}
      → {"jobs":{"no_queue":{"job2":{"commands":[…],"state":"running"}},
                 "pkg_queue":{"<id>":{"commands":[…],"queue_position":"0","state":"running"}}}}
    {"action":"kill","job_id":"job1"}  or  {"action":"kill","job_id":["job1","job2"]}
      → {"killed":{"jobs":["job1"]}}           (full access; the ids that were pending or running)
    {"action":"history"[, "job_id": <string|array>][, "limit": 1..1000]}
      → {"history":[<finished process log + "queue">, …]}   (newest first; ours)
    {"action":"read_output","job_id":ID,"command":I[, "offset":N][, "length":M]}
      → {"job_id":ID,"command":I,"offset":N,"missing":K,"data":"<text>","next_offset":E,
         "size":S,"cut":C,"finished":true|false,"job_state":"pending"|"running"|"finished"}  (ours)

``read_output`` reads the stored output of command *I* (0-based index into ``cmd_list``)
of the pending, running or newest finished job *ID*, from byte *N* (default 0) of that
command's output, at most *M* bytes (1 to 262144, default 65536).  ``data`` is those
bytes as text (invalid UTF-8 becomes U+FFFD; a character is never split between two
replies, so ``next_offset`` may stop short of N + M); it starts *K* bytes after N when
bytes from N on were not kept (``JOB_OUTPUT_FILE_MAX`` / ``JOB_OUTPUT_TOTAL_MAX``), so
``next_offset`` - K - N bytes were read.  ``size`` is the bytes the command printed so
far, ``cut`` how many of them are not in the job's file, ``finished`` whether the
command has ended (its output is complete).  While a command runs, its last bytes past
a gap are served from memory.  Everyone who may read ``history`` may read this.

Upstream skips run values of other types silently; we still skip them (old clients may
send such keys) but say so in ``skipped``.  An id that is already pending or running, an
empty chain or an empty command is refused with 400 and nothing is started, and so is
a job id or command holding a lone UTF-16 surrogate (it could never be stored or sent
back as UTF-8).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from twisted.logger import Logger

from sysadmd.api import require_full_access
from sysadmd.dispatcher.job import NO_QUEUE
from sysadmd.dispatcher.service import Dispatcher
from sysadmd.dispatcher.service import SURROGATE
from sysadmd.dispatcher.store import LiveOutput, UnknownLayout
from sysadmd.jobs.model import Owner
from sysadmd.untrusted import clean, has_surrogate
from sysadmd.wire.envelope import ApiError, require_action, type_name

log = Logger()

HISTORY_LIMIT = 100
HISTORY_MAX = 1000
READ_LENGTH = 64 * 1024  # default bytes per read_output reply
READ_LENGTH_MAX = 256 * 1024


def _job_ids(args: Dict[str, Any], required: bool) -> Any:
    value = args.get("job_id")
    if value is None and not required:
        return None
    # Ids are only looked up, so texts that cannot be encoded are repaired, not refused.
    if isinstance(value, str):
        return [clean(value)]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [clean(v) for v in value]
    raise ApiError("400", f"'job_id' must be a job id string or an array of them, got {type_name(value)}")


class DispatcherApi:
    """The handlers of ``rpc/dispatcher`` over one :class:`Dispatcher`."""

    def __init__(self, server: Any, dispatcher: Dispatcher):
        self.server = server
        self.dispatcher = dispatcher

    def handle(self, session, request) -> Any:
        action = require_action(request.args)
        handler = getattr(self, f"action_{action}", None)
        if handler is None:
            raise ApiError("400", f"unknown dispatcher action {action!r}; expected run, list, kill, history or read_output")
        return handler(session, request.args)

    def action_run(self, session, args: Dict[str, Any]) -> Dict[str, Any]:
        identity = require_full_access(session, "running dispatcher jobs")
        jobs: Dict[str, List[Any]] = {}
        skipped: Dict[str, str] = {}
        for key, value in args.items():
            if key == "action":
                continue
            if has_surrogate(key):
                raise ApiError("400", f"job id {clean(key)!r} contains {SURROGATE}")
            if not key:
                skipped[key] = "a job id must not be empty"
            elif isinstance(value, str):
                jobs[key] = [value]
            elif isinstance(value, list):
                jobs[key] = value
            else:
                skipped[key] = f"expected a command string or an array of them, got {type_name(value)}"
        if not jobs and not skipped:
            raise ApiError("400", "nothing to run: give each job as \"<job id>\": \"<command>\" or [\"<command>\", …]")
        started = self.dispatcher.submit_many(jobs, queue=NO_QUEUE, origin=f"{identity.user}@{session.peer}",
                                              owner=Owner.of(session))
        ids = sorted(job.id for job in started)
        if ids:
            self.server.logs.hostinfo(f"Client Launched Processes[{session.peer}]: {','.join(ids)}")
        reply: Dict[str, Any] = {"started": ids}
        if skipped:
            reply["skipped"] = skipped
        return reply

    def action_list(self, session, args: Dict[str, Any]) -> Dict[str, Any]:
        return self.dispatcher.list()

    def action_kill(self, session, args: Dict[str, Any]) -> Dict[str, Any]:
        require_full_access(session, "killing dispatcher jobs")
        ids = _job_ids(args, required=True)
        return {"killed": {"jobs": self.dispatcher.kill(ids)}}

    def action_history(self, session, args: Dict[str, Any]) -> Dict[str, Any]:
        ids = _job_ids(args, required=False)
        limit = args.get("limit", HISTORY_LIMIT)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= HISTORY_MAX:
            raise ApiError("400", f"'limit' must be an integer from 1 to {HISTORY_MAX}")
        return {"history": self.dispatcher.history(ids, limit)}

    def action_read_output(self, session, args: Dict[str, Any]) -> Dict[str, Any]:
        job_id = args.get("job_id")
        if not isinstance(job_id, str) or not job_id:
            raise ApiError("400", f"'job_id' must be a non-empty job id string, got {type_name(job_id)}")
        job_id = clean(job_id)  # only looked up
        index = _integer(args, "command", None, 0, None)
        offset = _integer(args, "offset", 0, 0, None)
        length = _integer(args, "length", READ_LENGTH, 1, READ_LENGTH_MAX)
        dispatcher, store = self.dispatcher, self.dispatcher.store
        live: Optional[LiveOutput] = None
        job = dispatcher.active.get(job_id)
        if job is not None:
            record = job.record
            if record.state == "running" and job.output is not None and index == record.current:
                live = LiveOutput(size=job.size, total=job.output.total, tail=job.output.tail_bytes())
        else:
            found = store.finished([job_id], 1)
            if not found:
                raise ApiError("404", f"no job {job_id!r} is pending, running or in the history")
            record = found[0]
        if index >= len(record.commands):
            raise ApiError("400", f"'command' must be an index from 0 to {len(record.commands) - 1} "
                                  f"(job {job_id!r} has {len(record.commands)} commands), got {index}")
        reply: Dict[str, Any] = {"job_id": job_id, "command": index, "offset": offset}
        done = record.state == "finished" or index < len(record.return_codes)
        if index >= len(record.ranges):  # not started yet, or never (the chain stopped before it)
            if offset > 0:
                raise ApiError("400", f"'offset' {offset} is past the end of command {index}'s output (0 bytes)")
            reply.update(missing=0, data="", next_offset=0, size=0, cut=0)
        else:
            try:
                piece = store.read_output(record, index, offset, length, live)
            except UnknownLayout as e:
                raise ApiError("409", str(e)) from None
            except ValueError as e:
                raise ApiError("400", f"'offset': {e}") from None
            reply.update(missing=piece.missing, data=piece.data, next_offset=piece.next_offset, size=piece.size,
                         cut=piece.cut)
        reply.update(finished=done, job_state=record.state)
        return reply


def _integer(args: Dict[str, Any], name: str, default: Optional[int], low: int, high: Optional[int]) -> int:
    """``args[name]`` as an integer in [low, high]; 400 naming the field otherwise."""
    value = args.get(name, default)
    expected = f"an integer from {low} to {high}" if high is not None else f"an integer of at least {low}"
    if value is None:
        raise ApiError("400", f"missing '{name}' ({expected})")
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        shown = repr(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else type_name(value)
        raise ApiError("400", f"'{name}' must be {expected}, got {shown}")
    return value


def route(api: Any, dispatcher_api: DispatcherApi) -> None:
    """Route ``rpc/dispatcher`` (read-only actions for limited users)."""
    api.add("rpc", "dispatcher", dispatcher_api.handle, limited="read")
