"""The event hub: one place that fans events out to subscribed sessions.

An event is encoded once (``{"args":…,"id":"","name":<type>,"namespace":"events"}``) and
the same text goes to every subscriber's channel; a slow subscriber is cut off by its
own channel's buffer limit, never by slowing the others.

The vocabulary is registered, once per type, with :meth:`EventHub.register` and an
:class:`EventType`: its name (what ``events/subscribe`` accepts), whether the latest
event is kept and sent at once to a new subscriber (``cached``), and the ``rpc/logs``
log that stores every event (``log``; ``None`` for types that are not stored).  That one
registration is all a new producer needs: the type becomes subscribable, its log is
registered with the :class:`~sysadmd.logstore.LogStore`, and the producer gets its
publisher from :meth:`EventHub.publisher`, which refuses a name nobody registered when
the daemon is assembled, not when the first event is published.  The daemon's
vocabulary is :data:`DAEMON_EVENT_TYPES`, which :mod:`sysadmd.assembly` registers.

In-process listeners (:meth:`EventHub.listen`) get the args of every event of a type,
subscribed sessions or not: the seed's ``/websocket`` adapter turns ``jobs`` events into
its own ``added``/``changed`` messages this way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.logger import Logger

from sysadmd.wire.envelope import encode, event
from sysadmd.logstore import LogStore
from sysadmd.session import Session, SessionRegistry

log = Logger()


@dataclass(frozen=True)
class EventType:
    """One event type of the ``events`` namespace."""

    name: str
    cached: bool = False  # keep the latest event; a new subscriber gets it at once
    log: Optional[str] = None  # the rpc/logs log every event is appended to (None: not stored)


# The daemon's vocabulary (upstream's names and log names): a new event type is one more
# line here; its producer gets ``hub.publisher(name)`` where sysadmd/assembly.py builds it.
DISPATCHER = EventType("dispatcher", cached=False, log="events-dispatcher")
LIFE_PRESERVER = EventType("life-preserver", cached=True, log="events-lifepreserver")
SYSTEM_STATE = EventType("system-state", cached=True, log="events-state")
JOBS = EventType("jobs", cached=False, log=None)  # the job store's added/changed; the store itself is the record
FLEET = EventType("fleet", cached=False, log=None)  # events emitted to this agent through a bridge (issue 13)
SUPERVISOR = EventType("supervisor", cached=False, log="events-supervisor")  # program state changes (issue 11)
DAEMON_EVENT_TYPES: Tuple[EventType, ...] = (DISPATCHER, LIFE_PRESERVER, SYSTEM_STATE, JOBS, FLEET, SUPERVISOR)


class UnknownEventType(LookupError):
    """An event type was used that was never registered with the hub."""


# publish(args, store=True) -> how many subscribers got it
Publisher = Callable[..., int]


class EventHub:
    def __init__(self, sessions: SessionRegistry, logs: Optional[LogStore] = None):
        self.sessions = sessions
        self.logs = logs
        self.latest: Dict[str, Any] = {}
        self.types: Dict[str, EventType] = {}
        self._subscribers: Dict[str, Dict[str, Session]] = {}
        self._listeners: Dict[str, List[Callable[[Any], None]]] = {}
        self._listener_demand: Dict[Callable[[Any], None], Callable[[], bool]] = {}

    def listen(self, name: str, callback: Callable[[Any], None], *,
               wanted: Callable[[], bool] = lambda: True) -> Callable[[], None]:
        """Call *callback(args)* for every *name* event published; returns the undo.
        *wanted()* says whether the listener has anyone to pass events on to right now:
        it counts in :meth:`subscriber_count`, which producers use to skip work nobody
        would receive."""
        self._listeners.setdefault(name, []).append(callback)
        self._listener_demand[callback] = wanted

        def stop() -> None:
            callbacks = self._listeners.get(name, [])
            if callback in callbacks:
                callbacks.remove(callback)
                self._listener_demand.pop(callback, None)

        return stop

    # --- the vocabulary -----------------------------------------------------------------
    def register(self, kind: EventType) -> Publisher:
        """Make *kind* subscribable and stored; returns its publisher."""
        if not isinstance(kind, EventType) or not kind.name:
            raise ValueError(f"an event type must be an EventType with a name, got {kind!r}")
        if kind.name in self.types:
            raise ValueError(f"event type {kind.name!r} is registered twice")
        if kind.log is not None:
            if self.logs is None:
                raise ValueError(f"event type {kind.name!r} names the log {kind.log!r} but this hub has no log store")
            self.logs.register_log(kind.log)
        self.types[kind.name] = kind
        self._subscribers[kind.name] = {}
        return self.publisher(kind.name)

    def names(self) -> List[str]:
        """The registered type names, in registration order."""
        return list(self.types)

    def publisher(self, name: str) -> Publisher:
        """``publish(args, store=True)`` for the registered type *name*; a producer asks
        for it while the daemon is assembled, so a type nobody registered fails then."""
        self._known(name)

        def publish(args: Any, *, store: bool = True) -> int:
            return self.publish(name, args, store=store)

        return publish

    def _known(self, name: str) -> EventType:
        kind = self.types.get(name)
        if kind is None:
            registered = ", ".join(self.types) or "none"
            raise UnknownEventType(f"event type {name!r} is not registered (registered: {registered}); register it "
                                   "once with EventHub.register(EventType(...)) where the daemon is assembled "
                                   "(sysadmd/assembly.py)")
        return kind

    # --- events -------------------------------------------------------------------------
    def publish(self, name: str, args: Any, *, store: bool = True) -> int:
        """Send an event to every subscriber of *name*; returns how many got it."""
        kind = self._known(name)
        if kind.cached:
            self.latest[name] = args
        if store and kind.log is not None and self.logs is not None:
            self.logs.append(kind.log, args)
        for callback in list(self._listeners.get(name, ())):
            try:
                callback(args)
            except Exception:
                log.failure("a listener of {name} events failed", name=name)
        subscribers = self._subscribers[name]
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
        """Sessions subscribed to *name*, plus in-process listeners that want it now."""
        listening = sum(1 for callback in self._listeners.get(name, ()) if self._listener_demand[callback]())
        return len(self._subscribers.get(name, ())) + listening

    def _forget(self, session: Session) -> None:
        for subs in self._subscribers.values():
            subs.pop(session.id, None)
