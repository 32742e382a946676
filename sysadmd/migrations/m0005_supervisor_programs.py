"""Table ``supervisor_programs``: the supervisor's program definitions (issue 11).

``definition`` is the validated definition as JSON; ``marker`` is the process marker
(``SYSADMD_JOB``) of the program's current run while one is alive, so that the next
start after a crash can end what that run left behind.
"""

from sysadmd.runtime.db import run_script

STATEMENTS = """
CREATE TABLE IF NOT EXISTS supervisor_programs (
    name TEXT PRIMARY KEY,
    definition TEXT NOT NULL,
    time_updated REAL NOT NULL,
    marker TEXT
);
"""


def apply(db):
    run_script(db, STATEMENTS)
