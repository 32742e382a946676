"""Fleet store and forward (issue 13): known agents, stored commands, emitted events.

``payload`` and ``result`` are opaque text the bridge keeps and forwards without reading
(sealed end to end later, without a change here)."""

from sysadmd.runtime.db import run_script

STATEMENTS = """
CREATE TABLE IF NOT EXISTS fleet_agents (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    md5s TEXT NOT NULL DEFAULT '',
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    rtt REAL
);
CREATE TABLE IF NOT EXISTS fleet_commands (
    id TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL,
    owner_md5 TEXT NOT NULL,
    status TEXT NOT NULL,
    ts REAL NOT NULL,
    updated REAL NOT NULL,
    expires REAL NOT NULL,
    ttl REAL NOT NULL,
    payload TEXT NOT NULL,
    signature TEXT NOT NULL,
    signer TEXT NOT NULL,
    result TEXT
);
CREATE INDEX IF NOT EXISTS fleet_commands_agent ON fleet_commands (agent_id, status);
CREATE TABLE IF NOT EXISTS fleet_events (
    id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    owner_md5 TEXT NOT NULL,
    status TEXT NOT NULL,
    ts REAL NOT NULL,
    expires REAL NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (id, agent_id)
);
CREATE TABLE IF NOT EXISTS fleet_health (
    k TEXT PRIMARY KEY,
    v REAL NOT NULL
);
"""


def apply(db):
    run_script(db, STATEMENTS)
