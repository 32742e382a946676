"""The bridge never holds fleet plaintext (issue 13 item 6): real processes (a bridge, two
sysadmd agents, the sysadm CLI).  Unique markers travel in a dispatcher-job command (its
output comes back in the result), an API-call command and an emitted event; afterwards
neither the bridge's state directory (SQLite main file, -wal, -shm…) nor its process
memory holds any of them, raw or base64-encoded.  Control, in the same test: a plaintext
command to an agent that allows it (FLEET_ALLOW_PLAINTEXT) IS found by the same searches."""

import json
import secrets
import uuid

import pytest
from twisted.internet import defer, reactor
from twisted.trial import unittest

from sysadmd.client.wsclient import connect_unix
from sysadmd.runtime import crypto
from sysadmd.wire import fleetsig
from tests import keys_support as ks
from tests.bridge_processes import bridge_reply, wait_until
from tests.fleet_processes import FleetCluster, fleet_event
from tests.plaintext_search import marker_forms, search_files_many, search_process_memory_many

pytestmark = pytest.mark.slow


def marker(kind: str) -> str:
    return f"PTX{kind}{secrets.token_hex(10)}"


class PlaintextAbsenceTests(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_bridge_files_and_memory_never_hold_fleet_plaintext(self):
        cluster = FleetCluster(self, agents=2)
        sealed_agent, plain_agent = cluster.agents
        plain_agent.settings["FLEET_ALLOW_PLAINTEXT"] = "true"
        yield cluster.setup()
        yield cluster.wait_online(cluster.agents)
        run_marker, api_marker, event_marker, control = (marker(k) for k in ("run", "api", "evt", "ctl"))

        local = yield connect_unix(reactor, sealed_agent.socket, timeout=5)
        self.addCleanup(local.close)
        got = []
        local.event_listeners.append(lambda m: got.append(m["args"]) if m.get("name") == "fleet" else None)
        reply = yield local.call("events", "subscribe", ["fleet"])
        self.assertEqual(reply["name"], "response", reply)

        # A dispatcher job: its output (the marker) comes back in the sealed result.
        child = yield cluster.fleet("fleet-admin", "run", "--agents", sealed_agent.name, f"echo {run_marker}")
        self.assertEqual(child.exit_code, 0, child.output)
        self.assertIn(f"COMPLETE succeeded: {run_marker}", child.out)
        # An API call with the marker in its args.
        child = yield cluster.fleet("fleet-admin", "run", "--agents", sealed_agent.name, "--api", "rpc/identify",
                                    json.dumps({"note": api_marker}))
        self.assertEqual(child.exit_code, 0, child.output)
        # An emitted event: the agent's subscriber gets the marker.
        child = yield cluster.fleet("fleet-admin", "emit", sealed_agent.name, "deploy", json.dumps({"m": event_marker}))
        self.assertIn("retrieved", child.out, child.output)
        yield wait_until(lambda: got, 10, "the fleet event on the agent")
        self.assertEqual((got[0]["data"], got[0]["user"]), ({"m": event_marker}, "root"))

        # Control: a plaintext command (signed, not sealed) to the agent that allows it;
        # its result stays stored (not fetched).
        watcher = yield cluster.watcher()
        command_id = uuid.uuid4().hex
        payload = json.dumps({"kind": "job", "commands": [f"echo {control}"], "timeout": 60})
        key = ks.private_key("fleet-admin")
        watcher.send(json.dumps({"args": {"ttl": 600, "commands": [{
            "id": command_id, "agent": plain_agent.id, "payload": payload,
            "key": crypto.md5_checksum(ks.pem_of("fleet-admin")),
            "signature": fleetsig.sign_command(key, command_id, plain_agent.id, payload)}]},
            "id": "ctl", "name": "execute", "namespace": "fleet"}))
        (accepted, _) = yield watcher.wait_for(bridge_reply("ctl"), "the control command accepted")
        self.assertEqual(accepted["args"], {"accepted": [command_id]}, accepted)
        yield watcher.wait_for(fleet_event("command", id=command_id, status="COMPLETE"), "the control result",
                               timeout=30)

        secrets_ = {name: marker_forms(m) for name, m in
                    (("job command", run_marker), ("API command", api_marker), ("event", event_marker))}
        needles = [form for forms in secrets_.values() for form in forms] + [control.encode()]
        in_files = search_files_many(cluster.bridge_state, needles)
        in_memory = search_process_memory_many(cluster.bridge.transport.pid, needles)
        self.assertTrue(in_files[control.encode()], "the control marker is not in the bridge's files")
        self.assertTrue(in_memory[control.encode()], "the control marker is not in the bridge's memory")
        for name, forms in secrets_.items():
            for form in forms:
                self.assertEqual(in_files[form], [], f"the {name}'s marker ({form!r}) in the bridge's files")
                self.assertEqual(in_memory[form], [], f"the {name}'s marker ({form!r}) in the bridge's memory")
