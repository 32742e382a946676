"""The job model: one row of table ``jobs`` per long-running piece of work.

Every job has a global, increasing numeric ``id`` and these fields on the wire (the
``core/get_jobs`` entries and the ``jobs`` events)::

    {"id": 53, "method": "dispatcher.run", "arguments": [...],
     "logs_path": "/var/db/sysadmd/jobs/...log" | null, "logs_excerpt": "<last output>" | null,
     "progress": {"percent": 40.0 | null, "description": "...", "extra": <any>},
     "result": <any>, "error": "<why it failed>" | null, "exception": null, "exc_info": null,
     "state": "WAITING" | "RUNNING" | "SUCCESS" | "FAILED" | "ABORTED",
     "time_created": 1700000000.5, "time_started": 1700000001.0 | null, "time_finished": … | null,
     "owner": {"user": "alice", "via": "password" | "token" | "key" | "local" | null,
               "from": "192.0.2.7" | "bridge:<link>/<client>" | "uid:1000"},
     "queue": "no_queue", "dispatcher_id": "job1" | null, "commands": ["echo a", "false"],
     "return_codes": [0, 1], "outcome": "succeeded" | "failed" | "killed" | "interrupted"
                                        | "not_started" | null}

``return_codes`` has one entry per command that was started, ``null`` for a command
that has no exit code (killed, ended by a signal, could not start); ``outcome`` says
which of these ended the job (``null`` while it is unfinished).  Times are epoch
seconds (the seed's ``{"$date": ms}`` form is its own wire's business).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Dict, Optional

from sysadmd.jobs.query import Column

WAITING, RUNNING, SUCCESS, FAILED, ABORTED = "WAITING", "RUNNING", "SUCCESS", "FAILED", "ABORTED"
STATES = (WAITING, RUNNING, SUCCESS, FAILED, ABORTED)
FINISHED_STATES = (SUCCESS, FAILED, ABORTED)

SUCCEEDED, FAILED_OUTCOME, KILLED, INTERRUPTED, NOT_STARTED = "succeeded", "failed", "killed", "interrupted", "not_started"
OUTCOMES = (SUCCEEDED, FAILED_OUTCOME, KILLED, INTERRUPTED, NOT_STARTED)
# The state a job ends in for each outcome.
OUTCOME_STATE = {SUCCEEDED: SUCCESS, FAILED_OUTCOME: FAILED, NOT_STARTED: FAILED, KILLED: ABORTED,
                 INTERRUPTED: ABORTED}

VIA = {"password": "password", "token": "token", "key": "key", "peer-uid": "local", "local": "local"}

# Fields that filters, order_by and select may name, and their SQL columns.
COLUMNS: Dict[str, Column] = {
    "id": Column("id", "int"),
    "method": Column("method", "text"),
    "state": Column("state", "text"),
    "queue": Column("queue", "text"),
    "dispatcher_id": Column("dispatcher_id", "text"),
    "outcome": Column("outcome", "text"),
    "time_created": Column("time_created", "float"),
    "time_started": Column("time_started", "float"),
    "time_finished": Column("time_finished", "float"),
    "progress.percent": Column("progress_percent", "float"),
    "progress.description": Column("progress_description", "text"),
    "owner.user": Column("owner_user", "text"),
    "owner.via": Column("owner_via", "text"),
    "owner.from": Column("owner_from", "text"),
    "error": Column("error", "text"),
}

# Fields options.select may name: every top-level field, and the nested ones.
SELECTABLE = frozenset({
    "id", "method", "arguments", "logs_path", "logs_excerpt", "progress", "result", "error", "exception", "exc_info",
    "state", "time_created", "time_started", "time_finished", "owner", "queue", "dispatcher_id", "commands",
    "return_codes", "outcome", "progress.percent", "progress.description", "progress.extra", "owner.user",
    "owner.via", "owner.from",
})


@dataclass(frozen=True)
class Owner:
    """Who started a job: the user, how they logged in, and from where."""

    user: str
    via: Optional[str]  # "password" | "token" | "key" | "local" | None (unknown: older rows)
    origin: str  # address, "bridge:<link>/<client>", "uid:N", or "" for the daemon itself

    @classmethod
    def of(cls, session: Any) -> "Owner":
        """The owner of work requested by *session* (authenticated)."""
        identity = session.identity
        user = identity.user if identity is not None else ""
        method = identity.method if identity is not None else None
        return cls(user, VIA.get(method or "", method), str(session.peer))

    def as_wire(self) -> Dict[str, Any]:
        return {"user": self.user, "via": self.via, "from": self.origin}


SYSTEM = Owner("", None, "")  # work the daemon starts by itself


def _json(text: Optional[str], default: Any = None) -> Any:
    if text is None:
        return default
    try:
        return json.loads(text)
    except ValueError:
        return default


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def to_wire(row: Any) -> Dict[str, Any]:
    """A ``jobs`` row as the wire shows it."""
    codes = _json(row["return_codes"], [])
    return {
        "id": row["id"],
        "method": row["method"],
        "arguments": _json(row["arguments"], []),
        "logs_path": row["logs_path"],
        "logs_excerpt": row["logs_excerpt"],
        "progress": {"percent": row["progress_percent"], "description": row["progress_description"],
                     "extra": _json(row["progress_extra"])},
        "result": _json(row["result"]),
        "error": row["error"],
        "exception": row["exception"],
        "exc_info": _json(row["exc_info"]),
        "state": row["state"],
        "time_created": row["time_created"],
        "time_started": row["time_started"],
        "time_finished": row["time_finished"],
        "owner": {"user": row["owner_user"], "via": row["owner_via"], "from": row["owner_from"]},
        "queue": row["queue"],
        "dispatcher_id": row["dispatcher_id"],
        "commands": _json(row["commands"], []),
        "return_codes": [c if isinstance(c, int) and c >= 0 else None for c in codes] if isinstance(codes, list) else [],
        "outcome": row["outcome"],
    }


def select_fields(job: Dict[str, Any], fields: Any) -> Dict[str, Any]:
    """*job* with only *fields* (dotted names reach into ``progress`` and ``owner``)."""
    out: Dict[str, Any] = {}
    for name in fields:
        head, _, tail = name.partition(".")
        if head not in job:
            continue
        if not tail:
            out[head] = job[head]
        elif isinstance(job[head], dict) and tail in job[head]:
            out.setdefault(head, {})[tail] = job[head][tail]
    return out
