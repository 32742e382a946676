"""The schema of the first release (1f9198b): registered keys and the blacklist."""

from sysadmd.runtime.db import run_script
from sysadmd.runtime.blacklist import BLACKLIST_STATEMENTS

STATEMENTS = """
CREATE TABLE IF NOT EXISTS bridge_keys (
    nickname TEXT PRIMARY KEY,
    pem TEXT NOT NULL,
    stored TEXT NOT NULL,
    md5 TEXT NOT NULL,
    role TEXT NOT NULL DEFAULT 'any',
    registered REAL NOT NULL
);

"""


def apply(db):
    run_script(db, STATEMENTS + BLACKLIST_STATEMENTS)
