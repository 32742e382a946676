"""The SQLite databases in the state directory, and their schema versions.

One connection per process, used on the reactor thread for small, fast statements (WAL
mode, so the admin commands can write while a daemon runs).

Each database has one schema, described by a :class:`Schema`: sysadmd's
(``sysadmd.sqlite``, :data:`sysadmd.migrations.SCHEMA`) and the bridge's
(``bridge.sqlite``, :data:`bridge.migrations.SCHEMA`).  A schema is a list of numbered
migrations, modules ``m0001_initial.py``, ``m0002_….py`` … in one package, each with an
``apply(db)`` function.  The database's ``PRAGMA user_version`` is the number of the last
migration applied, ``PRAGMA application_id`` says which schema it is.

:func:`migrate` brings a database up to date: it keeps a copy of the file first
(``<db>.before-v<N>``, N being the version it upgrades to; the newest
:data:`KEEP_COPIES` such copies are kept), then applies the missing migrations in order,
all in one transaction, and refuses with :class:`SchemaError` a database written by a
newer release.  The daemons migrate when they open their database at start, the admin
commands when they open it; a store only calls :func:`ensure` (a no-op on an up-to-date
database) so that it also works on a connection opened without a schema.

A database from before schema versions (``user_version`` 0 with tables: every install
of the first release) is adopted: its migrations all run again, which is why each one
must be idempotent (``CREATE … IF NOT EXISTS``, :func:`add_column`).
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import re
import sqlite3
from dataclasses import dataclass
from types import ModuleType
from typing import Dict, FrozenSet, List, Optional, Tuple

from twisted.logger import Logger

log = Logger()

KEEP_COPIES = 3  # copies <db>.before-v<N> kept per database (the newest)

_MIGRATION_NAME = re.compile(r"^m(\d{4})_[a-z0-9_]+$")
_KNOWN: Dict[int, str] = {}  # application_id -> schema name, for messages
_STEPS: Dict[str, List[Tuple[int, ModuleType]]] = {}  # package -> its migrations, found once


class SchemaError(Exception):
    """A database cannot be used by this release; ``str()`` is one line saying why."""


@dataclass(frozen=True)
class Schema:
    """One database's schema: its *name* (for messages), the ``application_id`` stamped
    on its file, the package holding its migration modules, and every table any of its
    versions ever had (a database of another kind is recognised by tables outside it)."""

    name: str
    application_id: int
    package: str
    tables: FrozenSet[str]

    def __post_init__(self) -> None:
        _KNOWN[self.application_id] = self.name

    def migrations(self) -> List[Tuple[int, ModuleType]]:
        """``(number, module)`` for every migration, in order; numbered 1, 2, 3 … without gaps."""
        if self.package not in _STEPS:
            _STEPS[self.package] = self._find()
        return _STEPS[self.package]

    def _find(self) -> List[Tuple[int, ModuleType]]:
        package = importlib.import_module(self.package)
        found: List[Tuple[int, str]] = []
        for info in pkgutil.iter_modules(package.__path__):
            match = _MIGRATION_NAME.match(info.name)
            if match:
                found.append((int(match.group(1)), info.name))
        found.sort()
        numbers = [n for n, _ in found]
        if numbers != list(range(1, len(found) + 1)):
            raise SchemaError(f"{self.package}: migrations must be numbered 1, 2, 3 … without gaps or repeats, "
                              f"found {numbers}")
        modules = []
        for number, name in found:
            module = importlib.import_module(f"{self.package}.{name}")
            if not callable(getattr(module, "apply", None)):
                raise SchemaError(f"{self.package}.{name}: a migration module needs an apply(db) function")
            modules.append((number, module))
        return modules

    @property
    def latest(self) -> int:
        return len(self.migrations())


def open_database(path: str, schema: Optional[Schema] = None) -> sqlite3.Connection:
    """A connection to the SQLite file *path* (created 0600 if missing), migrated to
    *schema*'s latest version when one is given (:func:`migrate`)."""
    existed = os.path.exists(path)
    if not existed:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        os.close(fd)
    conn = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=5000")
    conn.execute("PRAGMA foreign_keys=ON")
    if schema is not None:
        try:
            migrate(conn, schema)
        except BaseException:
            conn.close()
            raise
    return conn


def _ids(conn: sqlite3.Connection) -> Tuple[int, int]:
    return (conn.execute("PRAGMA application_id").fetchone()[0], conn.execute("PRAGMA user_version").fetchone()[0])


def _file_of(conn: sqlite3.Connection) -> str:
    """The main database's file name ('' for an in-memory or temporary database)."""
    for row in conn.execute("PRAGMA database_list"):
        if row[1] == "main":
            return row[2] or ""
    return ""


def tables(conn: sqlite3.Connection) -> FrozenSet[str]:
    """The database's own tables (SQLite's internal ``sqlite_*`` ones left out)."""
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite%'")
    return frozenset(r[0] for r in rows)


def columns(conn: sqlite3.Connection, table: str) -> FrozenSet[str]:
    return frozenset(r[1] for r in conn.execute(f"PRAGMA table_info({table})"))


def add_column(conn: sqlite3.Connection, table: str, name: str, declaration: str) -> bool:
    """``ALTER TABLE … ADD COLUMN`` unless the column is there already; whether it was added."""
    if name in columns(conn, table):
        return False
    conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {declaration}")
    return True


