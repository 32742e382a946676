"""Schema migrations of sysadmd's database (``<state_dir>/sysadmd.sqlite``).

The mechanism is :mod:`sysadmd.runtime.db`; this package holds the steps.  ``PRAGMA
user_version`` is the number of the last step applied; the daemon applies the missing
ones at start (after keeping a copy, ``sysadmd.sqlite.before-v<N>``), as does the
``sysadmd`` admin command when it opens the database.

How to add a migration (say you add a column to ``dispatcher_jobs``):

1. Create ``mNNNN_what_it_does.py`` here, NNNN being the next number (no gaps), with
   ``apply(db)``.  Use ``db.execute`` or :func:`sysadmd.runtime.db.run_script`, never
   ``executescript`` (it would commit the transaction all steps share).  Make the step
   idempotent: databases from before versions run every step again, and may already
   have the change: :func:`sysadmd.runtime.db.add_column` checks first; ``CREATE TABLE`` /
   ``CREATE INDEX`` take ``IF NOT EXISTS``.
2. A new table goes into :data:`SCHEMA`'s ``tables`` too.
3. Change the store's queries; never edit a released migration.
4. Extend ``tests/test_migrations.py`` (the released fixture must still upgrade).

A database whose version is higher than the number of steps here was written by a newer
release: the daemon refuses to start on it with one line saying so.
"""

from sysadmd.runtime.db import Schema

SCHEMA = Schema(
    name="sysadmd",
    application_id=0x53594144,  # "SYAD"
    package=__name__,
    tables=frozenset({"dispatcher_jobs", "logs", "registered_keys", "auth_failures", "blacklist", "bridge_links", "jobs",
                     "fleet_accepted", "supervisor_programs"}),
)
