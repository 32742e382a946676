"""The schema of the first release (1f9198b): jobs, logs, login keys, blacklist, bridge links."""

from sysadmd.runtime.blacklist import BLACKLIST_STATEMENTS  # the blacklist of that release; the bridge has it too
from sysadmd.runtime.db import run_script

STATEMENTS = """
CREATE TABLE IF NOT EXISTS dispatcher_jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    queue TEXT NOT NULL,
    commands TEXT NOT NULL,
    origin TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    current INTEGER NOT NULL DEFAULT -1,
    return_codes TEXT NOT NULL DEFAULT '[]',
    ranges TEXT NOT NULL DEFAULT '[]',
    killed INTEGER NOT NULL DEFAULT 0,
    interrupted INTEGER NOT NULL DEFAULT 0,
    log_file TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS dispatcher_jobs_by_state ON dispatcher_jobs (state, seq);
CREATE INDEX IF NOT EXISTS dispatcher_jobs_by_id ON dispatcher_jobs (id, seq);

CREATE TABLE IF NOT EXISTS logs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    log TEXT NOT NULL,
    entry TEXT NOT NULL,
    is_json INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS logs_by_time ON logs (log, ts);

CREATE TABLE IF NOT EXISTS registered_keys (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user TEXT NOT NULL,
    pub_key TEXT NOT NULL,
    pem TEXT NOT NULL,
    md5 TEXT NOT NULL UNIQUE,
    nickname TEXT NOT NULL DEFAULT '',
    email TEXT NOT NULL DEFAULT '',
    registered REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS registered_keys_by_user ON registered_keys (user, pub_key);


CREATE TABLE IF NOT EXISTS bridge_links (
    nickname TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    verify TEXT NOT NULL DEFAULT 'pin',
    fingerprint TEXT,
    created REAL NOT NULL
);
"""


def apply(db):
    run_script(db, STATEMENTS + BLACKLIST_STATEMENTS)
