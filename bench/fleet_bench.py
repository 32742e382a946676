"""Fleet through the bridge (issue 13): fan-out and store-and-forward throughput.

    python bench/fleet_bench.py [--agents 200] [--commands 2000] [--batch 100]

Processes on loopback: the real ``twistd -n sysadm-bridge``; one "agent host", a real
sysadmd daemon (``sysadmd.assembly.build``) holding N bridge links, each with its own
bridge key, so N agents with N ids, all running the real agent code
(:mod:`sysadmd.bridgelink.fleet`: signature and rights checks, ``fleet_accepted``, a job
row per command); and this process as the client (raw WebSocket, signing like
``sysadm fleet``).  Reported:

* fan-out: one dispatcher job (``true``) to every agent, sealed end to end as ``sysadm
  fleet`` does (payload sealed to each agent's key, result signed by the agent and sealed
  to us, opened and checked here) — seconds from sealing the first command until every
  result is COMPLETE, fetched and opened;
* store and forward: ``--commands`` API commands (``rpc/identify``) spread over the
  agents in batches of ``--batch`` — commands/s from the first execute to the last
  result fetched (and opened), sealed and plaintext alternately, twice each (the agents
  run with FLEET_ALLOW_PLAINTEXT=true for this), in the same run, and their ratio; and how fast
  the bridge accepts (stores) new sealed commands.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def agent_host(args) -> None:
    """The agent host process: one sysadmd, N links."""
    from twisted.internet import reactor

    from sysadmd import assembly, config as configmod
    from sysadmd.bridgelink.link import BridgeLink
    from sysadmd.bridgelink.store import BridgeLinkRow
    from sysadmd.runtime import crypto

    cfg = configmod.load(None, {"PORT": "tcp:0:interface=127.0.0.1", "STATE_DIR": args.state,
                                "SOCKET": os.path.join(args.state, "s.sock"), "BRIDGE_PING_INTERVAL": "0",
                                "MAX_PARALLEL_JOBS": "32", "FLEET_ALLOW_PLAINTEXT": "true"})
    daemon = assembly.build(cfg, reactor)
    daemon.startService()
    with open(args.client_pub) as f:
        daemon.keys.register("root", f.read(), "bench-client")
    links = []
    for i in range(args.count):
        with open(os.path.join(args.keys, f"agent{i}.pem"), "rb") as f:
            key = crypto.load_private_key(f.read())
        row = BridgeLinkRow(f"a{i}", args.url, "none", None, time.time())
        link = BridgeLink(daemon.server, row, daemon.bridge_links.store, key, reactor, keys=daemon.keys)
        link.fleet = daemon.fleet_agent
        links.append(link)
    for i, link in enumerate(links):
        reactor.callLater(i * 0.01, link.setServiceParent, daemon.server)
    print("agent host ready", flush=True)
    reactor.run()


def make_keys(directory: str, count: int) -> None:
    from sysadmd.runtime import crypto

    os.makedirs(directory, exist_ok=True)
    for i in range(count):
        path = os.path.join(directory, f"agent{i}.pem")
        if not os.path.exists(path):
            with open(path, "wb") as f:
                f.write(crypto.private_pem(crypto.generate_private_key(2048)))
    path = os.path.join(directory, "client.pem")
    if not os.path.exists(path):
        with open(path, "wb") as f:
            f.write(crypto.private_pem(crypto.generate_private_key(2048)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--commands", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--keys", default="/tmp/sysadm-fleet-bench-keys", help="agent keys are cached here")
    parser.add_argument("--agent-host", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--state", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--client-pub", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.agent_host:
        agent_host(args)
        return

    from bench.common import Child, tempdir, twistd_argv
    from bridge.keys import open_keystore
    from sysadmd.runtime import crypto

    t = time.monotonic()
    make_keys(args.keys, args.agents)
    print(f"keys ready ({time.monotonic() - t:.1f} s)", flush=True)
    base = tempdir("fleetbench")
    bridge_state = os.path.join(base, "b")
    os.makedirs(bridge_state, mode=0o700)
    store = open_keystore(bridge_state)
    for i in range(args.agents):
        with open(os.path.join(args.keys, f"agent{i}.pem"), "rb") as f:
            store.import_key(f"agent{i}", crypto.public_pem(crypto.load_private_key(f.read())), role="server")
    with open(os.path.join(args.keys, "client.pem"), "rb") as f:
        client_key = crypto.load_private_key(f.read())
    client_pub = os.path.join(base, "client.pub")
    with open(client_pub, "w") as f:
        f.write(crypto.public_pem(client_key))
    store.import_key("client", crypto.public_pem(client_key), role="client")
    store.db.close()
    conf = os.path.join(base, "bridge.conf")
    with open(conf, "w") as f:
        f.write("MAX_CONNECTIONS_PER_ADDRESS=0\nKEYS_REFRESH_INTERVAL=0\n")
    bridge = Child(twistd_argv("sysadm-bridge", "--config", conf, "--port", "tcp:0:interface=127.0.0.1",
                               "--state-dir", bridge_state), "bridge")
    host = None
    try:
        import subprocess
        host_state = os.path.join(base, "agents")
        os.makedirs(host_state, mode=0o700)
        from bench.common import child_env
        host = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--agent-host", "--state", host_state,
                                 "--url", f"wss://127.0.0.1:{bridge.port}", "--count", str(args.agents),
                                 "--keys", args.keys, "--client-pub", client_pub],
                                cwd=ROOT, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        results = run_client(f"wss://127.0.0.1:{bridge.port}/", client_key, args)
        results["bridge_cpu_s"] = round(bridge.cpu_seconds(), 2)
        print(json.dumps(results, indent=2, sort_keys=True))
    finally:
        if host is not None:
            host.terminate()
            host.wait(10)
        bridge.stop()


def run_client(url: str, key, args) -> dict:
    from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol, connectWS
    from twisted.internet import defer, reactor, task

    from sysadmd.client.wsclient import insecure_client_tls
    from sysadmd.runtime import crypto
    from sysadmd.wire import fleetsig, seal

    md5 = crypto.md5_checksum(crypto.public_pem(key))
    out: dict = {}
    agent_keys: dict = {}

    class Client(WebSocketClientProtocol):
        def onOpen(self):
            self.pending = {}
            self.n = 0
            self.factory.opened.callback(self)

        def onMessage(self, payload, isBinary):
            msg = json.loads(payload)
            if msg.get("id") == "sysadm_bridge_request_ident" and msg.get("name") == "identify":
                self.send({"args": {"hostname": "bench", "type": "client"}, "id": msg["id"], "name": "response",
                           "namespace": "rpc"})
            elif msg.get("id") == "bridge_request_list_keys" and msg.get("name") == "settings":
                self.send({"args": {"md5_keys": [md5]}, "id": msg["id"], "name": "response", "namespace": "rpc"})
            elif msg.get("id") in self.pending and msg.get("name") in ("response", "error"):
                self.pending.pop(msg["id"]).callback(msg)

        def send(self, message):
            self.sendMessage(json.dumps(message).encode(), isBinary=False)

        def call(self, namespace, name, args):
            self.n += 1
            request_id = f"b{self.n}"
            d = defer.Deferred()
            self.pending[request_id] = d
            self.send({"args": args, "id": request_id, "name": name, "namespace": namespace})
            return d

    def commands_for(agent_ids, plain, sealed=True):
        batch = []
        for agent_id in agent_ids:
            command_id = uuid.uuid4().hex
            if sealed:
                payload = seal.seal_with_key(agent_keys[agent_id], seal.command_key(key, command_id, agent_id),
                                             plain.encode(), seal.fleet_context("command", command_id, agent_id))
            else:
                payload = plain
            batch.append({"id": command_id, "agent": agent_id, "payload": payload, "key": md5,
                          "signature": fleetsig.sign_command(key, command_id, agent_id, payload)})
        return batch

    def opened(reply):
        """The agent's result object of a fetched command (sealed ones opened and checked)."""
        args = reply["args"]
        text = args.get("result")
        if args.get("status") != "COMPLETE" or not isinstance(text, str):
            return {"ok": False}
        if seal.is_keyed(text):
            result_key = seal.result_key(seal.command_key(key, args["id"], args["agentId"]))
            text = seal.open_keyed(result_key, text, seal.fleet_context("result", args["id"], args["agentId"]))
        return json.loads(text)

    @defer.inlineCallbacks
    def execute_and_fetch(c, batch):
        reply = yield c.call("fleet", "execute", {"commands": batch, "ttl": 600})
        assert reply["name"] == "response", reply
        waits = [c.call("fleet", "wait", {"id": b["id"], "timeout": 600}) for b in batch]
        replies = yield defer.gatherResults(waits)
        return [opened(r) for r in replies]

    @defer.inlineCallbacks
    def forward(c, online, plain, sealed):
        """Store and forward --commands commands; commands/s until the last result is opened."""
        t = time.monotonic()
        done = []
        window = max(1, 500 // args.batch)  # the bridge allows 1000 waits per connection
        starts = list(range(0, args.commands, args.batch))
        for w in range(0, len(starts), window):
            batches = []
            for start in starts[w:w + window]:
                ids = [online[(start + i) % len(online)] for i in range(min(args.batch, args.commands - start))]
                batches.append(execute_and_fetch(c, commands_for(ids, plain, sealed)))
            done += yield defer.gatherResults(batches)
        elapsed = time.monotonic() - t
        ok = sum(1 for results in done for r in results if r.get("ok"))
        return ok, round(ok / elapsed, 1)

    @defer.inlineCallbacks
    def run():
        factory = WebSocketClientFactory(url, reactor=reactor)
        factory.protocol = Client
        factory.opened = defer.Deferred()
        connectWS(factory, insecure_client_tls(), timeout=10)
        c = yield factory.opened
        first = yield c.call("rpc", "auth_ssl", "")
        yield c.call("rpc", "auth_ssl", {"encrypted_string": crypto.sign_challenge(key, first["args"]["test_string"])})
        t0 = time.monotonic()
        while True:
            reply = yield c.call("fleet", "agents", {})
            online = [a["id"] for a in reply["args"]["agents"] if a["online"]]
            if len(online) >= args.agents:
                break
            if time.monotonic() - t0 > 120:
                raise RuntimeError(f"only {len(online)} of {args.agents} agents came online in 120 s")
            yield task.deferLater(reactor, 0.5, lambda: None)
        for a in reply["args"]["agents"]:
            agent_keys[a["id"]] = seal.agent_key(a.get("key"), a["id"])
        out["agents_online"] = len(online)
        out["agents_connect_s"] = round(time.monotonic() - t0, 2)
        rtts = [a["rtt"] for a in reply["args"]["agents"] if a.get("rtt") is not None]
        if rtts:
            out["rtt_ms_median_while_connecting"] = round(sorted(rtts)[len(rtts) // 2] * 1000, 2)
        # fan-out: one job to every agent, sealed
        job = json.dumps({"kind": "job", "commands": ["true"], "timeout": 300}, sort_keys=True)
        t = time.monotonic()
        results = yield execute_and_fetch(c, commands_for(online, job))
        out["fanout_agents"] = len(online)
        out["fanout_sealed_all_complete_s"] = round(time.monotonic() - t, 2)
        out["fanout_ok"] = sum(1 for r in results if r.get("ok"))
        # store and forward: API commands, in batches, all online; after a warm-up run,
        # sealed and plaintext runs alternate (so the agents' growing tables and the
        # machine's other load hit both modes alike)
        api = json.dumps({"kind": "api", "namespace": "rpc", "name": "identify", "args": {}}, sort_keys=True)
        yield forward(c, online, api, False)  # warm-up, not counted
        runs = {True: [], False: []}
        oks = []
        for sealed in (True, False, True, False):
            ok, rate = yield forward(c, online, api, sealed)
            oks.append(ok)
            runs[sealed].append(rate)
        out["forward_commands_ok"] = oks
        out["forward_sealed_commands_per_s"] = runs[True]
        out["forward_plaintext_commands_per_s"] = runs[False]
        out["forward_sealed_vs_plaintext"] = round(sum(runs[True]) / sum(runs[False]), 2)
        # accepting only: how fast the bridge stores new commands (they run afterwards)
        t = time.monotonic()
        stored = 0
        for start in range(0, args.commands, args.batch):
            batch = commands_for([online[(start + i) % len(online)] for i in range(min(args.batch, args.commands - start))],
                                 api)
            reply = yield c.call("fleet", "execute", {"commands": batch, "ttl": 600})
            stored += len(reply["args"]["accepted"])
        out["store_accept_commands_per_s"] = round(stored / (time.monotonic() - t), 1)
        # round-trip times once the agents are idle (pings every FLEET_PING_INTERVAL)
        yield task.deferLater(reactor, 6, lambda: None)
        reply = yield c.call("fleet", "agents", {})
        rtts = sorted(a["rtt"] for a in reply["args"]["agents"] if a.get("rtt") is not None)
        if rtts:
            out["rtt_ms_median_idle"] = round(rtts[len(rtts) // 2] * 1000, 2)
        c.sendClose()

    def stop(result):
        if reactor.running:
            reactor.stop()
        return result

    d = run()
    d.addErrback(lambda f: (out.setdefault("error", f.getErrorMessage()), f.printTraceback()))
    d.addBoth(stop)
    reactor.run()
    return out


if __name__ == "__main__":
    main()
