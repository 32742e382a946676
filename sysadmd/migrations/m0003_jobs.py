"""One job table for all long-running work (``jobs``), with the dispatcher's jobs in it.

A dispatcher job's ``dispatcher_jobs.seq`` is its ``jobs.id`` (new rows get their seq
from ``jobs``); rows of older releases are copied here with ``id = seq``, their state,
outcome and owner worked out from what the row recorded (``origin`` is ``user@address``;
how that user logged in was not recorded, so ``owner_via`` stays NULL).
"""

import json
import os

from sysadmd.runtime.db import run_script

STATEMENTS = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    method TEXT NOT NULL,
    arguments TEXT NOT NULL DEFAULT '[]',
    state TEXT NOT NULL,
    outcome TEXT,
    owner_user TEXT NOT NULL DEFAULT '',
    owner_via TEXT,
    owner_from TEXT NOT NULL DEFAULT '',
    queue TEXT NOT NULL DEFAULT '',
    dispatcher_id TEXT,
    commands TEXT NOT NULL DEFAULT '[]',
    return_codes TEXT NOT NULL DEFAULT '[]',
    progress_percent REAL,
    progress_description TEXT NOT NULL DEFAULT '',
    progress_extra TEXT,
    result TEXT,
    error TEXT,
    exception TEXT,
    exc_info TEXT,
    logs_path TEXT,
    logs_excerpt TEXT,
    time_created REAL NOT NULL,
    time_started REAL,
    time_finished REAL,
    stored_bytes INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, id);
CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs (owner_user, id);
CREATE INDEX IF NOT EXISTS jobs_by_method ON jobs (method, id);
CREATE INDEX IF NOT EXISTS jobs_by_queue ON jobs (queue, id);
CREATE INDEX IF NOT EXISTS jobs_by_dispatcher_id ON jobs (dispatcher_id);
CREATE INDEX IF NOT EXISTS jobs_by_finished ON jobs (time_finished);
CREATE INDEX IF NOT EXISTS jobs_by_started ON jobs (time_started);
"""


def _outcome(row) -> tuple:
    """(state, outcome, error) of an older release's dispatcher row."""
    if row["state"] == "pending":
        return "WAITING", None, None
    if row["state"] == "running":
        return "RUNNING", None, None
    if row["killed"]:
        return "ABORTED", "killed", "killed on request"
    if row["interrupted"]:
        return "ABORTED", "interrupted", "interrupted: the daemon stopped while it ran"
    try:
        codes = json.loads(row["return_codes"])
        commands = json.loads(row["commands"])
    except ValueError:
        return "FAILED", "failed", "the stored job could not be read"
    if codes and all(c == 0 for c in codes) and len(codes) == len(commands):
        return "SUCCESS", "succeeded", None
    bad = next((i for i, c in enumerate(codes) if c != 0), len(codes) - 1)
    code = codes[bad] if codes else None
    return "FAILED", "failed", (f"command {bad + 1} exited with code {code}" if isinstance(code, int) and code >= 0
                                else f"command {bad + 1} ended without an exit code")


def apply(db):
    run_script(db, STATEMENTS)
    main = [r[2] for r in db.execute("PRAGMA database_list") if r[1] == "main"]
    jobs_dir = os.path.join(os.path.dirname(main[0]), "jobs") if main and main[0] else ""
    rows = db.execute("SELECT * FROM dispatcher_jobs WHERE seq NOT IN (SELECT id FROM jobs) ORDER BY seq").fetchall()
    for row in rows:
        state, outcome, error = _outcome(row)
        user, _, origin = str(row["origin"]).rpartition("@")
        log_file = row["log_file"]
        db.execute(
            "INSERT INTO jobs (id, method, arguments, state, outcome, owner_user, owner_via, owner_from, queue,"
            " dispatcher_id, commands, return_codes, error, logs_path, time_created, time_started, time_finished)"
            " VALUES (?, 'dispatcher.run', ?, ?, ?, ?, NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (row["seq"], row["commands"], state, outcome, user, origin, row["queue"], row["id"], row["commands"],
             row["return_codes"], error, os.path.join(jobs_dir, log_file) if log_file and jobs_dir else None,
             row["created"], row["started"], row["finished"]))
