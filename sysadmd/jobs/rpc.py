"""``core/get_jobs``, ``core/job_abort``, ``core/job_wait``, ``core/job_log`` (docs/protocol.md §6.7).

Requests (``namespace`` ``core``; positional args as the seed has them, or an object)::

    {"namespace":"core","name":"get_jobs","id":"q","args":[[["state","=","RUNNING"]], {"order_by":["-id"],"limit":5}]}
      → {"args":[<job>, …]}   ({"count": true} → a number; {"get": true} → one job or 404)
    {"namespace":"core","name":"job_abort","id":"a","args":[53]}            → {"id":53,"aborted":"killed"}
    {"namespace":"core","name":"job_wait","id":"w","args":[53, {"timeout": 60}]}
      → <job>   (when it has finished, or as it is when the timeout passed first)
    {"namespace":"core","name":"job_log","id":"l","args":{"id":53,"offset":0,"length":65536,"follow":true}}
      → {"id":53,"offset":0,"next_offset":120,"data":"<base64>","encoding":"base64","size":120,
         "finished":false,"eof":false,"cut":0}

Every authenticated user may query, wait and read logs (limited users see every job, as
upstream's ``rpc/dispatcher`` list and history show them); aborting needs full access.
"""

from __future__ import annotations

import base64
import os
from typing import Any, Dict, List, Tuple

from twisted.internet import defer

from sysadmd.api import require_full_access
from sysadmd.dispatcher.output import _whole_prefix
from sysadmd.wire.envelope import ApiError, type_name
from sysadmd.jobs import model
from sysadmd.jobs.query import QueryError, compile_query
from sysadmd.jobs.service import JobsService, TooManyWaits

MAX_ROWS = 1000  # jobs one get_jobs reply holds at most (options.limit may ask for fewer)
LOG_LENGTH = 64 * 1024
LOG_LENGTH_MAX = 1024 * 1024
WAIT_DEFAULT, WAIT_MAX = 60.0, 3600.0
FOLLOW_DEFAULT, FOLLOW_MAX = 30.0, 300.0


def _split(args: Any, names: Tuple[str, ...]) -> Dict[str, Any]:
    """Positional ``[a, b]`` or ``{"a":…, "b":…}`` args as a dict of *names*; the last
    positional element may be an options object merged in."""
    if isinstance(args, dict):
        return dict(args)
    if args is None:
        return {}
    if not isinstance(args, list):
        return {names[0]: args}
    if len(args) > len(names):
        raise ApiError("400", f"args: at most {len(names)} elements ({', '.join(names)}), got {len(args)}")
    out = dict(zip(names, args))
    return out


def _job_id(params: Dict[str, Any]) -> int:
    value = params.get("id")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ApiError("400", f"'id' must be a job id (a whole number of at least 1), got {type_name(value)}"
                              + (f" {value!r}" if isinstance(value, (int, float)) else ""))
    return value


