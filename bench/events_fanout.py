"""Event fan-out benchmark: one dispatcher event to many subscribed sessions.

Run on demand::

    python -m bench.events_fanout [--conns 1000] [--events 20] [--clients 4]

For each target — ``sysadmd`` (the real daemon, built in a child process, events
published through ``server.events``) and ``bare`` (a minimal autobahn server that sends
one pre-encoded text to every subscriber: the floor) — it starts the server, then several
client processes that open ``--conns`` connections to the local Unix socket (no TLS
handshake cost) and subscribe to ``dispatcher``.  The server then publishes ``--events``
events, each carrying ``time.time()`` at publish; clients record ``time.time()`` at receipt.
Reported: p50/p99/max delivery latency, server CPU per event (one fan-out) and the
clients' CPU in the same phase (to show the load generator is not the bottleneck), and
the sysadmd/bare ratio.  Loopback only; every process stops by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List

PUBLISH_GAP = 0.1  # seconds between events
SETTLE = 0.5  # seconds after the last subscription before the first event
DEADLINE = 90.0  # no process of a run lives longer than this


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def event_args(seq: int) -> Dict[str, Any]:
    return {"state": "running", "process_id": f"bench-{seq}", "cmd_list": ["make -j2 world"],
            "current_cmd": "make -j2 world", "time_started": "2026-11-23T17:00:01", "seq": seq,
            "sent": time.time()}


# --- server side (child process) ---------------------------------------------------
def serve(target: str, socket_path: str, conns: int, events: int) -> None:
    raise_nofile()
    from twisted.internet import reactor, task
    import psutil

    me = psutil.Process()
    if target == "sysadmd":
        from sysadmd import config as configmod
        from sysadmd.assembly import build

        state = os.path.dirname(socket_path)
        cfg = configmod.load(None, {"PORT": "tcp:0:interface=127.0.0.1", "STATE_DIR": state, "SOCKET": socket_path,
                                    "MAX_CONNECTIONS": str(conns + 100)})
        daemon = build(cfg, reactor)
        daemon.startService()
        hub = daemon.server.events
        count = lambda: hub.subscriber_count("dispatcher")  # noqa: E731
        publish = lambda args: hub.publish("dispatcher", args)  # noqa: E731
    else:
        count, publish = bare_server(reactor, socket_path)

    def wait_subscribed():
        if count() >= conns:
            loop.stop()
            reactor.callLater(SETTLE, run)

    def run():
        before = me.cpu_times()
        for i in range(events):
            # the send time is taken when the event is published, not when it is scheduled
            reactor.callLater(i * PUBLISH_GAP, lambda i=i: publish(event_args(i)))

        def report():
            after = me.cpu_times()
            cpu = (after.user - before.user) + (after.system - before.system)
            print("RESULT " + json.dumps({"server_cpu": cpu, "subscribers": count()}), flush=True)
            reactor.callLater(1.0, reactor.stop)

        reactor.callLater(events * PUBLISH_GAP + 1.0, report)

    loop = task.LoopingCall(wait_subscribed)
    loop.start(0.05)
    reactor.callLater(DEADLINE, reactor.stop)
    print("READY", flush=True)
    reactor.run()


def bare_server(reactor: Any, socket_path: str):
    """The floor: autobahn, one encoded text sent to every subscriber."""
    from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
    from twisted.internet import endpoints

    subscribers: set = set()

    class Bare(WebSocketServerProtocol):
        def onMessage(self, payload, isBinary):
            request = json.loads(payload)
            if request.get("name") == "subscribe":
                subscribers.add(self)
                reply = {"args": {"subscribe": "dispatcher"}, "id": request["id"], "name": "response", "namespace": "events"}
                self.sendMessage(json.dumps(reply, separators=(",", ":"), sort_keys=True).encode())

        def onClose(self, wasClean, code, reason):
            subscribers.discard(self)

    factory = WebSocketServerFactory(url=None)
    factory.protocol = Bare
    endpoints.UNIXServerEndpoint(reactor, socket_path).listen(factory)

    def publish(args):
        text = json.dumps({"args": args, "id": "", "name": "dispatcher", "namespace": "events"},
                          separators=(",", ":"), sort_keys=True).encode()
        for proto in list(subscribers):
            proto.sendMessage(text)

    return (lambda: len(subscribers)), publish


# --- client side (child process) ---------------------------------------------------
# A raw-socket WebSocket client (handshake, one masked subscribe frame, then unmasked
# frames read with epoll): a few microseconds per event, far below what the server
# spends per send, so the load generator is not what is measured.
SUBSCRIBE = b'{"args":["dispatcher"],"id":"s","name":"subscribe","namespace":"events"}'
EVENT_END = b'"name":"dispatcher","namespace":"events"}'


def masked_text_frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126
    return bytes([0x81, 0x80 | len(payload)]) + mask + body


def open_subscriber(socket_path: str):
    import base64
    import socket

    for attempt in range(50):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(socket_path)
            break
        except (BlockingIOError, ConnectionRefusedError):
            sock.close()  # listen backlog full: retry
            time.sleep(0.01 * (attempt + 1))
    else:
        raise RuntimeError("could not connect")
    key = base64.b64encode(os.urandom(16))
    sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError("server closed during the handshake")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(head.split(b"\r\n")[0].decode())
    sock.sendall(masked_text_frame(SUBSCRIBE))
    sock.setblocking(False)
    return sock, head.split(b"\r\n\r\n", 1)[1]


def frames(buf: bytearray):
    """Pop complete unmasked server frames off *buf*; yields payloads."""
    while len(buf) >= 2:
        length, header = buf[1] & 0x7F, 2
        if length == 126:
            if len(buf) < 4:
                return
            length, header = int.from_bytes(buf[2:4], "big"), 4
        elif length == 127:
            if len(buf) < 10:
                return
            length, header = int.from_bytes(buf[2:10], "big"), 10
        if len(buf) < header + length:
            return
        payload = bytes(buf[header:header + length])
        del buf[:header + length]
        yield payload


def client(socket_path: str, count: int, events: int) -> None:
    import selectors

    raise_nofile()
    selector = selectors.DefaultSelector()
    buffers = {}
    for _ in range(count):
        sock, rest = open_subscriber(socket_path)
        buffers[sock] = bytearray(rest)
        selector.register(sock, selectors.EVENT_READ)
    latencies: List[float] = []
    subscribed = 0
    cpu_start = 0.0
    wanted = count * events
    deadline = time.time() + DEADLINE

    def consume(buf: bytearray) -> None:
        nonlocal subscribed, cpu_start
        for payload in frames(buf):
            if payload.endswith(EVENT_END):
                mark = payload.find(b'"sent":') + 7
                end = payload.find(b",", mark)
                latencies.append(time.time() - float(payload[mark:end if end > 0 else payload.find(b"}", mark)]))
            elif b'"id":"s"' in payload:
                subscribed += 1
                if subscribed == count:
                    cpu_start = time.process_time()
                    print("SUBSCRIBED", flush=True)

    for buf in buffers.values():
        consume(buf)
    while len(latencies) < wanted and time.time() < deadline:
        for key, _ in selector.select(timeout=1.0):
            try:
                data = key.fileobj.recv(262144)
            except BlockingIOError:
                continue
            if not data:
                selector.unregister(key.fileobj)
                continue
            buf = buffers[key.fileobj]
            buf += data
            consume(buf)
    cpu = time.process_time() - cpu_start
    print("RESULT " + json.dumps({"latencies": latencies, "cpu": cpu}), flush=True)
    for sock in buffers:
        sock.close()


# --- orchestration -------------------------------------------------------------------
def percentile(values: List[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def read_line(proc: subprocess.Popen, prefix: str) -> str:
    while True:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"process {proc.args[-6:]} ended before printing {prefix}")
        if line.startswith(prefix):
            return line[len(prefix):].strip()


def run_target(target: str, conns: int, events: int, clients: int) -> Dict[str, Any]:
    workdir = tempfile.mkdtemp(prefix="fan", dir="/tmp")
    socket_path = os.path.join(workdir, "s.sock")
    me = [sys.executable, "-m", "bench.events_fanout"]
    procs: List[subprocess.Popen] = []
    try:
        server = subprocess.Popen(me + ["--serve", target, "--socket", socket_path, "--conns", str(conns),
                                        "--events", str(events)], stdout=subprocess.PIPE, text=True)
        procs.append(server)
        read_line(server, "READY")
        while not os.path.exists(socket_path):
            time.sleep(0.05)
        started = time.time()
        shares = [conns // clients + (1 if i < conns % clients else 0) for i in range(clients)]
        workers = [subprocess.Popen(me + ["--client", "--socket", socket_path, "--conns", str(n), "--events", str(events)],
                                    stdout=subprocess.PIPE, text=True) for n in shares]
        procs.extend(workers)
        for worker in workers:
            read_line(worker, "SUBSCRIBED")
        connect_seconds = time.time() - started
        server_result = json.loads(read_line(server, "RESULT "))
        latencies: List[float] = []
        client_cpu = 0.0
        for worker in workers:
            result = json.loads(read_line(worker, "RESULT "))
            latencies.extend(result["latencies"])
            client_cpu += result["cpu"]
        return {
            "target": target, "deliveries": len(latencies), "expected": conns * events,
            "p50_ms": 1000 * percentile(latencies, 50), "p99_ms": 1000 * percentile(latencies, 99),
            "max_ms": 1000 * max(latencies), "server_cpu_ms_per_event": 1000 * server_result["server_cpu"] / events,
            "clients_cpu_ms_per_event": 1000 * client_cpu / events, "connect_s": connect_seconds,
        }
    finally:
        deadline = time.time() + 10
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--conns", type=int, default=1000)
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--serve", choices=("sysadmd", "bare"))
    parser.add_argument("--client", action="store_true")
    parser.add_argument("--socket")
    args = parser.parse_args()
    if args.serve:
        return serve(args.serve, args.socket, args.conns, args.events)
    if args.client:
        return client(args.socket, args.conns, args.events)

    raise_nofile()
    print(f"fan-out of {args.events} dispatcher events to {args.conns} Unix-socket subscribers "
          f"({args.clients} client processes, {PUBLISH_GAP * 1000:g} ms apart)")
    results = {t: run_target(t, args.conns, args.events, args.clients) for t in ("sysadmd", "bare")}
    for r in results.values():
        print(f"{r['target']:8} deliveries {r['deliveries']}/{r['expected']}  p50 {r['p50_ms']:.1f} ms  "
              f"p99 {r['p99_ms']:.1f} ms  max {r['max_ms']:.1f} ms  server CPU {r['server_cpu_ms_per_event']:.1f} ms/event  "
              f"clients CPU {r['clients_cpu_ms_per_event']:.1f} ms/event  connect+subscribe {r['connect_s']:.1f} s")
    ours, floor = results["sysadmd"], results["bare"]
    print(f"ratio sysadmd/bare: p50 {ours['p50_ms'] / floor['p50_ms']:.2f}  p99 {ours['p99_ms'] / floor['p99_ms']:.2f}  "
          f"server CPU {ours['server_cpu_ms_per_event'] / floor['server_cpu_ms_per_event']:.2f}")
    print(f"target p99 < 100 ms: {'met' if ours['p99_ms'] < 100 else 'NOT met'}")


if __name__ == "__main__":
    main()
