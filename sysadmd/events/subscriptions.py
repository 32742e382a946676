"""``events/subscribe`` and ``events/unsubscribe``.

Wire (authentication required; the namespace matches case-insensitively)::

    {"namespace":"events","name":"subscribe","id":"e1","args":["dispatcher","system-state"]}
    → {"args":{"subscribe":"system-state"},"id":"e1","name":"response","namespace":"events"}

* ``args`` is one name or an array of names: ``dispatcher``, ``life-preserver``,
  ``system-state`` (the types registered with the hub, :mod:`sysadmd.events.hub`).  The reply holds the last name of the request, as upstream's does
  (``{"unsubscribe":…}`` for unsubscribe; ``{}`` for an empty array).
* Upstream skipped unknown names silently; we answer 400 naming them and the valid ones,
  and then change nothing, not even for the valid names of that request, so a client
  never ends up half-subscribed after an error.  ``bridge`` gets its own 400: bridge
  events reach every client of a bridge without a subscription.
* Subscribing to ``life-preserver`` or ``system-state`` sends the latest such event at
  once, before the reply.  Subscriptions belong to the session (one WebSocket, one Unix
  socket connection, one client behind a bridge link) and its login: they end with
  the connection, with ``rpc/auth_clear`` (or any new ``auth*``), when the token
  expires (noticed at the next request or within RIGHTS_CACHE_SECONDS) and when the
  user loses its rights.  Upstream's outlived token expiry.
"""

from __future__ import annotations

from typing import Any, List, Sequence

from sysadmd.api import Api
from sysadmd.wire.envelope import ApiError, type_name
from sysadmd.events.hub import EventHub
from sysadmd.session import Session


def event_names(args: Any, valid: Sequence[str]) -> List[str]:
    """The names a subscribe/unsubscribe request asks for among the *valid* (registered)
    types, or an :class:`ApiError`."""
    valid_text = ", ".join(valid)
    if isinstance(args, str):
        names = [args]
    elif isinstance(args, list):
        names = args
        bad = [i for i, n in enumerate(names) if not isinstance(n, str)]
        if bad:
            raise ApiError("400", f"args[{bad[0]}] is {type_name(names[bad[0]])}; event names are strings ({valid_text})")
    else:
        raise ApiError("400", f"args must be an event name or an array of names ({valid_text}), got {type_name(args)}")
    if "bridge" in names:
        raise ApiError("400", "bridge events need no subscription: every client connected through a bridge receives them")
    unknown = [n for n in names if n not in valid]
    if unknown:
        hints = [f"{n!r} (did you mean {n.replace('_', '-').lower()!r}?)" if n.replace("_", "-").lower() in valid
                 else repr(n) for n in unknown]
        raise ApiError("400", f"unknown event type {', '.join(hints)}; valid types: {valid_text}; nothing was changed")
    return names


def route(api: Api, hub: EventHub) -> None:
    """Route events/subscribe|unsubscribe to *hub* (any type registered with it)."""

    def subscribe(session: Session, request) -> dict:
        names = event_names(request.args, hub.names())
        for name in names:
            hub.subscribe(session, name)
        return {"subscribe": names[-1]} if names else {}

    def unsubscribe(session: Session, request) -> dict:
        names = event_names(request.args, hub.names())
        for name in names:
            hub.unsubscribe(session, name)
        return {"unsubscribe": names[-1]} if names else {}

    # Not listed in rpc/query: upstream's availability map never listed events.
    api.add("events", "subscribe", subscribe, listed=False)
    api.add("events", "unsubscribe", unsubscribe, listed=False)
