"""Fleet items sealed end to end (issue 13 item 6): the agent (a real in-process daemon,
driven through its bridge-link entry point) opens sealed commands and events, refuses
plaintext and what does not open, seals and signs results; the client checks agent keys
and pins them; the bridge lists agent keys and stores sealed events per agent."""

import json
import os
import types
import uuid

from twisted.internet import defer, task
from twisted.trial import unittest

from bridge import migrations
from bridge.fleet import Fleet, SqliteFleetStore
from bridge.relay import CLIENT, SERVER, Peer
from sysadmd.client.errors import ClientError
from sysadmd.client.fleetverbs import _checked, _outcome
from sysadmd.runtime import crypto
from sysadmd.runtime.db import open_database
from sysadmd.wire import bound, fleetsig, seal
from tests import keys_support as ks
from tests.bridge_processes import wait_until
from tests.support import make_config, short_tempdir, start_daemon
from tests.test_fleet_units import Link


class Protocol:
    """A bridge link's protocol as the agent code sees it: the bridge key, sends."""

    authenticated = True

    def __init__(self, bridge_key):
        self.link = types.SimpleNamespace(bridge_key=bridge_key, nickname="relay")
        self.sent = []

    def send_json(self, message):
        self.sent.append(message)

    def named(self, name, item_id):
        return [m["args"] for m in self.sent if m["name"] == name and m["args"].get("id") == item_id]


