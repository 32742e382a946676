"""Issue 7 item 10: rights follow group changes; tokens have an absolute lifetime;
event subscriptions end with the login.

Clock-driven Server units with an injected group lookup, then one daemon with real PAM
and a temporary account (root only) whose groups change under a live login.
"""

import pytest
import os
import secrets
import shutil
import subprocess

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from sysadmd.api import require_full_access
from sysadmd.auth.tokens import TokenStore
from sysadmd.wire.envelope import encode
from sysadmd.session import Identity
from tests.support import make_config, open_client, short_tempdir, start_daemon
from tests.test_sec_login import HeldPasswords, ServerUnit, replies


def call_text(namespace, name, request_id, args=None):
    return encode({"namespace": namespace, "name": name, "id": request_id, "args": {} if args is None else args})


class RightsFollowGroups(ServerUnit):
    def setUp(self):
        self.groups = {"alice": True}
        self.server = self.make_server(HeldPasswords({}), RIGHTS_CACHE_SECONDS=5)
        self.server.rights.for_user = lambda user: self.groups.get(user)
        self.server.api.add("test", "root_only", lambda s, r: require_full_access(s, "the test action") and "done")
        self.alice, self.channel = self.session(self.server)
        self.token, _ = self.server.login_succeeded(self.alice, Identity("alice", True, "password"))
        self.server.events.subscribe(self.alice, "dispatcher")

    def privileged(self, request_id):
        self.server.api.handle_text(self.alice, call_text("test", "root_only", request_id))
        return replies(self.channel)[-1]

    def test_losing_the_full_access_group_means_403_within_the_cache_time(self):
        self.assertEqual(self.privileged("p1")["args"], "done")
        self.groups["alice"] = False  # moved to a limited group
        self.clock.advance(2)
        self.assertEqual(self.privileged("p2")["args"], "done")  # cached answer
        self.clock.advance(4)
        reply = self.privileged("p3")
        self.assertEqual(reply["args"]["code"], "403")
        self.assertFalse(self.server.tokens.check(self.token).full_access)
        # Logging in again with the old token keeps the new, limited rights.
        self.assertEqual(self.server.api.identity(self.alice).full_access, False)

    def test_a_user_removed_from_every_group_or_deleted_is_logged_out(self):
        self.assertEqual(self.privileged("p1")["args"], "done")
        other, other_channel = self.session(self.server, peer="198.51.100.9")
        self.server.api.handle_text(other, call_text("rpc", "auth_token", "t1", {"token": self.token}))
        self.assertEqual(replies(other_channel)[-1]["name"], "response")
        del self.groups["alice"]
        self.clock.advance(6)
        reply = self.privileged("p2")
        self.assertEqual(reply["args"]["code"], "401")
        self.assertIn("no longer has access rights", reply["args"]["detail"])
        self.assertIsNone(self.alice.identity)
        self.assertIsNone(other.identity)  # every session of that user
        self.assertIsNone(self.server.tokens.check(self.token))
        self.assertEqual(self.server.events.subscriber_count("dispatcher"), 0)
        self.assertEqual(self.alice.subscriptions, set())

    def test_auth_token_with_an_old_token_gets_the_current_rights(self):
        other, other_channel = self.session(self.server, peer="198.51.100.9")
        self.groups["alice"] = False
        self.clock.advance(6)
        self.server.api.handle_text(other, call_text("rpc", "auth_token", "t1", {"token": self.token}))
        self.assertEqual(replies(other_channel)[-1]["name"], "response")
        self.assertFalse(other.identity.full_access)
        del self.groups["alice"]
        self.clock.advance(6)
        third, third_channel = self.session(self.server, peer="198.51.100.10")
        self.server.api.handle_text(third, call_text("rpc", "auth_token", "t2", {"token": self.alice.token}))
        reply = replies(third_channel)[-1]
        self.assertEqual(reply["args"]["code"], "401")
        self.assertIn("no longer has access rights", reply["args"]["detail"])
        self.assertIsNone(third.identity)
        self.assertIsNone(other.identity)
        self.assertIsNone(self.server.tokens.check(self.token))

    def test_the_periodic_sweep_ends_subscriptions_of_a_removed_user_without_a_request(self):
        del self.groups["alice"]
        self.clock.advance(6)
        self.assertEqual(self.server.sweep_logins(), 1)
        self.assertEqual(self.server.events.subscriber_count("dispatcher"), 0)
        self.assertIsNone(self.alice.identity)

    def test_a_new_key_login_ends_subscriptions_too(self):
        from tests.support import add_key_login

        add_key_login(self.server)
        self.server.api.handle_text(self.alice, call_text("rpc", "auth_ssl", "k1", ""))
        self.assertIn("test_string", replies(self.channel)[-1]["args"])
        self.assertEqual(self.server.events.subscriber_count("dispatcher"), 0)
        self.assertIsNone(self.server.tokens.check(self.token))

    def test_auth_clear_ends_subscriptions(self):
        self.server.api.handle_text(self.alice, call_text("rpc", "auth_clear", "c1"))
        self.assertEqual(self.server.events.subscriber_count("dispatcher"), 0)
        self.assertIsNone(self.server.tokens.check(self.token))


