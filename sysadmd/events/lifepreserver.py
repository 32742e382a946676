"""The ``life-preserver`` event, from Life Preserver's log file when there is one.

Event args, as upstream sends them::

    {"class":"snapshot"|"replication","message":"<log line>","priority":"1 - Information"}

Upstream watched ``/var/log/lpreserver/lpreserver.log`` (FreeBSD/TrueOS).  Linux hosts
usually have no Life Preserver, so this watcher polls the file's size every few seconds
and stays silent while the file does not exist; ``life-preserver`` is still a valid
subscription.  Lines already in the file when the daemon starts are not sent again
(reading begins at the end); a file that shrinks was rotated and is read from the top.
Recognised lines: "creating snapshot" (snapshot, 1), "Starting replication" and
"finished replication task" (replication, 1), "FAILED replication" (replication, 7).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, Optional

from twisted.application import service
from twisted.internet import task
from twisted.logger import Logger

from sysadmd.events.systemstate import priority_label

log = Logger()

DEFAULT_LOG = "/var/log/lpreserver/lpreserver.log"
POLL_SECONDS = 5.0
MAX_READ = 1 << 20  # bytes read per poll; the rest waits for the next one

PATTERNS = (
    ("FAILED replication", "replication", 7),
    ("finished replication task", "replication", 1),
    ("Starting replication", "replication", 1),
    ("creating snapshot", "snapshot", 1),
)


def classify(line: str) -> Optional[Dict[str, str]]:
    """The event args for one log line, or ``None`` for lines that are not events."""
    lowered = line.lower()
    for needle, kind, level in PATTERNS:
        if needle.lower() in lowered:
            return {"class": kind, "message": line.strip(), "priority": priority_label(level)}
    return None


class LifePreserverWatcher(service.Service):
    """Polls *path* and publishes one event per recognised new line."""

    name = "life-preserver"

    def __init__(self, publish: Callable[[Dict[str, str]], Any], clock: Any, path: str = DEFAULT_LOG,
                 poll: float = POLL_SECONDS):
        self.publish = publish
        self.clock = clock
        self.path = path
        self.poll_seconds = poll
        self.offset: Optional[int] = None  # None until the file has been seen once
        self._partial = b""
        self._loop: Optional[task.LoopingCall] = None
        self._absent_logged = False

    def startService(self) -> None:
        super().startService()
        self._loop = task.LoopingCall(self.poll)
        self._loop.clock = self.clock
        self._loop.start(self.poll_seconds, now=True)

    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def poll(self) -> None:
        try:
            self._poll()
        except Exception:
            log.failure("reading {path} failed", path=self.path)

    def _poll(self) -> None:
        try:
            size = os.stat(self.path).st_size
        except FileNotFoundError:
            if not self._absent_logged:
                log.debug("no Life Preserver log at {path}; life-preserver events stay silent", path=self.path)
                self._absent_logged = True
            if self.offset is not None:
                self.offset = 0  # removed: a new file will be read from its start
            return
        if self.offset is None:
            self.offset = size  # existing lines are history, not news
            return
        if size < self.offset:
            self.offset, self._partial = 0, b""
        if size == self.offset:
            return
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read(min(MAX_READ, size - self.offset))
        self.offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()[-MAX_READ:]
        for raw in lines:
            args = classify(raw.decode("utf-8", "replace"))
            if args is not None:
                self.publish(args)
