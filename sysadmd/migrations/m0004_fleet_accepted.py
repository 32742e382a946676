"""Fleet (issue 13): the command and event ids this agent accepted from a bridge, so a
lost ack, a reconnect or a restart never runs a command twice; with the result until the
bridge confirmed it stored it.  (Helper "fleet"; renumber freely at merge.)"""

from sysadmd.runtime.db import run_script

STATEMENTS = """
CREATE TABLE IF NOT EXISTS fleet_accepted (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    bridge TEXT NOT NULL DEFAULT '',
    accepted REAL NOT NULL,
    job_id INTEGER,
    state TEXT NOT NULL,
    result TEXT,
    confirmed INTEGER NOT NULL DEFAULT 0
);
"""


def apply(db):
    run_script(db, STATEMENTS)