class TokenLifetime(ServerUnit):
    def test_a_token_used_all_the_time_still_ends_at_its_absolute_lifetime(self):
        clock = Clock()
        store = TokenStore(clock, ttl=900, max_lifetime=3600)
        token = store.issue(Identity("alice", True, "password"))
        for _ in range(35):
            clock.advance(100)
            self.assertIsNotNone(store.check(token))
        clock.advance(100)  # 3600 s after issue
        self.assertIsNone(store.check(token))
        unlimited = TokenStore(clock, ttl=900, max_lifetime=0)
        token = unlimited.issue(Identity("alice", True, "password"))
        for _ in range(100):
            clock.advance(800)
            self.assertIsNotNone(unlimited.check(token))

    def test_expiry_ends_subscriptions_through_the_sweep_and_the_next_request(self):
        server = self.make_server(HeldPasswords({}), TOKEN_TTL=60, TOKEN_MAX_LIFETIME=100)
        server.rights.for_user = lambda user: True
        idle, _ = self.session(server)
        server.login_succeeded(idle, Identity("alice", True, "password"))
        server.events.subscribe(idle, "dispatcher")
        busy, busy_channel = self.session(server)
        server.login_succeeded(busy, Identity("alice", True, "password"))
        server.events.subscribe(busy, "system-state")
        server.startService()
        self.addCleanup(lambda: server._sweep.stop() if server._sweep.running else None)
        for i in range(3):
            self.clock.advance(30)  # the busy session keeps its sliding TTL alive
            server.api.handle_text(busy, call_text("rpc", "query", f"q{i}"))
            self.assertEqual(replies(busy_channel)[-1]["name"], "response")
        # The idle one's token (TTL 60) lapsed at 60 s; the sweep ended its subscription.
        self.assertIsNone(idle.identity)
        self.assertEqual(server.events.subscriber_count("dispatcher"), 0)
        self.clock.advance(15)  # 105 s: past the absolute lifetime of the busy one too
        server.api.handle_text(busy, call_text("rpc", "query", "q9"))
        self.assertEqual(replies(busy_channel)[-1]["args"]["code"], "401")
        self.assertEqual(server.events.subscriber_count("system-state"), 0)


def _run(*argv, stdin=None, check=True):
    subprocess.run(argv, input=stdin, check=check, capture_output=True, text=True, timeout=30)


@pytest.mark.slow  # real daemons or child processes
class RealGroupChanges(unittest.TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        tools = ("useradd", "userdel", "groupadd", "groupdel", "chpasswd", "gpasswd")
        if os.geteuid() != 0 or not all(shutil.which(t) for t in tools):
            raise unittest.SkipTest("needs root and the shadow tools to create a temporary account")
        suffix = secrets.token_hex(3)
        self.full, self.limited = f"sdrf{suffix}", f"sdrl{suffix}"
        self.user, self.password = f"sdru{suffix}", secrets.token_urlsafe(12)
        for group in (self.full, self.limited):
            _run("groupadd", group)
            self.addCleanup(_run, "groupdel", group, check=False)
        _run("useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "--groups",
             f"{self.full},{self.limited}", self.user)
        self.addCleanup(_run, "userdel", self.user, check=False)
        _run("chpasswd", stdin=f"{self.user}:{self.password}\n")
        cfg = make_config(short_tempdir(self), FULL_ACCESS_GROUPS=self.full, LIMITED_ACCESS_GROUPS=self.limited,
                          RIGHTS_CACHE_SECONDS=0)
        self.running = yield start_daemon(self, cfg)  # the real PAM checker and group lookups

    @defer.inlineCallbacks
    def test_group_removal_and_deletion_end_the_rights_of_a_live_login(self):
        client = yield open_client(self, self.running)
        reply = yield client.call("rpc", "auth", {"username": self.user, "password": self.password})
        self.assertEqual(reply["name"], "response", reply)
        token = reply["args"][0]
        reply = yield client.call("events", "subscribe", ["dispatcher"])
        self.assertEqual(reply["name"], "response", reply)
        query = yield client.call("rpc", "query", {})
        self.assertEqual(set(query["args"].values()), {"read/write"})

        _run("gpasswd", "--delete", self.user, self.full)
        query = yield client.call("rpc", "query", {})
        self.assertIn("read", set(query["args"].values()))  # limited now
        run = yield client.call("rpc", "dispatcher", {"action": "run", "probe": ["true"]})
        self.assertEqual(run["name"], "error")
        self.assertEqual(run["args"]["code"], "403", run)

        _run("userdel", self.user)
        query = yield client.call("rpc", "query", {})
        self.assertEqual(query["args"]["code"], "401")
        self.assertIn("no longer has access rights", query["args"]["detail"])
        self.assertEqual(self.running.server.events.subscriber_count("dispatcher"), 0)
        other = yield open_client(self, self.running)
        again = yield other.call("rpc", "auth_token", {"token": token})
        self.assertEqual(again["args"]["code"], "401")
