"""``sysadm events NAME…``: subscribe and print events as they come.

Default output is one compact JSON envelope per line (``{"args":…,"id":"","name":…,
"namespace":"events"}``), ready for ``jq`` or a log file; ``--pretty`` prints a header
line with the local time and event name, then the indented ``args``.  Ends after
``--count N`` events, at Ctrl-C (exit 0), or when the server closes the connection.
"""

from __future__ import annotations

import json
import signal
import time
from typing import Any

from twisted.internet import defer

from sysadmd.client.context import Context
from sysadmd.client.errors import EXIT_OK, connection_lost


def format_event(message: dict, pretty: bool) -> str:
    if not pretty:
        return json.dumps(message, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    stamp = time.strftime("%H:%M:%S")
    body = json.dumps(message.get("args"), indent=2, sort_keys=True, ensure_ascii=False)
    return f"── {stamp} {message.get('name', '?')} ──\n{body}"


async def events(ctx: Context) -> int:
    names = ctx.options.names
    count = ctx.options.count
    pretty = ctx.options.pretty
    done: defer.Deferred = defer.Deferred()
    seen = 0

    def on_event(message: dict) -> None:
        nonlocal seen
        if done.called:
            return
        ctx.say(format_event(message, pretty))
        seen += 1
        if count and seen >= count:
            done.callback(EXIT_OK)

    def on_close(reason: Any) -> Any:
        if not done.called:
            code, why = reason if isinstance(reason, tuple) else (None, reason)
            done.errback(connection_lost(ctx.target, str(why or code or "closed")))
        return reason

    ctx.conn.event_listeners.append(on_event)
    ctx.conn.closed.addBoth(on_close)
    reply = await ctx.ask("events", "subscribe", names if len(names) > 1 else names[0], what="subscribe")
    if isinstance(reply, dict) and not reply and not done.called:
        ctx.note("sysadm: the server subscribed to none of these event names")
    previous = signal.signal(signal.SIGINT, lambda *_: ctx.reactor.callFromThread(
        lambda: done.called or done.callback(EXIT_OK)))
    try:
        return await done
    finally:
        signal.signal(signal.SIGINT, previous)
