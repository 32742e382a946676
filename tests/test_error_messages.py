"""Issue 8 item 13: error messages that name the real cause.

(a) a right password for a user without rights says so (after the password was checked,
never before); the log says why each login failed.  (b) a client pointed with --url at a
bridge is told it is a bridge.  (c) every admin verb a hint names exists.  (d) private keys
are refused where a public key is expected, and never stored.
"""

import base64
import os
import re

from twisted.trial import unittest

from sysadmd import crypto
from tests.test_sec_login import HeldPasswords, ServerUnit, auth_text, replies


def hostinfo(server):
    server.logs.flush()
    return [e for _, _, e in server.logs.read(["hostinfo"], 0, 2e6)]


class LoginFailureReasons(ServerUnit):
    def setUp(self):
        self.passwords = HeldPasswords({"alice": "right", "bob": "right"})
        self.server = self.make_server(self.passwords, BLACKLIST_AUTH_FAIL_LIMIT=10,
                                       FULL_ACCESS_GROUPS="wheel", LIMITED_ACCESS_GROUPS="operator")
        groups = {"alice": True}  # bob: a real account in no access group
        self.looked_up = []

        def for_user(user):
            self.looked_up.append(user)
            return groups.get(user)
        self.server.rights.for_user = for_user

    def login(self, user, password, peer="203.0.113.7"):
        session, channel = self.session(self.server, peer=peer)
        self.server.api.handle_text(session, auth_text(user, password))
        self.passwords.release(self.passwords.calls - 1)
        self.clock.advance(0)
        [reply] = replies(channel)
        return reply

    def test_right_password_without_rights_names_the_groups(self):
        reply = self.login("bob", "right")
        self.assertEqual(reply["args"]["code"], "401")  # upstream's code, kept
        detail = reply["args"]["detail"]
        self.assertIn("user bob has no access rights on this host", detail)
        self.assertIn("FULL_ACCESS_GROUPS (wheel)", detail)
        self.assertIn("LIMITED_ACCESS_GROUPS (operator)", detail)
        self.assertTrue(any("User Login Attempt: bob" in e and "Reason: no access rights" in e for e in hostinfo(self.server)))

    def test_wrong_password_reveals_nothing_about_groups(self):
        for user in ("bob", "alice", "nobody-at-all"):
            reply = self.login(user, "wrong")
            self.assertEqual(reply["args"]["code"], "401")
            self.assertEqual(reply["args"]["detail"], "user name or password not accepted")
            self.assertNotIn("access", reply["args"]["detail"])
        entries = [e for e in hostinfo(self.server) if "Success: false" in e]
        self.assertEqual(len(entries), 3)
        self.assertTrue(all("Reason: wrong user name or password" in e for e in entries))

    def test_implausible_and_blocked_logins_are_logged_with_their_reason(self):
        session, channel = self.session(self.server)
        self.server.api.handle_text(session, auth_text("evil\nname", "x"))
        self.assertEqual(self.passwords.calls, 0)
        entries = hostinfo(self.server)
        implausible = [e for e in entries if "Reason: implausible credentials" in e]
        self.assertEqual(len(implausible), 1)
        self.assertIn("evil\\nname", implausible[0])  # passed through untrusted.shown
        self.assertNotIn("evil\nname", implausible[0])
        # Block the address, then try once more: the refusal says "blocked".
        for _ in range(10):
            self.login("alice", "wrong", peer="198.51.100.5")
        session, channel = self.session(self.server, peer="198.51.100.5")
        self.server.api.handle_text(session, auth_text("alice", "right"))
        self.assertIn("blocked", replies(channel)[-1]["args"]["detail"])
        self.assertTrue(any("IP: 198.51.100.5" in e and "Reason: blocked" in e for e in hostinfo(self.server)))

    def test_right_password_with_rights_still_logs_in(self):
        reply = self.login("alice", "right")
        self.assertEqual(reply["name"], "response")
