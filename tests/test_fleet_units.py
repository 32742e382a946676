"""The bridge's fleet core (bridge/fleet.py) on a real SQLite store and a Clock, with
fake connections: ttl expiry, cancel, ownership, validation, store failure."""

import json
import os
import uuid

from twisted.internet import task
from twisted.trial import unittest

from bridge import migrations
from bridge.fleet import Fleet, SqliteFleetStore
from bridge.relay import CLIENT, SERVER, Peer
from sysadmd.runtime.db import open_database
from tests.keys_support import pem_of
from tests.support import short_tempdir


class Link:
    def __init__(self):
        self.sent = []

    def send_text(self, text):
        self.sent.append(json.loads(text))

    def close(self, code, reason):
        pass

    def fleet(self, kind=None):
        return [m["args"] for m in self.sent if m["namespace"] == "events" and m["name"] == "fleet"
                and (kind is None or m["args"].get("kind") == kind)]

    def replies(self, request_id):
        return [m for m in self.sent if m.get("id") == request_id]


class FleetCore(unittest.TestCase):
    def setUp(self):
        state = short_tempdir(self)
        self.db = open_database(os.path.join(state, "bridge.sqlite"), migrations.SCHEMA)
        self.addCleanup(self.db.close)
        self.clock = task.Clock()
        self.clock.advance(1000)
        self.fleet = Fleet(SqliteFleetStore(self.db), self.clock, key_pem=lambda nick: pem_of(nick),
                           ping_interval=0)
        self.fleet.start()
        self.addCleanup(self.fleet.stop)
        self.agent = self.peer(SERVER, "agent-key", {"shared"})
        self.fleet.handle(self.agent, "hello", "h", {"name": "host1"})
        self.agent_id = self.agent.link.replies("h")[0]["args"]["agent_id"]
        self.client = self.peer(CLIENT, "owner-key", {"shared"})
        self.other = self.peer(CLIENT, "other-key", {"shared"})

    def peer(self, role, nick, md5s):
        peer = Peer(id="::{" + str(uuid.uuid4()) + "}", link=Link(), role=role, authenticated=True,
                    key_nickname=nick, key_md5=f"md5-{nick}", md5s=frozenset(md5s),
                    provable=frozenset(md5s) | {f"md5-{nick}"})
        return peer

    def execute(self, peer=None, ttl=60, agent=None, command_id=None):
        peer = peer or self.client
        command_id = command_id or uuid.uuid4().hex
        self.fleet.handle(peer, "execute", "x" + command_id, {"ttl": ttl, "commands": [
            {"id": command_id, "agent": agent or self.agent_id, "payload": "opaque", "signature": "c2ln",
             "key": "k"}]})
        return command_id, peer.link.replies("x" + command_id)[-1]

    def test_agent_id_is_the_key_fingerprint_and_offline_is_announced(self):
        from sysadmd.wire.bound import fingerprint
        from sysadmd.runtime import crypto
        self.assertEqual(self.agent_id, fingerprint(crypto.load_public_key(pem_of("agent-key"))))
        self.fleet.handle(self.client, "agents", "a", {})
        self.fleet.disconnected(self.agent)
        self.assertEqual([(e["agent"], e["online"]) for e in self.client.link.fleet("agent")], [(self.agent_id, False)])

    def test_pending_expires_and_final_rows_go_after_fetch(self):
        self.fleet.disconnected(self.agent)
        command_id, reply = self.execute(ttl=5)
        self.assertEqual(reply["args"], {"accepted": [command_id]})
        self.fleet.handle(self.client, "pending", "p", {"agent": self.agent_id})
        self.assertEqual([c["status"] for c in self.client.link.replies("p")[0]["args"]["commands"]], ["PENDING"])
        self.clock.advance(6)
        self.fleet.handle(self.client, "wait", "w", {"id": command_id, "timeout": 0})
        self.assertEqual(self.client.link.replies("w")[0]["args"]["status"], "EXPIRED")
        self.fleet.handle(self.client, "wait", "w2", {"id": command_id, "timeout": 0})
        self.assertEqual(self.client.link.replies("w2")[0]["name"], "error")  # fetched: gone

    def test_only_the_owner_waits_or_cancels_and_only_while_pending(self):
        self.fleet.disconnected(self.agent)
        command_id, _ = self.execute()
        self.fleet.handle(self.other, "cancel", "c", {"id": command_id})
        self.assertEqual(self.other.link.replies("c")[0]["args"]["code"], 404)
        self.fleet.handle(self.client, "wait", "w", {"id": command_id, "timeout": 30})
        self.fleet.handle(self.client, "cancel", "c", {"id": command_id})
        self.assertEqual(self.client.link.replies("c")[0]["args"]["status"], "CANCELLED")
        self.assertEqual(self.client.link.replies("w")[0]["args"]["status"], "CANCELLED")
        # A command that is ACTIVE cannot be cancelled.
        self.fleet.handle(self.agent, "hello", "h2", {"name": "host1"})
        command_id, _ = self.execute()
        self.fleet.handle(self.agent, "ack", "", {"id": command_id})
        self.fleet.handle(self.client, "cancel", "c2", {"id": command_id})
        self.assertEqual(self.client.link.replies("c2")[0]["args"]["code"], 409)

    def test_bad_fields_and_unpaired_agents_are_refused_with_the_field_named(self):
        stranger = self.peer(CLIENT, "stranger", {"elsewhere"})
        _, reply = self.execute(peer=stranger)
        self.assertEqual(reply["args"]["code"], 404)
        _, reply = self.execute(command_id="not-hex")
        self.assertIn("commands[0].id must be 32 lower-case hex", reply["args"]["detail"])
        _, reply = self.execute(ttl=0)
        self.assertIn("ttl must be", reply["args"]["detail"])
        command_id, _ = self.execute()
        _, reply = self.execute(command_id=command_id)
        self.assertEqual(reply["args"]["code"], 409)

    def test_a_store_that_cannot_be_written_refuses_loudly_then_recovers(self):
        self.fleet.disconnected(self.agent)
        kept, _ = self.execute()
        self.fleet.handle(self.client, "agents", "a", {})
        self.db.execute("PRAGMA query_only = 1")
        _, reply = self.execute()
        self.assertEqual(reply["args"]["code"], 503)
        self.assertIn("cannot write its fleet store", reply["args"]["detail"])
        self.assertEqual([e["ok"] for e in self.client.link.fleet("store")], [False])
        self.clock.advance(1)
        self.assertIsNotNone(self.fleet.failed)  # the probe still fails
        self.db.execute("PRAGMA query_only = 0")
        self.clock.advance(1)
        self.assertIsNone(self.fleet.failed)
        self.assertEqual([e["ok"] for e in self.client.link.fleet("store")], [False, True])
        self.fleet.handle(self.client, "pending", "p", {"agent": self.agent_id})
        self.assertEqual([c["id"] for c in self.client.link.replies("p")[0]["args"]["commands"]], [kept])

    def test_a_result_the_store_cannot_record_is_not_confirmed(self):
        command_id, _ = self.execute()
        self.fleet.handle(self.agent, "ack", "", {"id": command_id})
        self.db.execute("PRAGMA query_only = 1")
        self.fleet.handle(self.agent, "result", "", {"id": command_id, "result": "{}"})
        self.assertFalse([m for m in self.agent.link.sent if m["name"] == "result_stored"])
        self.db.execute("PRAGMA query_only = 0")
        self.clock.advance(1)  # recovered: the agent gets its ACTIVE command again and resends
        self.assertIn(command_id, [m["args"]["id"] for m in self.agent.link.sent if m["name"] == "command"][1:])
        self.fleet.handle(self.agent, "result", "", {"id": command_id, "result": "{}"})
        self.assertTrue([m for m in self.agent.link.sent if m["name"] == "result_stored"])
