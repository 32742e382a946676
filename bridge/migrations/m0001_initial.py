"""The schema of the first release (1f9198b): registered keys and the blacklist."""

from sysadmd.db import run_script

STATEMENTS = """
CREATE TABLE IF NOT EXISTS bridge_keys (
    nickname TEXT PRIMARY KEY,
    pem TEXT NOT NULL,
    stored TEXT NOT NULL,
    md5 TEXT NOT NULL,
    role TEXT NOT NULL DEFAULT 'any',
    registered REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS auth_failures (
    address TEXT PRIMARY KEY,
    count INTEGER NOT NULL,
    last_failure REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS blacklist (
    address TEXT PRIMARY KEY,
    blocked_at REAL NOT NULL,
    until REAL NOT NULL
);
"""


def apply(db):
    run_script(db, STATEMENTS)
