"""Fleet end to end (issue 13 item 6): the bridge lists each agent's key (``fleet_agents.key``,
b64 SPKI DER of the key it authenticated with) so clients can seal to agents that are
offline; an emitted event is stored per agent with the client's signature and key
checksum (``fleet_events.signature``, ``signer``), like a command."""

from sysadmd.runtime.db import add_column


def apply(db):
    add_column(db, "fleet_agents", "key", "TEXT NOT NULL DEFAULT ''")
    add_column(db, "fleet_events", "signature", "TEXT NOT NULL DEFAULT ''")
    add_column(db, "fleet_events", "signer", "TEXT NOT NULL DEFAULT ''")
