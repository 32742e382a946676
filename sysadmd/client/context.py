"""What every verb gets: the parsed options, streams, the connection and a way to ask."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Optional

from sysadmd.client.connect import request
from sysadmd.client.errors import ErrorReply, is_error


@dataclass
class Context:
    reactor: Any
    options: Any  # argparse.Namespace
    out: Any  # text stream for results
    err: Any  # text stream for notes, progress and errors
    stdin: Any
    conn: Any = None  # ApiConnection or BridgedConnection, once opened
    target: str = "the server"  # what to call the server in messages
    extras: dict = field(default_factory=dict)

    @property
    def timeout(self) -> Optional[float]:
        return self.options.timeout or None

    @property
    def json_output(self) -> bool:
        return bool(getattr(self.options, "json", False))

    async def call(self, namespace: str, name: str, args: Any = None) -> dict:
        """The whole reply envelope (errors included)."""
        return await request(self.conn, self.reactor, namespace, name, {} if args is None else args,
                             self.timeout, self.target)

    async def ask(self, namespace: str, name: str, args: Any = None, what: str = "") -> Any:
        """The reply's ``args``; an error reply raises :class:`ErrorReply`."""
        reply = await self.call(namespace, name, args)
        if is_error(reply):
            raise ErrorReply(reply, what or f"{namespace}/{name}")
        return reply.get("args")

    # --- output ---------------------------------------------------------------------
    def say(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def note(self, text: str) -> None:
        self.err.write(text + "\n")
        self.err.flush()

    def emit_json(self, value: Any, *, compact: bool = False) -> None:
        if compact:
            self.say(json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False))
        else:
            self.say(json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False))
