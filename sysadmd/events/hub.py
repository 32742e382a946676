"""The event hub: one place that fans events out to subscribed sessions.

An event is encoded once (``{"args":…,"id":"","name":<type>,"namespace":"events"}``) and
the same text goes to every subscriber's channel; a slow subscriber is cut off by its
own channel's buffer limit, never by slowing the others.  ``life-preserver`` and
``system-state`` keep their latest event, which a new subscriber gets at once.  Every
event is also appended to its ``events-*`` log for ``rpc/logs``.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from twisted.logger import Logger

from sysadmd.envelope import encode, event
from sysadmd.logstore import LogStore
from sysadmd.session import Session, SessionRegistry

log = Logger()

# "jobs" (issue 10, helper D): the job table's added/changed events (sysadmd/jobs/service.py);
# not cached, not stored in an events log.
EVENT_TYPES = ("dispatcher", "life-preserver", "system-state", "jobs")
CACHED_TYPES = ("life-preserver", "system-state")
LOG_NAMES = {"dispatcher": "events-dispatcher", "life-preserver": "events-lifepreserver", "system-state": "events-state"}


class EventHub:
    def __init__(self, sessions: SessionRegistry, logs: Optional[LogStore] = None):
        self.sessions = sessions
        self.logs = logs
        self.latest: Dict[str, Any] = {}
        self._subscribers: Dict[str, Dict[str, Session]] = {name: {} for name in EVENT_TYPES}

    def publish(self, name: str, args: Any, *, store: bool = True) -> int:
        """Send an event to every subscriber of *name*; returns how many got it."""
        if name in CACHED_TYPES:
            self.latest[name] = args
        if store and self.logs is not None and name in LOG_NAMES:
            self.logs.append(LOG_NAMES[name], args)
        subscribers = self._subscribers.get(name)
        if not subscribers:
            return 0
        text = encode(event(name, args))
        sent = 0
        for session in list(subscribers.values()):
            session.send_text(text)
            sent += 1
        return sent

    def subscribe(self, session: Session, name: str) -> None:
        if name not in self._subscribers:
            raise KeyError(name)
        subs = self._subscribers[name]
        if session.id not in subs:
            subs[session.id] = session
            session.subscriptions.add(name)
            if len(session.subscriptions) == 1:
                session.on_close(self._forget)
        if name in self.latest:
            session.send_event(name, self.latest[name])

    def unsubscribe(self, session: Session, name: str) -> None:
        if name not in self._subscribers:
            raise KeyError(name)
        self._subscribers[name].pop(session.id, None)
        session.subscriptions.discard(name)

    def subscriber_count(self, name: str) -> int:
        return len(self._subscribers.get(name, ()))

    def _forget(self, session: Session) -> None:
        for subs in self._subscribers.values():
            subs.pop(session.id, None)
