"""Issue 7 item 8: failed password logins must not starve successes.

Order, not time: a checker whose answers the test releases shows which checks run when.
"""

import json

from twisted.internet import defer
from twisted.trial import unittest

from sysadmd.auth.passwords import CheckRefused, FairCheckQueue
from tests.test_sec_login import HeldPasswords, ServerUnit, auth_text, replies


class Held:
    def __init__(self):
        self.started = []

    def check(self, tag):
        d = defer.Deferred()
        self.started.append((tag, d))
        return d

    def tags(self):
        return [t for t, _ in self.started]

    def finish(self, tag, value=False):
        for t, d in self.started:
            if t == tag and not d.called:
                d.callback(value)
                return
        raise AssertionError(f"{tag} is not running")


class QueueOrder(unittest.TestCase):
    def test_one_address_never_holds_every_worker(self):
        held = Held()
        queue = FairCheckQueue(workers=4, per_key=100)
        for i in range(40):
            queue.submit("A", held.check, f"A{i}")
        self.assertEqual(held.tags(), ["A0", "A1", "A2"])
        queue.submit("B", held.check, "B0")
        self.assertEqual(held.tags(), ["A0", "A1", "A2", "B0"])  # at once, on the spare worker

    def test_addresses_take_turns(self):
        held = Held()
        queue = FairCheckQueue(workers=2, per_key=100)
        for i in range(5):
            queue.submit("A", held.check, f"A{i}")
        for i in range(3):
            queue.submit("B", held.check, f"B{i}")
        queue.submit("C", held.check, "C0")
        self.assertEqual(held.tags(), ["A0", "B0"])
        held.finish("A0")
        self.assertEqual(held.tags()[2:], ["C0"])  # the newcomer goes first
        for tag in ("B0", "C0", "A1", "B1", "A2", "B2", "A3"):
            held.finish(tag)
        # Then the least recently served address each time: A and B alternate.
        self.assertEqual(held.tags(), ["A0", "B0", "C0", "A1", "B1", "A2", "B2", "A3", "A4"])

    def test_excess_checks_of_an_address_are_refused_at_once(self):
        held = Held()
        queue = FairCheckQueue(workers=4, per_key=4)
        outcomes = [queue.submit("A", held.check, f"A{i}") for i in range(40)]
        refused = []
        for d in outcomes[4:]:
            d.addErrback(lambda f: refused.append(f.trap(CheckRefused) and f.value))
        self.assertEqual(len(refused), 36)
        self.assertEqual(refused[0].code, "429")
        self.assertIn("PASSWORD_CHECKS_PER_ADDRESS=4", refused[0].detail)
        self.assertEqual(len(held.started), 3)  # and one queued
        self.assertEqual(queue.queued("A"), 1)

    def test_budget_holds_checks_back_and_drop_fails_the_queued(self):
        held = Held()
        budget = {"A": 1}
        queue = FairCheckQueue(workers=4, per_key=10, budget=lambda key: budget.get(key, 99))
        outcomes = [queue.submit("A", held.check, f"A{i}") for i in range(3)]
        self.assertEqual(held.tags(), ["A0"])
        self.assertEqual(queue.drop("A", "blocked"), 2)
        for d in outcomes[1:]:
            failure = self.failureResultOf(d, CheckRefused)
            self.assertEqual((failure.value.code, failure.value.detail), ("401", "blocked"))


class FortyFailuresDoNotStarveALogin(ServerUnit):
    def test_a_legitimate_login_runs_beside_40_failing_ones(self):
        passwords = HeldPasswords({"root": "pw"})
        server = self.make_server(passwords, BLACKLIST_AUTH_FAIL_LIMIT=1000, PASSWORD_CHECKS_PER_ADDRESS=40,
                                  PASSWORD_CHECK_WORKERS=4)
        server.rights.for_user = lambda user: True
        attackers = [self.session(server, peer="203.0.113.66") for _ in range(40)]
        for session, _ in attackers:
            server.api.handle_text(session, auth_text("root", "guess"))
        self.assertEqual(passwords.calls, 3)
        admin, admin_channel = self.session(server, peer="198.51.100.4")
        server.api.handle_text(admin, auth_text("root", "pw"))
        # Started at once, before any of the attacker's checks finished.
        self.assertEqual(passwords.calls, 4)
        self.assertEqual(server.password_checks.queued("203.0.113.66"), 37)
        passwords.release(3)
        [reply] = replies(admin_channel)
        self.assertEqual(reply["name"], "response")
        self.assertEqual(admin.identity.user, "root")
        # The attacker's 37 queued checks are still waiting; none went before the admin's.
        self.assertFalse(any(d.called for _, d in passwords.started[:3]))

    def test_over_the_per_address_cap_the_reply_is_429_at_once(self):
        passwords = HeldPasswords({"root": "pw"})
        server = self.make_server(passwords, BLACKLIST_AUTH_FAIL_LIMIT=1000)  # PASSWORD_CHECKS_PER_ADDRESS=4
        channels = []
        for _ in range(40):
            session, channel = self.session(server, peer="203.0.113.66")
            server.api.handle_text(session, auth_text("root", "guess"))
            channels.append(channel)
        answered = [json.loads(c.sent[0]) for c in channels if c.sent]
        self.assertEqual(len(answered), 36)
        self.assertTrue(all(m["args"]["code"] == "429" for m in answered))
        self.assertIn("already running or queued", answered[0]["args"]["detail"])
        # Refusals of excess checks are not failed guesses.
        self.assertEqual(server.blacklist.remaining("203.0.113.66"), 1000)