def _number(params: Dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = params.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ApiError("400", f"'{name}' must be a number from {low:g} to {high:g}, got {type_name(value)}")
    return float(value)


def _options(params: Dict[str, Any]) -> Dict[str, Any]:
    options = params.pop("options", None)
    if options is None:
        return params
    if not isinstance(options, dict):
        raise ApiError("400", f"the options (last element of args) must be an object, got {type_name(options)}")
    merged = dict(params)
    merged.update(options)
    return merged


class CoreApi:
    def __init__(self, service: JobsService):
        self.service = service
        self.table = service.table

    # --- get_jobs ---------------------------------------------------------------------------
    def get_jobs(self, session: Any, request: Any) -> Any:
        params = _split(request.args, ("filters", "options"))
        unknown = sorted(set(params) - {"filters", "options"})
        if unknown:
            raise ApiError("400", f"args: unknown key {unknown[0][:32]!r} (expected filters, options)")
        try:
            q = compile_query(params.get("filters"), params.get("options"), model.COLUMNS)
        except QueryError as e:
            raise ApiError("400", str(e)) from None
        if q.select is not None:
            bad = [name for name in q.select if name not in model.SELECTABLE]
            if bad:
                raise ApiError("400", f"options.select: unknown field {bad[0][:64]!r} (expected one of "
                                      f"{', '.join(sorted(model.SELECTABLE))})")
        db = self.table.db
        if q.count:
            return db.execute(f"SELECT COUNT(*) FROM jobs WHERE {q.where}", q.params).fetchone()[0]
        limit = MAX_ROWS if q.limit is None or q.limit == 0 else q.limit
        if limit > MAX_ROWS:
            raise ApiError("400", f"options.limit: at most {MAX_ROWS} jobs per reply (page with offset), got {limit}")
        if q.get:
            limit = 1
        rows = db.execute(f"SELECT * FROM jobs WHERE {q.where} ORDER BY {q.order_by} LIMIT ? OFFSET ?",
                          (*q.params, limit, q.offset)).fetchall()
        jobs = [model.to_wire(row) for row in rows]
        if q.select is not None:
            jobs = [model.select_fields(job, q.select) for job in jobs]
        if q.get:
            if not jobs:
                raise ApiError("404", "no job matches the filters")
            return jobs[0]
        return jobs

    # --- job_abort ----------------------------------------------------------------------------
    def job_abort(self, session: Any, request: Any) -> Dict[str, Any]:
        require_full_access(session, "aborting jobs")
        job_id = _job_id(_split(request.args, ("id",)))
        ok, how = self.service.abort(job_id)
        if not ok:
            if how == "404":
                raise ApiError("404", f"no job {job_id}")
            raise ApiError("409", how)
        return {"id": job_id, "aborted": how}

    # --- job_wait -----------------------------------------------------------------------------
    @defer.inlineCallbacks
    def job_wait(self, session: Any, request: Any):
        params = _options(_split(request.args, ("id", "options")))
        job_id = _job_id(params)
        timeout = _number(params, "timeout", WAIT_DEFAULT, 0, WAIT_MAX)
        job = self._job(job_id)
        if job["state"] in model.FINISHED_STATES or timeout == 0:
            return job
        yield self._park(session, job_id, timeout, on_output=False)
        return self._job(job_id)

    # --- job_log ------------------------------------------------------------------------------
    @defer.inlineCallbacks
    def job_log(self, session: Any, request: Any):
        params = _options(_split(request.args, ("id", "options")))
        job_id = _job_id(params)
        offset = params.get("offset", 0)
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise ApiError("400", f"'offset' must be a whole number of at least 0, got {type_name(offset)}")
        length = params.get("length", LOG_LENGTH)
        if isinstance(length, bool) or not isinstance(length, int) or not 1 <= length <= LOG_LENGTH_MAX:
            raise ApiError("400", f"'length' must be a whole number from 1 to {LOG_LENGTH_MAX}, got {type_name(length)}")
        follow = params.get("follow", False)
        if not isinstance(follow, bool):
            raise ApiError("400", f"'follow' must be true or false, got {type_name(follow)}")
        timeout = _number(params, "timeout", FOLLOW_DEFAULT, 0, FOLLOW_MAX)
        encoding = params.get("encoding", "base64")
        if encoding not in ("base64", "utf-8"):
            raise ApiError("400", f"'encoding' must be \"base64\" or \"utf-8\", got {type_name(encoding)}")
        reply = self._read(job_id, offset, length, encoding)
        if follow and not reply["data"] and not reply["finished"] and timeout > 0:
            yield self._park(session, job_id, timeout, on_output=True)
            reply = self._read(job_id, offset, length, encoding)
        return reply

    def _read(self, job_id: int, offset: int, length: int, encoding: str) -> Dict[str, Any]:
        row = self.table.row(job_id)
        if row is None:
            raise ApiError("404", f"no job {job_id}")
        finished = row["state"] in model.FINISHED_STATES
        cut = 0
        if row["dispatcher_id"] is not None:
            found = self.table.db.execute("SELECT cut FROM dispatcher_jobs WHERE seq = ?", (job_id,)).fetchone()
            cut = found["cut"] if found is not None else 0
        data, size = b"", 0
        path = row["logs_path"]
        if path:
            try:
                with open(path, "rb") as f:
                    size = f.seek(0, os.SEEK_END)
                    if offset > size:
                        raise ApiError("400", f"'offset' {offset} is past the end of job {job_id}'s output "
                                              f"({size} bytes so far)")
                    f.seek(offset)
                    data = f.read(length + (3 if encoding == "utf-8" else 0))
            except FileNotFoundError:
                pass
        if not path or size == 0:
            if offset > 0:
                raise ApiError("400", f"'offset' {offset} is past the end of job {job_id}'s output (0 bytes)")
        if encoding == "utf-8":
            # Never end inside a character that later bytes complete; at the very end of a
            # finished job's output, an incomplete one is sent (as U+FFFD).
            keep = min(len(data), length)
            if not (finished and offset + len(data) >= size):
                keep = _whole_prefix(data[:length]) or keep
            data = data[:keep]
            text = data.decode("utf-8", "replace")
        else:
            text = base64.b64encode(data).decode("ascii")
        next_offset = offset + len(data)
        return {"id": job_id, "offset": offset, "next_offset": next_offset, "data": text, "encoding": encoding,
                "size": size, "finished": finished, "eof": finished and next_offset >= size, "cut": cut}

    # --- helpers --------------------------------------------------------------------------
    def _job(self, job_id: int) -> Dict[str, Any]:
        job = self.table.get(job_id)
        if job is None:
            raise ApiError("404", f"no job {job_id}")
        return job

    def _park(self, session: Any, job_id: int, timeout: float, *, on_output: bool) -> defer.Deferred:
        try:
            return self.service.wait(session, job_id, timeout, on_output=on_output)
        except TooManyWaits as e:
            raise ApiError("429", str(e)) from None


NAMES: List[str] = ["get_jobs", "job_abort", "job_wait", "job_log"]


def route(api: Any, core: CoreApi) -> None:
    """Route ``core/*`` (limited users may query, wait and read logs; abort checks rights)."""
    for name in NAMES:
        api.add("core", name, getattr(core, name), limited="read")
