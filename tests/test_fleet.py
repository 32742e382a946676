"""Fleet through the bridge (issue 13): a real bridge and real sysadmd agents (twistd
children), the real ``sysadm fleet`` CLI as a child, and a raw fleet client for events."""

import json
import os
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
