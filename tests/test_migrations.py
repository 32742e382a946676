"""Schema versions and migrations (sysadmd/runtime/db.py, sysadmd/migrations/, bridge/migrations/).

The fixture ``tests/fixtures/release-1f9198b/`` was written by the first release's own
code (``tests/fixtures/make_release_1f9198b.py``); these tests start today's code on a
copy of it and find everything again.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import sys
import textwrap

from cryptography.hazmat.primitives import serialization
import pytest
from twisted.internet import defer, reactor, utils
from twisted.trial import unittest

from bridge import migrations as bridge_migrations
from bridge.keys import KeyStore as BridgeKeyStore
from bridge.keys import database_path as bridge_database_path
from bridge.service import open_blacklist
from sysadmd.runtime import crypto, db as dbmod
from sysadmd import migrations
from sysadmd.runtime.blacklist import Blacklist
from sysadmd.runtime.db import Schema, SchemaError, copies, database_path, open_database, schema_version
from tests.support import make_config, open_client, short_tempdir, start_daemon

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "release-1f9198b")
TWISTD = ["-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile="]

with open(os.path.join(FIXTURE, "expected.json")) as _f:
    EXPECTED = json.load(_f)


def fixture_key(name: str):
    with open(os.path.join(FIXTURE, "keys", f"{name}.pem"), "rb") as f:
        return serialization.load_pem_private_key(f.read(), None)


def copy_state(testcase, which: str) -> str:
    """A private copy of the fixture's ``sysadmd`` or ``bridge`` state directory."""
    target = os.path.join(short_tempdir(testcase, "mg"), which)
    shutil.copytree(os.path.join(FIXTURE, which), target)
    os.chmod(target, 0o700)
    return target


def columns(conn: sqlite3.Connection, table: str) -> list:
    return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]


