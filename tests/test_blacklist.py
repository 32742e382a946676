"""Failed-login counting and address blocking: Clock-driven rules, then one real wss block."""

import io

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from sysadmd import migrations
from sysadmd.admin.main import main as admin_main
from sysadmd.runtime.blacklist import Blacklist
from sysadmd.runtime.db import open_database
from tests.support import FakePasswords, make_config, open_client, short_tempdir, start_daemon

ADDRESS = "203.0.113.5"


class BlacklistRules(unittest.TestCase):
    def setUp(self):
        self.path = short_tempdir(self) + "/bl.sqlite"
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.blocked = []
        self.blacklist = self.open()

    def open(self, **kwargs):
        db = open_database(self.path)
        self.addCleanup(db.close)
        options = dict(limit=3, reset_minutes=10, block_minutes=60, exempt_loopback=True, on_block=self.blocked.append,
                       schema=migrations.SCHEMA)
        options.update(kwargs)
        return Blacklist(db, self.clock, **options)

    def fail(self, times, address=ADDRESS, gap=1.0, blacklist=None):
        results = []
        for _ in range(times):
            results.append((blacklist or self.blacklist).failure(address))
            self.clock.advance(gap)
        return results

    def test_block_at_the_limit(self):
        self.assertEqual(self.fail(3), [False, False, True])
        self.assertEqual(self.blocked, [ADDRESS])
        left = self.blacklist.blocked_for(ADDRESS)
        self.assertAlmostEqual(left, 3600 - 1, delta=0.01)

    def test_quiet_period_restarts_the_count(self):
        self.fail(2)
        self.clock.advance(10 * 60 + 1)
        self.assertEqual(self.fail(2), [False, False])
        self.assertEqual(self.blacklist.blocked_for(ADDRESS), 0.0)
        self.assertTrue(self.blacklist.failure(ADDRESS))

    def test_success_clears_the_count(self):
        self.fail(2)
        self.blacklist.success(ADDRESS)
        self.assertEqual(self.fail(2), [False, False])
        self.assertEqual(self.blacklist.blocked_for(ADDRESS), 0.0)

    def test_block_expires(self):
        self.fail(3)
        self.clock.advance(3600 - 5)
        self.assertGreater(self.blacklist.blocked_for(ADDRESS), 0)
        self.clock.advance(10)
        self.assertEqual(self.blacklist.blocked_for(ADDRESS), 0.0)
        self.assertEqual(self.blacklist.entries(), [])
        # After expiry the count starts from scratch.
        self.assertEqual(self.fail(2), [False, False])

    def test_other_addresses_are_unaffected(self):
        self.fail(3)
        self.assertEqual(self.blacklist.blocked_for("203.0.113.6"), 0.0)

    def test_loopback_is_exempt_unless_configured(self):
        for address in ("127.0.0.1", "::1", "::ffff:127.0.0.1", "127.0.0.2"):
            self.assertEqual(self.fail(5, address), [False] * 5, address)
            self.assertEqual(self.blacklist.blocked_for(address), 0.0)
        strict = self.open(exempt_loopback=False)
        self.assertEqual(self.fail(3, "127.0.0.1", blacklist=strict), [False, False, True])
        self.assertGreater(strict.blocked_for("127.0.0.1"), 0)

    def test_ipv4_mapped_addresses_share_an_entry(self):
        self.fail(2, "::ffff:203.0.113.5")
        self.assertTrue(self.blacklist.failure(ADDRESS))
        self.assertGreater(self.blacklist.blocked_for("::ffff:203.0.113.5"), 0)

    def test_blocks_persist_across_a_reopened_database(self):
        self.fail(3)
        reopened = self.open()
        self.assertGreater(reopened.blocked_for(ADDRESS), 3500)
        self.assertEqual([e[0] for e in reopened.entries()], [ADDRESS])

    def test_counts_persist_across_a_reopened_database(self):
        self.fail(2)
        reopened = self.open()
        self.assertTrue(reopened.failure(ADDRESS))

    def test_unblock(self):
        self.fail(3)
        self.assertTrue(self.blacklist.unblock(ADDRESS))
        self.assertFalse(self.blacklist.unblock(ADDRESS))
        self.assertEqual(self.blacklist.blocked_for(ADDRESS), 0.0)


class BlockedOverWss(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def setUp(self):
        cfg = make_config(short_tempdir(self), BLACKLIST_EXEMPT_LOOPBACK="false", BLACKLIST_AUTH_FAIL_LIMIT=2)
        self.running = yield start_daemon(self, cfg, passwords=FakePasswords({"root": "pw"}))

    @defer.inlineCallbacks
    def test_repeated_failures_close_new_connections_until_unblocked(self):
        client = yield open_client(self, self.running)
        for _ in range(2):
            reply = yield client.call("rpc", "auth", {"username": "root", "password": "wrong"})
            self.assertEqual(reply["args"]["code"], "401")
        # The blocking failure's connection is closed right after its reply (upstream
        # kept it open for more guesses); new ones are refused.
        code, reason = yield client.closed
        self.assertEqual(code, 1008)
        self.assertIn("blocked after repeated failed logins", reason)

        refused = yield self.running.connect()
        code, reason = yield refused.closed
        self.assertEqual(code, 1008)
        self.assertIn("blocked after repeated failed logins", reason)

        # The admin command lifts the block through its own database connection.
        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(admin_main(["--state-dir", self.running.config.state_dir, "list_blocked"], out, err), 0)
        self.assertIn("127.0.0.1", out.getvalue())
        self.assertEqual(admin_main(["--state-dir", self.running.config.state_dir, "unblock", "127.0.0.1"], out, err), 0, err.getvalue())
        welcome = yield open_client(self, self.running)
        reply = yield welcome.call("rpc", "auth", {"username": "root", "password": "pw"})
        self.assertEqual(reply["name"], "response")
