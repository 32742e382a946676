"""Real processes for the fleet tests and benchmark: one ``twistd sysadm-bridge`` and a few
``twistd sysadmd`` agents linked to it (wired with the operators' admin commands), the
``sysadm`` CLI as a child, and :class:`FleetWatcher`, a raw fleet client in the test
process that keeps every ``fleet`` event the bridge sends it."""

from __future__ import annotations

import json
import os
import re
from typing import Any, Dict, List, Optional

from autobahn.twisted.websocket import WebSocketClientFactory, connectWS
from twisted.internet import defer, reactor

from bridge.fleet import agent_id_of
from sysadmd.runtime import crypto
from sysadmd.client.wsclient import connect_unix, insecure_client_tls
from tests import keys_support as ks
from tests.bridge_processes import (SERVER_LISTENING, TWISTD, BridgeHarness, RawPeer, bridge_reply,
                                    run_command, spawn, wait_until)
from tests.support import short_tempdir


class Agent:
    def __init__(self, base: str, name: str):
        self.name = name
        self.state = os.path.join(base, name)
        self.socket = os.path.join(self.state, "sysadmd.sock")
        self.key_file = os.path.join(base, f"{name}.key")
        self.config = os.path.join(base, f"{name}.conf")
        self.settings: Dict[str, str] = {"FLEET_AGENT_NAME": name}  # its config file (written at each start)
        self.child: Any = None

    @property
    def id(self) -> str:
        """The agent id the bridge gives it: SHA-256 of its bridge key (SPKI DER)."""
        with open(self.key_file) as f:
            return agent_id_of(f.read())

    def admin(self, *args: str) -> defer.Deferred:
        return run_command("-m", "sysadmd.admin.main", "--state-dir", self.state, *args)