class AgentSide(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def start(self, **settings):
        running = yield start_daemon(self, make_config(short_tempdir(self), **settings))
        running.daemon.keys.register("root", ks.pem_of("fleet-owner"), "owner")
        self.agent = running.daemon.fleet_agent
        self.bridge_key = ks.private_key("fleet-agent-self")
        self.agent_id = bound.fingerprint(self.bridge_key)
        self.protocol = Protocol(self.bridge_key)
        self.published = []
        self.agent.publish = self.published.append
        return running

    def command(self, plain, *, sealed=True, agent_for_context=None, signer="fleet-owner"):
        command_id = uuid.uuid4().hex
        if sealed:
            context = seal.fleet_context("command", command_id, agent_for_context or self.agent_id)
            content_key = seal.command_key(ks.private_key(signer), command_id, self.agent_id)
            payload = seal.seal_with_key(self.bridge_key.public_key(), content_key, plain.encode(), context)
        else:
            payload = plain
        key = ks.private_key(signer)
        args = {"id": command_id, "agent": self.agent_id, "payload": payload, "ts": 1.0,
                "key": crypto.md5_checksum(ks.pem_of(signer)),
                "signature": fleetsig.sign_command(key, command_id, self.agent_id, payload)}
        self.agent.from_bridge(self.protocol, "command", args)
        return command_id

    @defer.inlineCallbacks
    def result(self, command_id):
        results = yield wait_until(lambda: self.protocol.named("result", command_id), 10, "the command's result")
        return results[0]["result"]

    def opened(self, text, command_id, client="fleet-owner"):
        key = seal.result_key(seal.command_key(ks.private_key(client), command_id, self.agent_id))
        return json.loads(seal.open_keyed(key, text, seal.fleet_context("result", command_id, self.agent_id)))

    @defer.inlineCallbacks
    def test_sealed_command_runs_and_its_result_is_keyed_by_the_command(self):
        yield self.start()
        api = json.dumps({"kind": "api", "namespace": "rpc", "name": "identify", "args": {}})
        command_id = self.command(api)
        text = yield self.result(command_id)
        self.assertTrue(seal.is_keyed(text))
        self.assertNotIn("succeeded", text)
        result = self.opened(text, command_id)
        self.assertEqual((result["ok"], result["outcome"]), (True, "succeeded"), result)
        # Only the command's client can open it (another key derives another command key),
        # it does not pass for another command's result, and a result made without the
        # command's key (by the bridge, say) does not open.
        with self.assertRaises(seal.SealError):
            self.opened(text, command_id, client="someone-else")
        second = self.command(api)
        yield self.result(second)
        with self.assertRaises(seal.SealError):
            self.opened(text, second)
        forged = seal.seal_keyed(os.urandom(32), b'{"ok":true}', seal.fleet_context("result", command_id,
                                                                                    self.agent_id))
        with self.assertRaises(seal.SealError):
            self.opened(forged, command_id)

    @defer.inlineCallbacks
    def test_plaintext_and_unopenable_payloads_are_refused(self):
        yield self.start()
        api = json.dumps({"kind": "api", "namespace": "rpc", "name": "identify", "args": {}})
        plain_id = self.command(api, sealed=False)
        text = yield self.result(plain_id)
        result = json.loads(text)  # a plaintext command gets a plaintext answer
        self.assertEqual(result["outcome"], "refused")
        self.assertIn("FLEET_ALLOW_PLAINTEXT is false", result["error"])
        # Sealed for another agent (or swapped from another command): does not open here.
        other_id = self.command(api, agent_for_context="0" * 64)
        result = json.loads((yield self.result(other_id)))  # not opened: no key to answer with
        self.assertEqual(result["outcome"], "refused")
        self.assertIn("does not open with this agent's key", result["error"])
        # An unknown signer is refused before any key is trusted: plaintext refusal.
        stranger_id = self.command(api, signer="fleet-stranger")
        result = json.loads((yield self.result(stranger_id)))
        self.assertEqual(result["error"], "the signing key is not registered on this agent")

    @defer.inlineCallbacks
    def test_plaintext_runs_only_when_allowed(self):
        yield self.start(fleet_allow_plaintext="true")
        api = json.dumps({"kind": "api", "namespace": "rpc", "name": "identify", "args": {}})
        command_id = self.command(api, sealed=False)
        result = json.loads((yield self.result(command_id)))
        self.assertEqual((result["ok"], result["outcome"]), (True, "succeeded"), result)

    def event(self, body, *, sealed=True, signed=True, signer="fleet-owner", event_id=None):
        event_id = event_id or uuid.uuid4().hex
        text = json.dumps(body)
        payload = seal.seal(self.bridge_key.public_key(), text.encode(),
                            seal.fleet_context("event", event_id, self.agent_id)) if sealed else text
        args = {"id": event_id, "payload": payload, "ts": 2.0}
        if signed:
            args.update(key=crypto.md5_checksum(ks.pem_of(signer)),
                        signature=fleetsig.sign_event(ks.private_key(signer), event_id, self.agent_id, payload))
        self.agent.from_bridge(self.protocol, "event", args)
        self.assertEqual(self.protocol.named("event_ack", event_id), [{"id": event_id}])
        return event_id

    @defer.inlineCallbacks
    def test_events_are_published_only_when_signed_and_sealed(self):
        yield self.start()
        event_id = self.event({"key": "deploy", "data": {"v": 1}})
        self.assertEqual([(e["id"], e["key"], e["data"], e["user"]) for e in self.published],
                         [(event_id, "deploy", {"v": 1}, "root")])
        self.event({"key": "x", "data": 1}, sealed=False, signed=False)  # the old form
        self.event({"key": "x", "data": 2}, signer="fleet-stranger")
        self.event({"key": "x", "data": 3}, sealed=False)  # signed but plaintext
        # A command signature is not an event signature (distinct prefixes).
        event_id = uuid.uuid4().hex
        payload = seal.seal(self.bridge_key.public_key(), b'{"key":"x","data":4}',
                            seal.fleet_context("event", event_id, self.agent_id))
        self.agent.from_bridge(self.protocol, "event", {
            "id": event_id, "payload": payload, "key": crypto.md5_checksum(ks.pem_of("fleet-owner")),
            "signature": fleetsig.sign_command(ks.private_key("fleet-owner"), event_id, self.agent_id, payload)})
        self.assertEqual(len(self.published), 1, self.published)

    @defer.inlineCallbacks
    def test_unsigned_plaintext_events_are_published_when_allowed(self):
        yield self.start(fleet_allow_plaintext="true")
        self.event({"key": "dbg", "data": None}, sealed=False, signed=False)
        self.assertEqual([(e["key"], e["user"]) for e in self.published], [("dbg", None)])


class Keys(unittest.TestCase):
    def test_command_keys_are_deterministic_per_client_command_and_agent(self):
        key = ks.private_key("fleet-owner")
        k = seal.command_key(key, "a" * 32, "b" * 64)
        self.assertEqual(len(k), 32)
        self.assertEqual(k, seal.command_key(key, "a" * 32, "b" * 64))  # a later `fleet wait` derives it again
        self.assertNotEqual(k, seal.command_key(key, "c" * 32, "b" * 64))
        self.assertNotEqual(k, seal.command_key(key, "a" * 32, "d" * 64))
        self.assertNotEqual(k, seal.command_key(ks.private_key("someone-else"), "a" * 32, "b" * 64))
        agent = ks.private_key("fleet-agent-self")
        context = seal.fleet_context("command", "a" * 32, "b" * 64)
        text = seal.seal_with_key(agent.public_key(), k, b"payload", context)
        self.assertEqual(seal.open_sealed(agent, text, context), b"payload")
        self.assertEqual(seal.open_sealed_key(agent, text, context), (b"payload", k))
        with self.assertRaises(seal.SealError):
            seal.open_sealed_key(agent, text, seal.fleet_context("event", "a" * 32, "b" * 64))


class ClientSide(unittest.TestCase):
    def setUp(self):
        self.notes = []
        path = os.path.join(short_tempdir(self), "known_servers")
        self.ctx = types.SimpleNamespace(options=types.SimpleNamespace(known_servers=path), note=self.notes.append)

    def listed(self, name, key_name, claimed_id=None):
        key = ks.private_key(key_name)
        return {"id": claimed_id or bound.fingerprint(key), "name": name, "key": seal.spki_b64(key)}

    def test_agent_key_must_match_its_id_and_its_pinned_name(self):
        agent = self.listed("nas", "fleet-pin-a")
        keys = _checked(self.ctx, [agent])
        self.assertEqual(bound.fingerprint(keys[agent["id"]]), agent["id"])
        self.assertIn("Pinned agent nas", self.notes[0])
        # A bridge listing a key that is not the one the id names: nothing is sealed to it.
        with self.assertRaisesRegex(ClientError, "not the key its id names") as caught:
            _checked(self.ctx, [self.listed("nas", "fleet-pin-b", claimed_id=agent["id"])])
        self.assertIn("Nothing was sent", caught.exception.message)
        # Another key claiming the pinned name is refused, with how to forget the pin.
        with self.assertRaisesRegex(ClientError, "sysadm known-servers forget nas"):
            _checked(self.ctx, [self.listed("nas", "fleet-pin-b")])
        with self.assertRaisesRegex(ClientError, "lists no key"):
            _checked(self.ctx, [dict(agent, key="")])
        self.assertEqual(list(_checked(self.ctx, [agent])), [agent["id"]])  # the pinned one still works

    def test_a_plaintext_success_is_not_trusted(self):
        reply = {"id": "c", "status": "COMPLETE"}
        claimed = json.dumps({"ok": True, "outcome": "succeeded"})
        self.assertEqual((_outcome(reply, claimed)["ok"], _outcome(reply, claimed)["outcome"]), (False, "unverified"))
        self.assertTrue(_outcome(reply, claimed, verified=True)["ok"])


def peer(role, nick):
    return Peer(id="::{" + str(uuid.uuid4()) + "}", link=Link(), role=role, authenticated=True, key_nickname=nick,
                key_md5=f"md5-{nick}", md5s=frozenset({"shared"}), provable=frozenset({"shared", f"md5-{nick}"}))


class BridgeSide(unittest.TestCase):
    def setUp(self):
        self.db = open_database(os.path.join(short_tempdir(self), "bridge.sqlite"), migrations.SCHEMA)
        self.addCleanup(self.db.close)
        self.clock = task.Clock()
        self.fleet = Fleet(SqliteFleetStore(self.db), self.clock, key_pem=ks.pem_of, ping_interval=0)
        self.agent = peer(SERVER, "fleet-bridge-agent")
        self.fleet.handle(self.agent, "hello", "h", {"name": "host1"})
        self.agent_id = self.agent.link.replies("h")[0]["args"]["agent_id"]
        self.client = peer(CLIENT, "fleet-bridge-client")

    def listed(self, fleet):
        fleet.handle(self.client, "agents", "a", {})
        return self.client.link.replies("a")[-1]["args"]["agents"]

    def test_agents_carry_the_key_the_bridge_authenticated_even_offline(self):
        expected = seal.spki_b64(ks.private_key("fleet-bridge-agent"))
        self.assertEqual([a["key"] for a in self.listed(self.fleet)], [expected])
        self.fleet.disconnected(self.agent)
        again = Fleet(SqliteFleetStore(self.db), self.clock, key_pem=ks.pem_of, ping_interval=0)  # a restart
        self.client.link = Link()
        rows = self.listed(again)
        self.assertEqual([(a["online"], a["key"]) for a in rows], [(False, expected)])
        self.assertEqual(seal.agent_key(rows[0]["key"], rows[0]["id"]).public_numbers(),
                         ks.private_key("fleet-bridge-agent").public_key().public_numbers())

    def test_sealed_emit_is_stored_per_agent_with_its_signature(self):
        event_id = uuid.uuid4().hex
        args = {"id": event_id, "agents": [self.agent_id], "payloads": {self.agent_id: "sealed1:AAAA.BBBB"},
                "signatures": {self.agent_id: "c2ln"}, "key": "md5", "ttl": 60}
        self.fleet.handle(self.client, "emit", "e", args)
        self.assertEqual(self.client.link.replies("e")[0]["args"], {"id": event_id, "agents": [self.agent_id]})
        sent = [m["args"] for m in self.agent.link.sent if m["name"] == "event"]
        self.assertEqual(sent, [{"id": event_id, "payload": "sealed1:AAAA.BBBB", "signature": "c2ln", "key": "md5",
                                 "ts": self.clock.seconds()}])
        self.fleet.handle(self.client, "emit", "e2", args)
        self.assertEqual(self.client.link.replies("e2")[0]["args"]["code"], 409)
        self.fleet.handle(self.client, "emit", "e3", dict(args, id=uuid.uuid4().hex, signatures={}))
        self.assertIn("signatures[", self.client.link.replies("e3")[0]["args"]["detail"])
        self.fleet.handle(self.client, "emit", "e4", dict(args, id="nothex"))
        self.assertIn("id must be 32 lower-case hex", self.client.link.replies("e4")[0]["args"]["detail"])



class SilentAgents(unittest.TestCase):
    """FLEET_PING_INTERVAL / FLEET_PONG_TIMEOUT on a Clock: a silent agent is announced
    offline within pong timeout + one interval, and online again when it answers."""

    def setUp(self):
        self.db = open_database(os.path.join(short_tempdir(self), "bridge.sqlite"), migrations.SCHEMA)
        self.addCleanup(self.db.close)
        self.clock = task.Clock()
        self.fleet = Fleet(SqliteFleetStore(self.db), self.clock, key_pem=ks.pem_of, ping_interval=1.0,
                           pong_timeout=2.0)
        self.fleet.start()
        self.addCleanup(self.fleet.stop)
        self.agent = peer(SERVER, "fleet-silent-agent")
        self.fleet.handle(self.agent, "hello", "h", {"name": "quiet"})
        self.agent_id = self.agent.link.replies("h")[0]["args"]["agent_id"]
        self.client = peer(CLIENT, "fleet-silent-client")
        self.fleet.handle(self.client, "agents", "a", {})

    def pong_all(self):
        for m in self.agent.link.sent:
            if m["name"] == "ping" and not m.get("answered"):
                m["answered"] = True
                self.fleet.handle(self.agent, "pong", "", {"t": m["args"]["t"]})

    def online_events(self):
        return [e["online"] for e in self.client.link.fleet("agent")]

    def test_silence_is_announced_within_three_seconds_and_an_answer_brings_it_back(self):
        for _ in range(5):  # an answering agent stays online
            self.clock.advance(1)
            self.pong_all()
        self.assertEqual(self.online_events(), [])
        silent_since = self.clock.seconds()
        while not self.online_events():
            self.clock.advance(0.5)
            self.assertLessEqual(self.clock.seconds() - silent_since, 3.0)
        self.assertEqual(self.online_events(), [False])
        # While silent it gets no commands; they wait, PENDING.
        command_id = uuid.uuid4().hex
        self.fleet.handle(self.client, "execute", "x", {"commands": [
            {"id": command_id, "agent": self.agent_id, "payload": "sealed1:x.y", "signature": "c2ln", "key": "k"}]})
        self.assertFalse([m for m in self.agent.link.sent if m["name"] == "command"])
        self.pong_all()  # a late answer: online again, and the command goes out
        self.assertEqual(self.online_events(), [False, True])
        self.assertEqual([m["args"]["id"] for m in self.agent.link.sent if m["name"] == "command"], [command_id])
        # The connection ends later: no second offline event for a silent agent.
        for _ in range(3):
            self.clock.advance(1)
        self.assertEqual(self.online_events(), [False, True, False])
        self.fleet.disconnected(self.agent)
        self.assertEqual(self.online_events(), [False, True, False])
