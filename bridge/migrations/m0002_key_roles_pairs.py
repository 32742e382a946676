"""Bridge keys: role ``unbound`` replaces ``any`` (a key without a role is bound by its
first login; ``both`` is now said explicitly), and ``pairs`` lists the further checksums
a client key may be paired on."""

from sysadmd.runtime.db import add_column, run_script

TABLE = """
CREATE TABLE bridge_keys_new (
    nickname TEXT PRIMARY KEY,
    pem TEXT NOT NULL,
    stored TEXT NOT NULL,
    md5 TEXT NOT NULL,
    role TEXT NOT NULL DEFAULT 'unbound',
    registered REAL NOT NULL,
    pairs TEXT NOT NULL DEFAULT ''
);
INSERT INTO bridge_keys_new (nickname, pem, stored, md5, role, registered, pairs)
    SELECT nickname, pem, stored, md5, role, registered, pairs FROM bridge_keys;
DROP TABLE bridge_keys;
ALTER TABLE bridge_keys_new RENAME TO bridge_keys;
"""


def apply(db):
    add_column(db, "bridge_keys", "pairs", "TEXT NOT NULL DEFAULT ''")
    default = {r[1]: r[4] for r in db.execute("PRAGMA table_info(bridge_keys)")}["role"]
    if default != "'unbound'":  # SQLite changes a column's default only by rebuilding the table
        run_script(db, TABLE)
    db.execute("UPDATE bridge_keys SET role = 'unbound' WHERE role = 'any'")