class FleetCluster(BridgeHarness):
    def __init__(self, testcase: Any, agents: int = 2):
        self.testcase = testcase
        self.base = short_tempdir(testcase, "flt")
        self.bridge_state = os.path.join(self.base, "b")
        self.home = os.path.join(self.base, "home")
        os.makedirs(self.home)
        self.config = os.path.join(self.base, "empty.conf")
        with open(self.config, "w") as f:
            f.write("# every key keeps its default\n")
        self.agents = [Agent(self.base, f"agent{i + 1}") for i in range(agents)]
        self.bridge: Any = None
        self.port: Optional[int] = None

    @defer.inlineCallbacks
    def setup(self, clients=("fleet-admin",), start=True):
        """Bridge, the admin wiring of every agent (its key on the bridge, the link, the
        *clients*' keys registered for root), then the agents (if *start*)."""
        yield self.start_bridge()
        for name in clients:
            yield self.bridge_admin("import_ssl_file", name, self.public_file(name), "--role", "client")
        for agent in self.agents:
            yield agent.admin("bridge_export_key", agent.key_file)
            yield agent.admin("bridge_add", "relay", f"wss://127.0.0.1:{self.port}", "--verify", "pin")
            for name in clients:
                yield agent.admin("import_ssl_file", "root", self.public_file(name), name)
            yield self.bridge_admin("import_ssl_file", agent.name, agent.key_file, "--role", "server")
        if start:
            yield defer.gatherResults([self.start_agent(a) for a in self.agents], consumeErrors=True)

    @defer.inlineCallbacks
    def start_agent(self, agent: Agent):
        with open(agent.config, "w") as f:
            f.write("".join(f"{k}={v}\n" for k, v in agent.settings.items()))
        agent.child = spawn(self.testcase, agent.name, TWISTD + [
            "sysadmd", "--config", agent.config, "--port", "tcp:0:interface=127.0.0.1",
            "--state-dir", agent.state, "--socket", agent.socket])
        yield agent.child.wait_for(SERVER_LISTENING)
        return agent

    @defer.inlineCallbacks
    def stop_agent(self, agent: Agent, signal: str = "TERM"):
        agent.child.signal(signal)
        yield agent.child.ended.addTimeout(20, reactor)

    @defer.inlineCallbacks
    def local_call(self, agent: Agent, namespace: str, name: str, args: Any):
        conn = yield connect_unix(reactor, agent.socket, timeout=5)
        try:
            reply = yield conn.call(namespace, name, args)
        finally:
            yield conn.close()
        return reply

    def sysadm(self, *argv: str, timeout: float = 40) -> defer.Deferred:
        return BridgeHarness.sysadm(self, *argv, timeout=timeout)  # fleet runs wait longer

    def fleet(self, key: str, *argv: str, **kw: Any) -> defer.Deferred:
        return self.sysadm("--bridge", f"127.0.0.1:{self.port}", "--key", self.key_file(key), "fleet", *argv, **kw)

    @defer.inlineCallbacks
    def agents_json(self, key: str = "fleet-admin") -> Any:
        child = yield self.fleet(key, "agents", "--json")
        assert child.exit_code == 0, child.output
        return json.loads(child.out)

    @defer.inlineCallbacks
    def wait_online(self, agents: List[Agent], online: bool = True, timeout: float = 20):
        @defer.inlineCallbacks
        def check():
            rows = yield self.agents_json()
            by_id = {r["id"]: r for r in rows}
            return rows if all(a.id in by_id and by_id[a.id]["online"] == online for a in agents) else None
        rows = yield wait_until(check, timeout, f"agents {[a.name for a in agents]} online={online}", interval=0.3)
        return rows

    @defer.inlineCallbacks
    def watcher(self, name: str = "fleet-admin") -> Any:
        """A raw fleet client authenticated with key *name*; keeps the fleet events."""
        factory = WebSocketClientFactory(f"wss://127.0.0.1:{self.port}/", reactor=reactor)
        factory.protocol = FleetWatcher
        factory.noisy = False
        factory.opened = defer.Deferred()
        factory.setProtocolOptions(openHandshakeTimeout=10, closeHandshakeTimeout=3)
        connectWS(factory, insecure_client_tls(), timeout=10)
        peer = yield factory.opened.addTimeout(15, reactor)
        self.testcase.addCleanup(peer.abort)
        key = ks.private_key(name)
        peer.key_list = [crypto.md5_checksum(ks.pem_of(name))]
        peer.send(json.dumps({"args": {"hostname": "watcher", "type": "client"}, "id": "sysadm_bridge_request_ident",
                              "name": "response", "namespace": "rpc"}))
        peer.send(json.dumps({"args": "", "id": "a1", "name": "auth_ssl", "namespace": "rpc"}))
        (reply, _) = yield peer.wait_for(bridge_reply("a1"), "auth_ssl stage 1")
        peer.send(json.dumps({"args": {"encrypted_string": crypto.sign_challenge(key, reply["args"]["test_string"])},
                              "id": "a2", "name": "auth_ssl", "namespace": "rpc"}))
        (reply, _) = yield peer.wait_for(bridge_reply("a2"), "auth_ssl stage 2")
        assert reply["name"] == "response", reply
        peer.send(json.dumps({"args": {}, "id": "w1", "name": "agents", "namespace": "fleet"}))
        yield peer.wait_for(bridge_reply("w1"), "fleet/agents")
        return peer


class FleetWatcher(RawPeer):
    def fleet_events(self, start: int = 0) -> List[Dict[str, Any]]:
        found = []
        for frame in self.frames[start:]:
            if frame.startswith("{"):
                message = json.loads(frame)
                if message.get("namespace") == "events" and message.get("name") == "fleet":
                    found.append(message["args"])
        return found


def fleet_event(kind: str, **fields: Any):
    """A matcher for RawPeer.wait_for: a fleet event of *kind* with *fields*."""
    def match(frame: str) -> Optional[dict]:
        if frame.startswith("{"):
            message = json.loads(frame)
            args = message.get("args")
            if message.get("name") == "fleet" and message.get("namespace") == "events" and isinstance(args, dict) \
                    and args.get("kind") == kind and all(args.get(k) == v for k, v in fields.items()):
                return args
        return None
    return match


RESULT_LINE = re.compile(r"^(\S+) \((\w+)\): (\w+) (\w+)", re.M)