def raw(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.row_factory = sqlite3.Row
    return conn


class ReleaseFixtureDaemon(unittest.TestCase):
    """A real daemon (today's assembly, real TLS WebSocket on loopback) on the release's state."""

    timeout = 30

    @defer.inlineCallbacks
    def setUp(self):
        self.state = copy_state(self, "sysadmd")
        self.path = database_path(self.state)
        self.running = yield start_daemon(self, make_config(self.state))

    @defer.inlineCallbacks
    def login(self, key_name: str):
        client = yield open_client(self, self.running)
        stage1 = yield client.call("rpc", "auth_ssl", "")
        answer = crypto.sign_challenge(fixture_key(key_name), stage1["args"]["test_string"])
        reply = yield client.call("rpc", "auth_ssl", {"encrypted_string": answer})
        return client, reply

    @defer.inlineCallbacks
    def test_keys_log_in_and_history_is_readable(self):
        for name in ("root-laptop", "root-desk"):
            client, reply = yield self.login(name)
            self.assertEqual(reply["name"], "response", reply)
        reply = yield client.call("rpc", "dispatcher", {"action": "history"})
        history = {entry["process_id"]: entry for entry in reply["args"]["history"]}
        self.assertEqual(sorted(history), sorted(EXPECTED["jobs"]))
        self.assertEqual(history["backup-home"]["echo one"], "one\n")
        self.assertEqual(history["backup-home"]["printf 'two\\n'"], "two\n")
        self.assertEqual(history["failing"]["sh -c 'echo oops >&2; exit 3'"], "oops\n")
        self.assertEqual(history["failing"]["return_codes/sh -c 'echo oops >&2; exit 3'"], "3")
        out = yield client.call("rpc", "dispatcher", {"action": "read_output", "job_id": "backup-home", "command": 1})
        self.assertEqual((out["args"]["data"], out["args"]["size"], out["args"]["finished"]), ("two\n", 4, True))

    def test_keys_blacklist_links_and_logs_are_all_there(self):
        server = self.running.server
        keys = self.running.daemon.keys
        self.assertEqual(sorted(k.nickname for k in keys.list("root")), EXPECTED["keys"]["root"])
        for address in EXPECTED["blocked"]:
            self.assertGreater(server.blacklist.blocked_for(address), 0, address)
        for address in EXPECTED["not_blocked"]:
            self.assertEqual(server.blacklist.blocked_for(address), 0, address)
        links = {row.nickname: row for row in self.running.daemon.bridge_links.store.list()}
        self.assertEqual({n: r.url for n, r in links.items()}, EXPECTED["links"])
        self.assertEqual(links["office"].fingerprint, "AB:" * 31 + "CD")
        hostinfo = [entry for _, _, entry in server.logs.read(["hostinfo"], 0, 1e12)]
        for entry in EXPECTED["logs"]["hostinfo"]:
            self.assertIn(entry, hostinfo)
        self.assertEqual(schema_version(server.db), migrations.SCHEMA.latest)
        self.assertEqual(columns(server.db, "dispatcher_jobs")[-3:], ["marker", "cut", "gaps"])

    def test_a_copy_of_the_release_database_was_kept_before_migrating(self):
        [copy] = copies(self.path)
        self.assertEqual(copy, f"{self.path}.before-v{migrations.SCHEMA.latest}")
        self.assertEqual(os.stat(copy).st_mode & 0o777, 0o600)
        # Contents compared, not bytes: the copy is written through SQLite's backup API.
        old = raw(copy)
        self.addCleanup(old.close)
        self.assertEqual(old.execute("PRAGMA user_version").fetchone()[0], 0)
        self.assertNotIn("marker", columns(old, "dispatcher_jobs"))
        fixture = raw(os.path.join(FIXTURE, "sysadmd", "sysadmd.sqlite"))
        self.addCleanup(fixture.close)
        for table in ("registered_keys", "dispatcher_jobs", "logs", "blacklist", "auth_failures", "bridge_links"):
            self.assertEqual([tuple(r) for r in old.execute(f"SELECT * FROM {table} ORDER BY rowid")],
                             [tuple(r) for r in fixture.execute(f"SELECT * FROM {table} ORDER BY rowid")], table)


class ReleaseFixtureBridge(unittest.TestCase):
    """The bridge's database of the release, opened by today's bridge."""

    def open(self, state: str) -> sqlite3.Connection:
        conn = open_database(bridge_database_path(state), bridge_migrations.SCHEMA)
        self.addCleanup(conn.close)
        return conn

    def test_keys_keep_their_roles_and_legacy_any_reads_as_unbound(self):
        state = copy_state(self, "bridge")
        conn = self.open(state)
        keys = {k.nickname: k for k in BridgeKeyStore(conn).all()}
        legacy = {"any": "unbound"}
        self.assertEqual({n: k.role for n, k in keys.items()},
                         {n: legacy.get(r, r) for n, r in EXPECTED["bridge_keys"].items()})
        self.assertEqual([row[0] for row in conn.execute("SELECT role FROM bridge_keys ORDER BY nickname")],
                         ["client", "unbound", "server"])  # stored as today's code writes it
        self.assertTrue(all(k.pairs == () for k in keys.values()))
        default = {r[1]: r[4] for r in conn.execute("PRAGMA table_info(bridge_keys)")}["role"]
        self.assertEqual(default, "'unbound'")
        # The keys still sign in: the legacy key verifies, and binds on its first login.
        store = BridgeKeyStore(conn)
        signature = crypto.sign_challenge(fixture_key("bridge-legacy"), "challenge-1")
        found = store.verify("challenge-1", signature)
        self.assertEqual(found.nickname, "legacy")
        self.assertEqual(store.bind_role(found, "server").role, "server")
        cfg = type("Cfg", (), dict(blacklist_auth_fail_limit=2, blacklist_auth_fail_reset_minutes=10,
                                   blacklist_block_minutes=10, blacklist_exempt_loopback=True))
        blacklist = open_blacklist(conn, reactor, cfg)
        for address in EXPECTED["bridge_blocked"]:
            self.assertGreater(blacklist.blocked_for(address), 0)
        self.assertEqual(len(copies(bridge_database_path(state))), 1)

    def test_a_database_partly_upgraded_by_the_ad_hoc_code_is_adopted(self):
        """The code before versions added ``pairs`` and renamed roles by itself."""
        state = copy_state(self, "bridge")
        conn = raw(bridge_database_path(state))
        conn.execute("ALTER TABLE bridge_keys ADD COLUMN pairs TEXT NOT NULL DEFAULT ''")
        conn.execute("UPDATE bridge_keys SET role = 'unbound', pairs = 'abc' WHERE role = 'any'")
        conn.close()
        conn = self.open(state)
        self.assertEqual(columns(conn, "bridge_keys").count("pairs"), 1)
        keys = {k.nickname: k for k in BridgeKeyStore(conn).all()}
        self.assertEqual((keys["legacy"].role, keys["legacy"].pairs), ("unbound", ("abc",)))
        self.assertEqual(schema_version(conn), bridge_migrations.SCHEMA.latest)


class DaemonDatabaseUpgrades(unittest.TestCase):
    def test_a_database_partly_upgraded_by_the_ad_hoc_code_is_adopted(self):
        state = copy_state(self, "sysadmd")
        conn = raw(database_path(state))
        conn.execute("ALTER TABLE dispatcher_jobs ADD COLUMN marker TEXT NOT NULL DEFAULT ''")
        conn.execute("ALTER TABLE dispatcher_jobs ADD COLUMN cut INTEGER NOT NULL DEFAULT 0")
        conn.execute("UPDATE dispatcher_jobs SET marker = 'm-1' WHERE id = 'failing'")
        conn.close()
        conn = open_database(database_path(state), migrations.SCHEMA)
        self.addCleanup(conn.close)
        self.assertEqual(columns(conn, "dispatcher_jobs")[-3:], ["marker", "cut", "gaps"])
        self.assertEqual(conn.execute("SELECT marker FROM dispatcher_jobs WHERE id = 'failing'").fetchone()[0], "m-1")
        self.assertEqual(schema_version(conn), migrations.SCHEMA.latest)

    def test_migrating_twice_changes_nothing(self):
        state = copy_state(self, "sysadmd")
        path = database_path(state)
        open_database(path, migrations.SCHEMA).close()
        files = lambda: sorted(n for n in os.listdir(state) if not n.endswith(("-wal", "-shm")))  # noqa: E731
        first = files()
        conn = open_database(path, migrations.SCHEMA)
        self.addCleanup(conn.close)
        before = conn.execute("PRAGMA data_version").fetchone()[0]
        self.assertEqual(dbmod.migrate(conn, migrations.SCHEMA), 0)
        other = open_database(path)
        self.addCleanup(other.close)
        self.assertEqual(dbmod.migrate(other, migrations.SCHEMA), 0)
        self.assertEqual(conn.execute("PRAGMA data_version").fetchone()[0], before)  # nobody committed
        self.assertEqual(files(), first)  # no second copy
        self.assertEqual(len(copies(path)), 1)

    def test_a_new_database_gets_the_latest_schema_and_no_copy(self):
        state = short_tempdir(self)
        conn = open_database(database_path(state), migrations.SCHEMA)
        self.addCleanup(conn.close)
        self.assertEqual(schema_version(conn), migrations.SCHEMA.latest)
        self.assertEqual(conn.execute("PRAGMA application_id").fetchone()[0], migrations.SCHEMA.application_id)
        self.assertEqual(copies(database_path(state)), [])

    def test_a_store_on_an_unmigrated_connection_migrates_it(self):
        """Stores call ensure(): a connection opened without a schema still works."""
        state = copy_state(self, "sysadmd")
        conn = open_database(database_path(state))
        self.addCleanup(conn.close)
        blacklist = Blacklist(conn, reactor, limit=3, reset_minutes=1, block_minutes=1, schema=migrations.SCHEMA)
        self.assertGreater(blacklist.blocked_for(EXPECTED["blocked"][0]), 0)
        self.assertEqual(schema_version(conn), migrations.SCHEMA.latest)
        self.assertEqual(len(copies(database_path(state))), 1)

    def test_a_newer_database_is_refused_with_one_line(self):
        state = short_tempdir(self)
        path = database_path(state)
        open_database(path, migrations.SCHEMA).close()
        conn = raw(path)
        conn.execute(f"PRAGMA user_version = {migrations.SCHEMA.latest + 1}")
        conn.close()
        with self.assertRaises(SchemaError) as caught:
            open_database(path, migrations.SCHEMA)
        message = str(caught.exception)
        self.assertNotIn("\n", message)
        self.assertIn(f"schema version {migrations.SCHEMA.latest + 1}, newer than this sysadmd knows "
                      f"(up to {migrations.SCHEMA.latest})", message)
        self.assertIn(path, message)
        # The stores refuse it too, and nothing was changed.
        with self.assertRaises(SchemaError):
            Blacklist(open_database(path), reactor, limit=3, reset_minutes=1, block_minutes=1, schema=migrations.SCHEMA)
        self.assertEqual(schema_version(raw(path)), migrations.SCHEMA.latest + 1)

    def test_a_database_of_the_other_kind_is_refused(self):
        state = copy_state(self, "bridge")
        with self.assertRaises(SchemaError) as caught:  # the release's bridge database: no version yet
            open_database(bridge_database_path(state), migrations.SCHEMA)
        self.assertIn("has tables bridge_keys that no sysadmd version has", str(caught.exception))
        open_database(bridge_database_path(state), bridge_migrations.SCHEMA).close()
        with self.assertRaises(SchemaError) as caught:
            open_database(bridge_database_path(state), migrations.SCHEMA)
        self.assertIn("belongs to sysadm-bridge, not to sysadmd", str(caught.exception))


class MigrationMechanism(unittest.TestCase):
    """The mechanism on a schema of its own: copies kept, order, failure, numbering."""

    def make_schema(self, steps: dict, name: str = "demo") -> Schema:
        folder = short_tempdir(self, "pk")
        package = f"migdemo_{abs(hash((folder, name)))}"
        os.makedirs(os.path.join(folder, package))
        with open(os.path.join(folder, package, "__init__.py"), "w") as f:
            f.write("")
        for module, body in steps.items():
            with open(os.path.join(folder, package, f"{module}.py"), "w") as f:
                f.write(textwrap.dedent(body))
        sys.path.insert(0, folder)
        self.addCleanup(sys.path.remove, folder)
        return Schema(name, 0x7E570001, package, frozenset({"t"}))

    STEPS = {
        "m0001_initial": "def apply(db):\n    db.execute('CREATE TABLE IF NOT EXISTS t (a INTEGER)')\n",
        "m0002_b": "from sysadmd.runtime.db import add_column\ndef apply(db):\n    add_column(db, 't', 'b', 'INTEGER')\n",
        "m0003_c": "from sysadmd.runtime.db import add_column\ndef apply(db):\n    add_column(db, 't', 'c', 'TEXT')\n",
    }

    def test_only_the_newest_copies_are_kept(self):
        path = os.path.join(short_tempdir(self), "demo.sqlite")
        steps = dict(self.STEPS)
        conn = open_database(path, self.make_schema({"m0001_initial": steps["m0001_initial"]}, "v1"))
        conn.execute("INSERT INTO t (a) VALUES (1)")
        conn.close()
        for stale in (f"{path}.before-v0", f"{path}.before-v-old"):
            with open(stale, "w") as f:
                f.write("not a copy of ours: v0 would be pruned, the other name is left alone")
        conn = open_database(path, self.make_schema({k: steps[k] for k in list(steps)[:2]}, "v2"))
        conn.close()
        conn = open_database(path, self.make_schema(steps, "v3"))
        self.addCleanup(conn.close)
        self.assertEqual(columns(conn, "t"), ["a", "b", "c"])
        self.assertEqual([os.path.basename(p) for p in copies(path)],
                         ["demo.sqlite.before-v0", "demo.sqlite.before-v2", "demo.sqlite.before-v3"])
        copy = raw(f"{path}.before-v3")
        self.addCleanup(copy.close)
        self.assertEqual((columns(copy, "t"), copy.execute("PRAGMA user_version").fetchone()[0]), (["a", "b"], 2))
        self.assertEqual(copy.execute("SELECT a FROM t").fetchall()[0][0], 1)
        dbmod._prune_copies(path, 2)
        self.assertEqual([os.path.basename(p) for p in copies(path)],
                         ["demo.sqlite.before-v2", "demo.sqlite.before-v3"])
        self.assertTrue(os.path.exists(f"{path}.before-v-old"))

    def test_a_failing_migration_leaves_the_database_as_it_was(self):
        path = os.path.join(short_tempdir(self), "demo.sqlite")
        open_database(path, self.make_schema({"m0001_initial": self.STEPS["m0001_initial"]}, "ok")).close()
        broken = dict(self.STEPS, m0003_c="def apply(db):\n    db.execute('ALTER TABLE nowhere ADD COLUMN x')\n")
        with self.assertRaises(SchemaError) as caught:
            open_database(path, self.make_schema(broken, "broken"))
        self.assertIn("migration 3 (m0003_c) failed: no such table: nowhere; the database is left at version 1",
                      str(caught.exception))
        conn = raw(path)
        self.addCleanup(conn.close)
        self.assertEqual((columns(conn, "t"), conn.execute("PRAGMA user_version").fetchone()[0]), (["a"], 1))

    def test_numbers_must_follow_each_other(self):
        schema = self.make_schema({"m0001_initial": self.STEPS["m0001_initial"], "m0003_c": self.STEPS["m0003_c"]})
        with self.assertRaises(SchemaError) as caught:
            schema.migrations()
        self.assertIn("without gaps or repeats, found [1, 3]", str(caught.exception))

    def test_the_shipped_schemas_are_numbered_and_disjoint(self):
        for schema in (migrations.SCHEMA, bridge_migrations.SCHEMA):
            self.assertEqual([n for n, _ in schema.migrations()], list(range(1, schema.latest + 1)))
        self.assertNotEqual(migrations.SCHEMA.application_id, bridge_migrations.SCHEMA.application_id)


@pytest.mark.slow  # real daemons or child processes
class TwistdRefusesANewerDatabase(unittest.TestCase):
    """The real ``twistd`` processes: one line, exit 1, nothing served."""

    timeout = 60

    @defer.inlineCallbacks
    def run_daemon(self, program: str, state: str):
        env = dict(os.environ, PYTHONPATH=ROOT)
        args = TWISTD + [program, "--state-dir", state, "--port", "tcp:0:interface=127.0.0.1"]
        if program == "sysadmd":
            args += ["--socket", "none"]
        d = utils.getProcessOutputAndValue(sys.executable, args, env=env, path=ROOT)
        d.addTimeout(40, reactor)
        out, err, code = yield d
        return (out + err).decode(), code

    @defer.inlineCallbacks
    def test_both_daemons(self):
        for program, schema, path_of in (("sysadmd", migrations.SCHEMA, database_path),
                                         ("sysadm-bridge", bridge_migrations.SCHEMA, bridge_database_path)):
            state = short_tempdir(self, "tw")
            path = path_of(state)
            open_database(path, schema).close()
            conn = raw(path)
            conn.execute(f"PRAGMA user_version = {schema.latest + 5}")
            conn.close()
            output, code = yield self.run_daemon(program, state)
            self.assertEqual(code, 1, output)
            lines = [line for line in output.splitlines() if "cannot start" in line]
            self.assertEqual(len(lines), 1, output)
            self.assertIn(f"{program}: cannot start: database {path} has schema version {schema.latest + 5}, "
                          f"newer than this {program} knows (up to {schema.latest})", lines[0])
            self.assertNotIn("Traceback", output)
            self.assertNotIn("listening", output)


@pytest.mark.slow  # real daemons or child processes
class AdminCommandsOnANewerDatabase(unittest.TestCase):
    """``sysadmd VERB`` and ``sysadm-bridge VERB`` say it in one line and exit 1, changing nothing."""

    def newer(self, schema: Schema, path: str) -> None:
        open_database(path, schema).close()
        conn = raw(path)
        conn.execute(f"PRAGMA user_version = {schema.latest + 1}")
        conn.close()

    def test_sysadmd_admin(self):
        import io

        from sysadmd.admin.main import main

        state = short_tempdir(self)
        self.newer(migrations.SCHEMA, database_path(state))
        out, err = io.StringIO(), io.StringIO()
        code = main(["--state-dir", state, "list_keys"], out=out, err=err)
        self.assertEqual(code, 1, err.getvalue())
        [line] = err.getvalue().splitlines()
        self.assertIn(f"sysadmd list_keys: database {database_path(state)} has schema version "
                      f"{migrations.SCHEMA.latest + 1}, newer than this sysadmd knows", line)

    def test_bridge_admin(self):
        import io

        from bridge.admin import main

        state = short_tempdir(self)
        self.newer(bridge_migrations.SCHEMA, bridge_database_path(state))
        out, err = io.StringIO(), io.StringIO()
        code = main(["--state-dir", state, "list_ssl"], out=out, err=err)
        self.assertEqual(code, 1, err.getvalue())
        [line] = err.getvalue().splitlines()
        self.assertIn(f"sysadm-bridge: database {bridge_database_path(state)} has schema version "
                      f"{bridge_migrations.SCHEMA.latest + 1}, newer than this sysadm-bridge knows", line)
