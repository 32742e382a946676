"""The event hub: one place that fans events out to subscribed sessions.

An event is encoded once (``{"args":…,"id":"","name":<type>,"namespace":"events"}``) and
the same text goes to every subscriber's channel; a slow subscriber is cut off by its
own channel's buffer limit, never by slowing the others.  ``life-preserver`` and
``system-state`` keep their latest event, which a new subscriber gets at once.  Every
event is also appended to its ``events-*`` log for ``rpc/logs``.

In-process listeners (:meth:`EventHub.listen`) get the args of every event of a type,
subscribed sessions or not: the seed's ``/websocket`` adapter turns ``jobs`` events into
its own ``added``/``changed`` messages this way.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

from twisted.logger import Logger

from sysadmd.envelope import encode, event
from sysadmd.logstore import LogStore
from sysadmd.session import Session, SessionRegistry

log = Logger()

EVENT_TYPES = ("dispatcher", "life-preserver", "system-state")
CACHED_TYPES = ("life-preserver", "system-state")
LOG_NAMES = {"dispatcher": "events-dispatcher", "life-preserver": "events-lifepreserver", "system-state": "events-state"}


class EventHub:
    def __init__(self, sessions: SessionRegistry, logs: Optional[LogStore] = None):
        self.sessions = sessions
        self.logs = logs
        self.latest: Dict[str, Any] = {}
        self._subscribers: Dict[str, Dict[str, Session]] = {name: {} for name in EVENT_TYPES}
        self._listeners: Dict[str, List[Callable[[Any], None]]] = {}

    def listen(self, name: str, callback: Callable[[Any], None]) -> Callable[[], None]:
        """Call *callback(args)* for every *name* event published; returns the undo."""
        self._listeners.setdefault(name, []).append(callback)

        def stop() -> None:
            callbacks = self._listeners.get(name, [])
            if callback in callbacks:
                callbacks.remove(callback)

        return stop

    def publish(self, name: str, args: Any, *, store: bool = True) -> int:
        """Send an event to every subscriber of *name*; returns how many got it."""
        if name in CACHED_TYPES:
            self.latest[name] = args
        if store and self.logs is not None and name in LOG_NAMES:
            self.logs.append(LOG_NAMES[name], args)
        for callback in list(self._listeners.get(name, ())):
            try:
                callback(args)
            except Exception:
                log.failure("a listener of {name} events failed", name=name)
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
