"""Fleet through the bridge (issue 13): a real bridge and real sysadmd agents (twistd
children), the real ``sysadm fleet`` CLI as a child, and a raw fleet client for events."""

import json
import os
import signal
import time

import pytest
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from tests.bridge_processes import wait_until
from tests.fleet_processes import FleetCluster, fleet_event

pytestmark = pytest.mark.slow


class FleetTests(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_run_on_all_agents_and_liveness_events(self):
        cluster = FleetCluster(self, agents=2)
        yield cluster.setup()
        rows = yield cluster.wait_online(cluster.agents)
        self.assertTrue(all(len(r["id"]) == 64 for r in rows), rows)
        watcher = yield cluster.watcher()
        child = yield cluster.fleet("fleet-admin", "run", "--all", "echo fleet-hello")
        self.assertEqual(child.exit_code, 0, child.output)
        self.assertEqual(child.out.count("COMPLETE succeeded: fleet-hello"), 2, child.out)
        # Agent identity is stable: the same id after a restart.
        agent2 = cluster.agents[1]
        start = len(watcher.frames)
        began = time.monotonic()
        yield cluster.stop_agent(agent2)
        (offline, _) = yield watcher.wait_for(fleet_event("agent", online=False), "an offline event", start, timeout=5)
        self.assertLess(time.monotonic() - began, 2.5)
        self.assertEqual(offline["agent"], agent2.id)
        yield cluster.start_agent(agent2)
        (online, _) = yield watcher.wait_for(fleet_event("agent", online=True), "an online event", start, timeout=15)
        self.assertEqual(online["agent"], offline["agent"])

    @defer.inlineCallbacks
    def test_a_stopped_agent_is_announced_offline_within_three_seconds(self):
        """A silent link (SIGSTOP: no FIN, no pong) is noticed by the fleet pings
        (FLEET_PING_INTERVAL 1 s, FLEET_PONG_TIMEOUT 2 s), and the agent is back when it answers."""
        cluster = FleetCluster(self, agents=1)
        yield cluster.setup()
        yield cluster.wait_online(cluster.agents)
        agent = cluster.agents[0]
        watcher = yield cluster.watcher()
        start = len(watcher.frames)
        stopped = time.monotonic()
        pid = agent.child.transport.pid
        os.kill(pid, signal.SIGSTOP)
        self.addCleanup(agent.child.signal, signal.SIGCONT)
        (offline, index) = yield watcher.wait_for(fleet_event("agent", online=False), "the offline event", start,
                                                  timeout=10)
        self.assertEqual(offline["agent"], agent.id)
        # 2-3 s by design (the Clock test in test_fleet_sealed pins that); the margin is for
        # a loaded CI machine. A WebSocket ping (PING_INTERVAL 30 s) would take 30-60 s.
        self.assertLess(watcher.times[index] - stopped, 5.0)
        os.kill(pid, signal.SIGCONT)
        (online, _) = yield watcher.wait_for(fleet_event("agent", online=True), "the online event", index, timeout=10)
        self.assertEqual(online["agent"], agent.id)
        rows = yield cluster.wait_online([agent])
        self.assertTrue(rows[0]["online"])

    @defer.inlineCallbacks
    def test_offline_agent_gets_command_after_bridge_restart_and_events_resolve(self):
        cluster = FleetCluster(self, agents=2)
        yield cluster.setup()
        yield cluster.wait_online(cluster.agents)
        agent1, agent2 = cluster.agents
        yield cluster.stop_agent(agent2)
        yield cluster.wait_online([agent2], online=False)
        marker = os.path.join(cluster.base, "ran")
        child = yield cluster.fleet("fleet-admin", "run", "--agents", agent2.id[:12], "--no-wait",
                                    f'sh -c "echo ran >> {marker}"')
        self.assertEqual(child.exit_code, 0, child.output)
        command_id = child.out.split()[0]
        pending = yield cluster.fleet("fleet-admin", "pending", agent2.id[:12], "--json")
        rows = json.loads(pending.out)
        self.assertEqual([(r["id"], r["agentId"], r["status"]) for r in rows], [(command_id, agent2.id, "PENDING")])
        self.assertIsInstance(rows[0]["ts"], float)
        # An event for the offline agent is stored too.
        emitted = yield cluster.fleet("fleet-admin", "emit", agent2.id[:12], "deploy", '{"v":1}', "--wait", "0.5")
        self.assertIn("stored until the agent retrieves it", emitted.out, emitted.output)
        # The bridge restarts between PENDING and delivery: nothing is lost.
        port = cluster.port
        yield cluster.stop_bridge()
        yield cluster.start_bridge(port)
        watcher = yield cluster.watcher()
        self.assertFalse(os.path.exists(marker))
        yield cluster.start_agent(agent2)
        done = yield cluster.fleet("fleet-admin", "wait", command_id, "--wait", "30")
        self.assertEqual(done.exit_code, 0, done.output)
        self.assertIn("COMPLETE succeeded", done.out)
        with open(marker) as f:
            self.assertEqual(f.read(), "ran\n")
        yield watcher.wait_for(fleet_event("delivered", agent=agent2.id), "the stored event's delivery", timeout=15)
        # Fetched: the bridge forgot it.
        again = yield cluster.fleet("fleet-admin", "wait", command_id, "--wait", "0")
        self.assertNotEqual(again.exit_code, 0)
        self.assertIn("no command", again.err)
        # An emitted event reaches the agent's subscribers as a `fleet` event.
        yield cluster.wait_online([agent1])
        from sysadmd.client.wsclient import connect_unix
        local = yield connect_unix(reactor, agent1.socket, timeout=5)
        self.addCleanup(local.close)
        got = []
        local.event_listeners.append(lambda m: got.append(m) if m.get("name") == "fleet" else None)
        reply = yield local.call("events", "subscribe", ["fleet"])
        self.assertEqual(reply["name"], "response", reply)
        emitted = yield cluster.fleet("fleet-admin", "emit", agent1.id[:12], "deploy", '{"v":2}')
        self.assertIn("retrieved", emitted.out, emitted.output)
        yield wait_until(lambda: got, 10, "the fleet event on the agent")
        self.assertEqual((got[0]["args"]["key"], got[0]["args"]["data"]), ("deploy", {"v": 2}))

    @defer.inlineCallbacks
    def test_agent_killed_after_active_never_runs_the_command_twice(self):
        cluster = FleetCluster(self, agents=1)
        yield cluster.setup()
        yield cluster.wait_online(cluster.agents)
        agent = cluster.agents[0]
        marker = os.path.join(cluster.base, "ran")
        child = yield cluster.fleet("fleet-admin", "run", "--all", "--no-wait", f'sh -c "echo ran >> {marker}; sleep 4"')
        self.assertEqual(child.exit_code, 0, child.output)
        command_id = child.out.split()[0]

        @defer.inlineCallbacks
        def active():
            pending = yield cluster.fleet("fleet-admin", "pending", agent.id[:12], "--json")
            rows = json.loads(pending.out)
            return rows and rows[0]["status"] == "ACTIVE" and os.path.exists(marker)

        yield wait_until(active, 20, "the command to be ACTIVE and running", interval=0.2)
        yield cluster.stop_agent(agent, "KILL")
        yield cluster.start_agent(agent)
        done = yield cluster.fleet("fleet-admin", "wait", command_id, "--wait", "30", "--json")
        outcome = json.loads(done.out)
        self.assertEqual((outcome["status"], outcome["outcome"]), ("COMPLETE", "interrupted"), done.output)
        self.assertIn("not run again", outcome["error"])
        yield task.deferLater(reactor, 1.0, lambda: None)
        with open(marker) as f:
            self.assertEqual(f.read(), "ran\n")
        # The agent's job table has the fleet job.
        reply = yield cluster.local_call(agent, "core", "get_jobs", {})
        methods = sorted(j["method"] for j in reply["args"])
        self.assertEqual(methods, ["dispatcher.run", "fleet/command"], reply)

    @defer.inlineCallbacks
    def test_a_key_the_agent_does_not_know_is_refused_there(self):
        cluster = FleetCluster(self, agents=1)
        yield cluster.setup()
        # The bridge lets mallory address the agent (its administrator vouched for the
        # admin's key), but the agent checks the command's own signature.
        yield cluster.bridge_admin("import_ssl_file", "mallory", cluster.public_file("mallory"), "--role", "client",
                                   "--pairs-with", cluster.public_file("fleet-admin"))
        yield cluster.wait_online(cluster.agents)
        marker = os.path.join(cluster.base, "ran")
        child = yield cluster.fleet("mallory", "run", "--all", f"touch {marker}")
        self.assertEqual(child.exit_code, 1, child.output)
        self.assertIn("COMPLETE refused: the signing key is not registered on this agent", child.out)
        self.assertFalse(os.path.exists(marker))
        # An API call as the admin's own identity works, with its rights.
        ok = yield cluster.fleet("fleet-admin", "run", "--all", "--api", "rpc/identify", "{}")
        self.assertEqual(ok.exit_code, 0, ok.output)
        self.assertIn("COMPLETE succeeded", ok.out)

    @defer.inlineCallbacks
    def test_a_store_that_cannot_be_written_refuses_loudly_and_keeps_what_it_accepted(self):
        cluster = FleetCluster(self, agents=1)
        yield cluster.setup()
        yield cluster.wait_online(cluster.agents)
        agent = cluster.agents[0]
        yield cluster.stop_agent(agent)
        child = yield cluster.fleet("fleet-admin", "run", "--all", "--no-wait", "true")
        command_id = child.out.split()[0]
        watcher = yield cluster.watcher()
        wal = os.path.join(cluster.bridge_state, "bridge.sqlite-wal")
        self.assertTrue(os.path.exists(wal))
        # Immutable: every write fails, as on a read-only or failing disk (root ignores modes).
        yield _chattr("+i", wal)
        self.addCleanup(_chattr, "-i", wal)
        refused = yield cluster.fleet("fleet-admin", "run", "--all", "true")
        self.assertNotEqual(refused.exit_code, 0, refused.output)
        self.assertIn("cannot write its fleet store", refused.err)
        (failed, _) = yield watcher.wait_for(fleet_event("store", ok=False), "the store failure event", timeout=10)
        self.assertIn("disk I/O error", failed["error"])
        yield _chattr("-i", wal)
        yield watcher.wait_for(fleet_event("store", ok=True), "the store recovery event", timeout=10)
        yield cluster.start_agent(agent)
        done = yield cluster.fleet("fleet-admin", "wait", command_id, "--wait", "30")
        self.assertEqual(done.exit_code, 0, done.output)
        self.assertIn("COMPLETE succeeded", done.out)


def _chattr(flag, path):
    from twisted.internet import utils
    return utils.getProcessOutputAndValue("chattr", [flag, path])


def _agents_reply(frame: str):
    if frame.startswith("{"):
        message = json.loads(frame)
        if message.get("namespace") == "fleet" and message.get("name") == "response" \
                and str(message.get("id", "")).startswith("conn-"):
            return message["args"]
    return None


def _available(frames):
    """The servers the bridge last listed to this client (events/bridge available_connections)."""
    latest = None
    for frame in frames:
        if frame.startswith("{"):
            message = json.loads(frame)
            args = message.get("args")
            if message.get("namespace") == "events" and isinstance(args, dict) and "available_connections" in args:
                latest = args["available_connections"]
    return latest


class FleetConnectionTests(unittest.TestCase):
    timeout = 90

    @defer.inlineCallbacks
    def test_agents_rows_name_the_agents_current_relay_connection(self):
        """fleet/agents carries an online agent's relay connection ID (the one to send an
        end-to-end hello to, §8.5), a new one after it reconnects, and none while offline."""
        cluster = FleetCluster(self, agents=1)
        yield cluster.setup()
        yield cluster.wait_online(cluster.agents)
        agent = cluster.agents[0]
        watcher = yield cluster.watcher()
        asked = [0]

        @defer.inlineCallbacks
        def row():
            asked[0] += 1
            start = len(watcher.frames)
            watcher.send(json.dumps({"args": {}, "id": f"conn-{asked[0]}", "name": "agents", "namespace": "fleet"}))
            (reply, _) = yield watcher.wait_for(_agents_reply, "fleet/agents", start)
            return next(r for r in reply["agents"] if r["id"] == agent.id)

        first = yield row()
        self.assertTrue(first["online"])
        self.assertRegex(first["connection"], r"^::\{[0-9a-f-]{36}\}$")
        self.assertEqual(_available(watcher.frames), [first["connection"]])
        yield cluster.stop_agent(agent)
        yield watcher.wait_for(fleet_event("agent", online=False, agent=agent.id), "the offline event", timeout=10)
        offline = yield row()
        self.assertFalse(offline["online"])
        self.assertNotIn("connection", offline)
        start = len(watcher.frames)
        yield cluster.start_agent(agent)
        yield watcher.wait_for(fleet_event("agent", online=True, agent=agent.id), "the online event", start, timeout=20)
        again = yield row()
        self.assertTrue(again["online"])
        self.assertNotEqual(again["connection"], first["connection"])
        yield wait_until(lambda: _available(watcher.frames) == [again["connection"]], 10,
                         "the new connection listed as available")
