"""Relay throughput of sysadm-bridge: 1 MiB frames from a server peer to a client peer.

    python bench/bridge_relay_bench.py [--count 200] [--size 1048576]

Three processes on loopback: the real ``twistd -n sysadm-bridge``, a sender (role
server) and a receiver (role client), each an autobahn peer that authenticates with
``auth_ssl``.  The receiver acknowledges every 4th frame and the sender keeps at most
16 frames in flight, so nobody buffers without bound.  The floor is the same sender and
receiver talking wss directly, measured in the same run; the ratio is the cost of the
relay.  Reported: MB/s, and CPU seconds per GiB of each process (the bridge's from
``/proc`` through psutil), so a load generator that is the bottleneck shows up.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

WINDOW = 16
ACK_EVERY = 4


# --- the peer processes -----------------------------------------------------------------
def run_peer(args) -> None:
    from autobahn.twisted.websocket import (WebSocketClientFactory, WebSocketClientProtocol, WebSocketServerFactory,
                                            WebSocketServerProtocol, connectWS)
    from twisted.internet import reactor

    from sysadmd.runtime import crypto, tls
    from sysadmd.client.wsclient import insecure_client_tls

    key = crypto.load_private_key(open(args.key, "rb").read()) if args.key else None
    payload = ("x" * args.size).encode()
    result = {}

    class Peer:
        """Shared by the client (bridge or direct) and server (direct floor) protocols."""

        def setup(self):
            self.dest = None
            self.sent = self.acked = self.received = 0
            self.t0 = None

        def send(self, text):
            self.sendMessage(text.encode() if isinstance(text, str) else text, isBinary=False)

        def on_text(self, data: bytes):
            if data.startswith(b"{"):
                msg = json.loads(data)
                if msg.get("id") == "sysadm_bridge_request_ident":
                    self.send(json.dumps({"args": {"hostname": "bench", "type": args.role}, "id": msg["id"],
                                          "name": "response", "namespace": "rpc"}))
                    self.send(json.dumps({"args": "", "id": "auth", "name": "auth_ssl", "namespace": "rpc"}))
                elif msg.get("id") == "auth" and isinstance(msg.get("args"), dict):
                    sig = crypto.sign_challenge(key, msg["args"]["test_string"])
                    self.send(json.dumps({"args": {"encrypted_string": sig}, "id": "auth", "name": "auth_ssl",
                                          "namespace": "rpc"}))
                elif msg.get("id") == "bridge_request_list_keys":
                    # Both report the client key's checksum: the bridge pairs a client only on
                    # a key it proved, and a server on the keys registered on it.
                    self.send(json.dumps({"args": {"md5_keys": [args.pair_md5]}, "id": msg["id"], "name": "response",
                                          "namespace": "rpc"}))
                elif msg.get("name") == "bridge" and args.role == "server":
                    ids = msg["args"]["available_connections"]
                    if ids and self.dest is None:
                        self.dest = ids[0].encode()
                        self.start_sending()
                return
            source, _, body = data.partition(b"\n")
            if args.role == "server":
                self.acked += ACK_EVERY
                self.pump()
            else:
                if self.t0 is None:
                    self.t0 = time.perf_counter()
                self.received += 1
                if self.received % ACK_EVERY == 0:
                    self.send(source + b"\nack")
                if self.received == args.count:
                    self.finish(time.perf_counter() - self.t0)

        def start_sending(self):
            self.frame = self.dest + b"\n" + payload
            self.pump()

        def pump(self):
            while self.sent < args.count and self.sent - self.acked < WINDOW:
                self.send(self.frame)
                self.sent += 1
            if self.acked >= args.count:
                self.finish(None)

        def finish(self, seconds):
            cpu = os.times()
            result.update(seconds=seconds, cpu=cpu.user + cpu.system)
            print("RESULT " + json.dumps(result), flush=True)
            reactor.callLater(0.2, reactor.stop)

    class ClientPeer(Peer, WebSocketClientProtocol):
        def onOpen(self):
            self.setup()
            if args.direct and args.role == "server":
                self.dest = b"::direct"
                self.start_sending()

        def onMessage(self, data, isBinary):
            self.on_text(data)

    class SinkPeer(Peer, WebSocketServerProtocol):
        def onOpen(self):
            self.setup()

        def onMessage(self, data, isBinary):
            self.on_text(data)

    options = dict(maxMessagePayloadSize=64 << 20, maxFramePayloadSize=64 << 20, autoFragmentSize=0)
    if args.listen:  # direct floor: the receiver is the server end
        cert, key_pem = tls.make_self_signed("localhost")
        d = tempfile.mkdtemp()
        open(os.path.join(d, "c"), "wb").write(cert)
        open(os.path.join(d, "k"), "wb").write(key_pem)
        factory = WebSocketServerFactory(url=None)
        factory.protocol = SinkPeer
        factory.setProtocolOptions(**options)
        context = tls.server_context(os.path.join(d, "c"), os.path.join(d, "k"))
        shutil.rmtree(d, True)
        port = reactor.listenSSL(0, factory, context, interface="127.0.0.1")
        print(f"LISTENING {port.getHost().port}", flush=True)
    else:
        factory = WebSocketClientFactory(args.url)
        factory.protocol = ClientPeer
        factory.setProtocolOptions(**options)
        connectWS(factory, insecure_client_tls())
    reactor.run()


# --- the driver ---------------------------------------------------------------------------
def spawn_peer(*extra):
    return read_lines(subprocess.Popen([sys.executable, os.path.abspath(__file__), "peer", *extra],
                                       stdout=subprocess.PIPE, text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT)))


def read_lines(proc):
    """Read *proc*'s output on a thread, into ``proc.lines`` (None at its end), so its
    pipe never fills and :func:`wait_line` can wait with a timeout."""
    proc.lines = queue.Queue()

    def pump():
        for line in proc.stdout:
            proc.lines.put(line)
        proc.lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return proc


def wait_line(proc, pattern, timeout=120):
    """The first line of *proc*'s output matching *pattern*, within *timeout* seconds (a
    peer that stalls or dies makes this fail instead of hang)."""
    deadline = time.time() + timeout
    while True:
        try:
            line = proc.lines.get(timeout=max(0.0, deadline - time.time()))
        except queue.Empty:
            break
        if line is None:
            break
        match = re.search(pattern, line)
        if match:
            return match
    proc.kill()
    raise RuntimeError(f"no {pattern!r} from {' '.join(proc.args)} within {timeout} s")


def transfer(url_or_port, count, size, key_server, key_client, direct, pair_md5=""):
    common = ["--count", str(count), "--size", str(size), "--pair-md5", pair_md5]
    if direct:
        receiver = spawn_peer("--role", "client", "--listen", "--direct", *common)
        port = wait_line(receiver, r"LISTENING (\d+)").group(1)
        sender = spawn_peer("--role", "server", "--url", f"wss://127.0.0.1:{port}/", "--direct", *common)
    else:
        receiver = spawn_peer("--role", "client", "--url", url_or_port, "--key", key_client, *common)
        sender = spawn_peer("--role", "server", "--url", url_or_port, "--key", key_server, *common)
    got = json.loads(wait_line(receiver, r"RESULT (.*)").group(1))
    sent = json.loads(wait_line(sender, r"RESULT (.*)").group(1))
    for proc in (receiver, sender):
        proc.wait(timeout=10)
    return got["seconds"], got["cpu"], sent["cpu"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode")
    peer = sub.add_parser("peer")
    peer.add_argument("--role", required=True)
    peer.add_argument("--url")
    peer.add_argument("--key")
    peer.add_argument("--listen", action="store_true")
    peer.add_argument("--direct", action="store_true")
    peer.add_argument("--pair-md5", default="", help="the checksum both peers report (the client key's)")
    for p in (parser, peer):
        p.add_argument("--count", type=int, default=200)
        p.add_argument("--size", type=int, default=1 << 20)
    args = parser.parse_args()
    if args.mode == "peer":
        run_peer(args)
        return

    import psutil

    from bridge.keys import open_keystore
    from sysadmd.runtime import crypto

    state = tempfile.mkdtemp(prefix="brbench")
    try:
        keys = {}
        store = open_keystore(state)
        pair_md5 = ""
        for role in ("server", "client"):
            private = crypto.generate_private_key(2048)
            if role == "client":
                pair_md5 = crypto.md5_checksum(crypto.public_pem(private))
            keys[role] = os.path.join(state, f"{role}.key")
            with open(keys[role], "wb") as f:
                f.write(crypto.private_pem(private))
            store.import_key(role, crypto.public_pem(private), role)
        store.db.close()
        bridge = read_lines(subprocess.Popen([sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
                                   "sysadm-bridge", "--port", "tcp:0:interface=127.0.0.1", "--state-dir", state],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                                  env=dict(os.environ, PYTHONPATH=ROOT)))
        try:
            port = wait_line(bridge, r"listening on \S+ port (\d+)").group(1)
            url = f"wss://127.0.0.1:{port}/"
            mib = args.count * args.size / (1 << 20)
            gib = args.count * args.size / (1 << 30)
            floor_s, floor_rcpu, floor_scpu = transfer(None, args.count, args.size, None, None, direct=True)
            before = psutil.Process(bridge.pid).cpu_times()
            relay_s, relay_rcpu, relay_scpu = transfer(url, args.count, args.size, keys["server"], keys["client"], direct=False,
                                                      pair_md5=pair_md5)
            after = psutil.Process(bridge.pid).cpu_times()
            bridge_cpu = (after.user + after.system) - (before.user + before.system)
            print(f"payload {args.size} bytes x {args.count} frames ({mib:.0f} MiB)")
            print(f"direct wss (floor): {mib / floor_s:8.1f} MiB/s   sender cpu {floor_scpu / gib:5.2f} s/GiB, receiver cpu {floor_rcpu / gib:5.2f} s/GiB")
            print(f"through the bridge: {mib / relay_s:8.1f} MiB/s   sender cpu {relay_scpu / gib:5.2f} s/GiB, receiver cpu {relay_rcpu / gib:5.2f} s/GiB,"
                  f" bridge cpu {bridge_cpu / gib:5.2f} s/GiB")
            print(f"relay/direct throughput ratio: {floor_s / relay_s:.2f}")
        finally:
            bridge.terminate()
            bridge.wait(timeout=10)
    finally:
        shutil.rmtree(state, True)


if __name__ == "__main__":
    main()
