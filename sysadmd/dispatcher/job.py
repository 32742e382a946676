"""A dispatcher job in memory, and the shapes it takes on the wire.

A job is an id, a queue and a chain of command strings; commands run one after another
and the chain stops at the first non-zero exit.  Its *process log* is upstream's shape
(docs/protocol.md §6.4, §7)::

    {"cmd_list":["echo a","false"],"process_id":"job1","state":"finished",
     "time_started":"2019-05-23T19:51:51","time_finished":"2019-05-23T19:51:52",
     "echo a":"a\\n","return_codes/echo a":"0","false":"","return_codes/false":"1"}

Ours differs from upstream's (docs/protocol.md §9): the finished log has every command's key
and return code (``"-1"`` for a command that did not start, could not start, or was
killed), and ``"killed":"true"`` / ``"interrupted":"true"`` when that happened;
``"output_cut":"<N>"`` says that N bytes of the job's output are not in its file (over
``JOB_OUTPUT_FILE_MAX`` / ``JOB_OUTPUT_TOTAL_MAX``).
Progress updates while a command runs (at most 4 a second, plus one with the last piece
when the command ends) carry only the output since the previous update, under the
current command's key, so a command's updates add up to its output.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Dict, List, Optional

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall

from sysadmd.dispatcher.output import CommandOutput
from sysadmd.dispatcher.backend import CommandHandle
from sysadmd.dispatcher.store import JobRecord

NO_QUEUE = "no_queue"


def iso_time(ts: float) -> str:
    """Local time without zone, as upstream (Qt ``Qt::ISODate`` of a local time)."""
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%dT%H:%M:%S")


def process_log(record: JobRecord, logs: List[str], *, state: str, current: Optional[int] = None) -> Dict[str, Any]:
    """The process log of *record*: the command keys of started commands, then the fields.

    *logs* holds the output of the commands with a return code (in order); *current* is
    the index of the running command, whose key is added empty.
    """
    out: Dict[str, Any] = {}
    for index, code in enumerate(record.return_codes):
        command = record.commands[index]
        out[command] = logs[index] if index < len(logs) else ""
        out[f"return_codes/{command}"] = str(code)
    if current is not None:
        out[record.commands[current]] = ""
    # The fields come last so a command string such as "state" cannot hide them.
    out.update({"cmd_list": list(record.commands), "process_id": record.id, "state": state})
    if record.started is not None:
        out["time_started"] = iso_time(record.started)
    if current is not None:
        out["current_cmd"] = record.commands[current]
    return out


def finished_log(record: JobRecord, logs: List[str]) -> Dict[str, Any]:
    """The one ``finished`` event of a job (also what ``history`` returns)."""
    out: Dict[str, Any] = {}
    # As upstream: only commands that ran (or failed to start, or were killed) get keys;
    # those a chain never reached get none, so "-1" always means "this one failed".
    for index, command in enumerate(record.commands[: len(record.return_codes)]):
        out[command] = logs[index] if index < len(logs) else ""
        out[f"return_codes/{command}"] = str(record.return_codes[index])
    out.update({"cmd_list": list(record.commands), "process_id": record.id, "state": "finished"})
    if record.started is not None:
        out["time_started"] = iso_time(record.started)
    if record.finished is not None:
        out["time_finished"] = iso_time(record.finished)
    if record.killed:
        out["killed"] = "true"
    if record.interrupted:
        out["interrupted"] = "true"
    if record.cut > 0:
        out["output_cut"] = str(record.cut)
    return out


class Job:
    """Runtime state of a pending or running job around its stored record."""

    def __init__(self, record: JobRecord, cap: int):
        self.record = record
        self.cap = cap
        self.logs: List[str] = []  # capped output of each command that ended
        self.output: Optional[CommandOutput] = None  # the running command's output
        self.process: Optional[CommandHandle] = None
        self.command_token: Optional[object] = None  # identifies the running command's callbacks
        self.file = None  # the job's output file while it runs (opened with the first output)
        self.file_failed = False
        self.size = 0  # bytes in the output file
        self.dropped_after_write = 0  # bytes not written since the last write (see Dispatcher._save_tail)
        self.last_update = float("-inf")
        self.update_timer: Optional[IDelayedCall] = None
        # Progress (Dispatcher._progress): the last delivered report, the one waiting for
        # its turn, when the last went out, the timer of the next.
        self.progress: Optional[Dict[str, Any]] = None
        self.progress_pending: Optional[Dict[str, Any]] = None
        self.last_progress = float("-inf")
        self.progress_timer: Optional[IDelayedCall] = None
        self.kill_requested = False
        self.stopping = False  # the daemon is stopping: the job ends interrupted
        self.done: defer.Deferred = defer.Deferred()  # fires with the finished log

    def __repr__(self) -> str:
        return f"<Job {self.id!r} {self.queue} {self.state}>"

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def queue(self) -> str:
        return self.record.queue

    @property
    def commands(self) -> List[str]:
        return self.record.commands

    @property
    def state(self) -> str:
        return self.record.state

    @property
    def current(self) -> Optional[int]:
        return self.record.current if self.output is not None else None

    # --- event shapes -------------------------------------------------------------------
    def pending_event(self) -> Dict[str, Any]:
        return {"cmd_list": list(self.commands), "process_id": self.id, "state": "pending"}

    def running_event(self) -> Dict[str, Any]:
        return process_log(self.record, self.logs, state="running", current=self.current)

    def update_event(self, new_output: str) -> Dict[str, Any]:
        """A progress update: only the current command's output since the last update."""
        command = self.commands[self.record.current]
        out: Dict[str, Any] = {command: new_output}
        for index, code in enumerate(self.record.return_codes):
            out[f"return_codes/{self.commands[index]}"] = str(code)
        out.update({"cmd_list": list(self.commands), "process_id": self.id, "state": "running",
                    "current_cmd": command})
        if self.record.started is not None:
            out["time_started"] = iso_time(self.record.started)
        return out

    def finished_event(self) -> Dict[str, Any]:
        return finished_log(self.record, self.logs)

    def list_entry(self, position: int) -> Dict[str, Any]:
        """This job in ``list``: ``queue_position`` only outside ``no_queue``, as upstream."""
        entry: Dict[str, Any] = {"commands": list(self.commands), "state": self.state}
        if self.queue != NO_QUEUE:
            entry["queue_position"] = str(position)
        return entry