def run_script(conn: sqlite3.Connection, script: str) -> None:
    """Each statement of *script* in the current transaction (``executescript`` would
    commit it first)."""
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            conn.execute(statement)
            statement = ""
    if statement.strip():
        raise ValueError(f"incomplete SQL statement: {statement.strip()[:80]!r}")


def ensure(conn: sqlite3.Connection, schema: Schema, *, shared: bool = False) -> None:
    """Make sure *conn*'s database is at *schema*'s latest version (migrating it if not).

    *shared*: the caller's tables exist in several schemas (the blacklist): a database
    already stamped with another schema is left as it is (its opener migrated it)."""
    app, version = _ids(conn)
    if app == schema.application_id and version == len(schema.migrations()):
        return
    if shared and app != 0 and app != schema.application_id:
        return
    migrate(conn, schema)


def migrate(conn: sqlite3.Connection, schema: Schema, keep: int = KEEP_COPIES) -> int:
    """Apply *schema*'s missing migrations to *conn*'s database; how many ran.

    A copy of the file is kept first (unless the database is new or in memory).  All
    migrations run in one write transaction, so another process opening the same file
    at the same moment waits, then finds the work done.  Raises :class:`SchemaError` for
    a database of another kind, of a newer release, or a migration that fails (the
    database is then left as it was)."""
    steps = schema.migrations()
    latest = len(steps)
    path = _file_of(conn)
    where = path or "(in memory)"
    if _pending(conn, schema, latest, where) is None:
        return 0
    # The copy is read outside the write transaction (SQLite's backup API waits for it
    # otherwise); a process that migrates in between only makes the copy one version old.
    copy = _keep_copy(conn, path, latest, keep) if path and tables(conn) else None
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = _pending(conn, schema, latest, where)
        if version is None:
            conn.execute("ROLLBACK")
            return 0
        for number, module in steps[version:]:
            try:
                module.apply(conn)
            except sqlite3.Error as e:
                raise SchemaError(f"database {where}: migration {number} ({module.__name__.rsplit('.', 1)[-1]}) "
                                  f"failed: {e}; the database is left at version {version}") from None
        conn.execute(f"PRAGMA application_id = {schema.application_id}")
        conn.execute(f"PRAGMA user_version = {latest}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    if copy is not None:
        adopted = " (a database from before schema versions)" if version == 0 else ""
        log.info("database {path}: schema upgraded from version {old}{adopted} to {new}; copy kept at {copy}",
                 path=where, old=version, adopted=adopted, new=latest, copy=copy)
    return latest - version


def _pending(conn: sqlite3.Connection, schema: Schema, latest: int, where: str) -> Optional[int]:
    """The database's version if migrations are missing, ``None`` if it is up to date;
    :class:`SchemaError` if this code cannot use it."""
    app, version = _ids(conn)
    if app not in (0, schema.application_id):
        other = _KNOWN.get(app, f"application id {app:#x}")
        raise SchemaError(f"database {where} belongs to {other}, not to {schema.name}")
    if version > latest:
        copy = f"{where}.before-v{version}"
        hint = f", or restore {copy} (the copy kept before that upgrade)" if os.path.exists(copy) else ""
        raise SchemaError(f"database {where} has schema version {version}, newer than this {schema.name} "
                          f"knows (up to {latest}): it was upgraded by a newer release; run that release{hint}")
    if app == 0:
        strange = sorted(tables(conn) - schema.tables)
        if strange:
            raise SchemaError(f"database {where} has tables {', '.join(strange)} that no {schema.name} "
                              f"version has: it is not a {schema.name} database")
    if version == latest and app == schema.application_id:
        return None
    return version


def _keep_copy(conn: sqlite3.Connection, path: str, version: int, keep: int) -> str:
    """Write a consistent copy of the database to ``<path>.before-v<version>`` (mode 0600)
    and delete all but the newest *keep* such copies; the copy's name."""
    copy = f"{path}.before-v{version}"
    for stale in (copy, copy + "-journal"):
        try:
            os.unlink(stale)
        except FileNotFoundError:
            pass
    fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    target = sqlite3.connect(copy)
    try:
        conn.backup(target)
    finally:
        target.close()
    _prune_copies(path, keep)
    return copy


def copies(path: str) -> List[str]:
    """The kept copies of the database *path*, oldest version first."""
    folder, base = os.path.split(path)
    pattern = re.compile(re.escape(base) + r"\.before-v(\d+)$")
    found = []
    for name in os.listdir(folder or "."):
        match = pattern.match(name)
        if match:
            found.append((int(match.group(1)), os.path.join(folder, name)))
    return [p for _, p in sorted(found)]


def _prune_copies(path: str, keep: int) -> None:
    for old in copies(path)[:-keep] if keep > 0 else copies(path):
        try:
            os.unlink(old)
        except OSError as e:
            log.warn("cannot delete the old database copy {path}: {error}", path=old, error=e)


def schema_version(conn: sqlite3.Connection) -> int:
    return _ids(conn)[1]


def data_version(conn: sqlite3.Connection) -> int:
    """Changes whenever *another* connection commits (used to notice CLI edits)."""
    return conn.execute("PRAGMA data_version").fetchone()[0]


def database_path(state_dir: str) -> str:
    return os.path.join(state_dir, "sysadmd.sqlite")
