"""Replay the resource attacks of issue 7 against real daemons and report what they cost.

    python -m bench.soak_attacks [--seconds 15] [--only 4,5,7,13,16] [--no-bridge]

Real processes on 127.0.0.1: ``twistd -n sysadmd`` (and ``twistd -n sysadm-bridge`` for
attacks 4 and 5), each on its default limits.  Every attack runs for ``--seconds`` (and
is bounded by a count as well), from threads with plain blocking sockets:

* **4 ping flood** — 4 connections send 125-byte pings as fast as the daemon takes them
  and never read a pong;
* **5 empty continuations** — connections open a message and send empty continuation
  frames until closed, then reconnect;
* **7 parked requests** — a wrong-password ``rpc/auth`` (checked by the daemon's real PAM
  checker, which may be slow), then small requests queued behind it, until closed;
* **13 connection exhaustion** — up to 1,100 TCP connections opened and held, each
  trickling one handshake byte a second;
* **16 big messages** — anonymous 16 MiB messages over TLS, plus authenticated 15 MiB
  messages (one big string, and one with too many JSON values) over the local socket.

Reported for each: the daemon's RSS (psutil) before, at its peak during and 3 s after the
attack, and the round-trip latency (p50/p99/max) of another client calling ``rpc/query``
over the local socket every 20 ms during the attack (the local socket is not subject to
the per-address connection cap the attack from 127.0.0.1 runs into; for the bridge the
probe calls ``rpc/identify`` over TLS).  Results go to bench/results/soak_attacks.json.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import ssl
import statistics
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from bench.common import Child, save_results, tempdir, twistd_argv
from sysadmd.wire import frames

PING = frames.encode_frame(frames.PING, b"p" * 125, mask=b"\x01\x02\x03\x04")


# --- a blocking WebSocket client ------------------------------------------------------
class WS:
    def __init__(self, port: Optional[int] = None, *, unix: Optional[str] = None, timeout: float = 10.0,
                 handshake: bool = True):
        if unix is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(unix)
        else:
            raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            sock = ctx.wrap_socket(raw)
        self.sock = sock
        self.reader = frames.FrameReader(1 << 30, masked=False)
        self.rest = b""
        if handshake:
            key = base64.b64encode(os.urandom(16)).decode()
            sock.sendall((f"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(4096)
                if not chunk:
                    raise ConnectionError("closed during the handshake")
                head += chunk
            head, rest = head.split(b"\r\n\r\n", 1)
            if b" 101 " not in head.split(b"\r\n", 1)[0]:
                raise ConnectionError(head.split(b"\r\n", 1)[0].decode("latin-1"))
            self.reader.feed(rest)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_text(self, text: str) -> None:
        self.sock.sendall(frames.encode_frame(frames.TEXT, text.encode(), mask=os.urandom(4)))

    def recv_frame(self) -> Tuple[int, bytes]:
        while True:
            frame = self.reader.pop()
            if frame is not None:
                return frame
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed")
            self.reader.feed(data)

    def call(self, namespace: str, name: str, args: Any, request_id: str) -> dict:
        self.send_text(json.dumps({"namespace": namespace, "name": name, "id": request_id, "args": args}))
        while True:
            op, payload = self.recv_frame()
            if op == frames.CLOSE:
                raise ConnectionError(f"closed: {frames.parse_close(payload)}")
            if op == frames.TEXT:
                message = json.loads(payload)
                if message.get("id") == request_id:
                    return message

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


# --- measuring --------------------------------------------------------------------------
class RssSampler(threading.Thread):
    def __init__(self, child: Child):
        super().__init__(daemon=True)
        self.child = child
        self.samples: List[Tuple[float, int]] = []
        self.running = True

    def run(self) -> None:
        while self.running:
            try:
                self.samples.append((time.monotonic(), self.child.ps.memory_info().rss))
            except Exception:
                return
            time.sleep(0.1)

    def peak(self, start: float, end: float) -> int:
        values = [rss for t, rss in self.samples if start <= t <= end]
        return max(values) if values else 0


class Probe(threading.Thread):
    """Calls *call()* every 20 ms and records round-trip latencies."""

    def __init__(self, connect: Callable[[], WS], call: Callable[[WS, int], None]):
        super().__init__(daemon=True)
        self.connect = connect
        self.call = call
        self.latencies: List[Tuple[float, float]] = []
        self.errors = 0
        self.running = True

    def run(self) -> None:
        ws = None
        n = 0
        while self.running:
            try:
                if ws is None:
                    ws = self.connect()
                n += 1
                t0 = time.monotonic()
                self.call(ws, n)
                self.latencies.append((t0, time.monotonic() - t0))
            except Exception:
                self.errors += 1
                if ws is not None:
                    ws.close()
                ws = None
                time.sleep(0.1)
            time.sleep(0.02)

    def window(self, start: float, end: float) -> Dict[str, float]:
        values = sorted(d for t, d in self.latencies if start <= t <= end)
        if not values:
            return {"count": 0}
        p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
        return {"count": len(values), "p50_ms": statistics.median(values) * 1e3, "p99_ms": p99 * 1e3,
                "max_ms": values[-1] * 1e3}


def run_attack(name: str, child: Child, probe: Probe, sampler: RssSampler, seconds: float,
               workers: List[Callable[[Callable[[], bool], Dict[str, int]], None]]) -> Dict[str, Any]:
    time.sleep(1.0)
    before = child.ps.memory_info().rss
    stats: Dict[str, int] = {}
    lock = threading.Lock()
    start = time.monotonic()
    deadline = start + seconds

    def keep_going() -> bool:
        return time.monotonic() < deadline

    def wrap(worker):
        local: Dict[str, int] = {}
        try:
            worker(keep_going, local)
        except Exception as e:  # an attacker thread must not end the bench
            local["worker_errors"] = local.get("worker_errors", 0) + 1
            local.setdefault("last_error_" + type(e).__name__, 1)
        with lock:
            for k, v in local.items():
                stats[k] = stats.get(k, 0) + v

    threads = [threading.Thread(target=wrap, args=(w,), daemon=True) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 30)
    end = time.monotonic()
    time.sleep(3.0)
    after = child.ps.memory_info().rss
    result = {
        "attack": name,
        "seconds": round(end - start, 1),
        "rss_before_mib": round(before / 2 ** 20, 1),
        "rss_peak_mib": round(max(sampler.peak(start, end), before) / 2 ** 20, 1),
        "rss_after_mib": round(after / 2 ** 20, 1),
        "probe": probe.window(start, end),
        "probe_errors_total": probe.errors,
        "alive": child.proc.poll() is None,
        "attack_counts": stats,
    }
    p = result["probe"]
    print(f"{name:<34} RSS {result['rss_before_mib']:6.1f} -> peak {result['rss_peak_mib']:6.1f} -> after "
          f"{result['rss_after_mib']:6.1f} MiB | probe p50 {p.get('p50_ms', float('nan')):6.1f} ms p99 "
          f"{p.get('p99_ms', float('nan')):6.1f} ms max {p.get('max_ms', float('nan')):7.1f} ms (n={p['count']}) | "
          f"{stats}", flush=True)
    return result


# --- the attacks ------------------------------------------------------------------------
def ping_flood(port: int, max_bytes: int = 512 * 2 ** 20):
    def worker(keep_going, stats):
        ws = WS(port)
        ws.sock.settimeout(0.5)
        burst = PING * 500
        sent = 0
        while keep_going() and sent < max_bytes:
            try:
                ws.sock.sendall(burst)
                sent += len(burst)
            except (socket.timeout, ssl.SSLWantWriteError):
                stats["send_blocked"] = stats.get("send_blocked", 0) + 1
            except OSError:
                stats["closed_by_daemon"] = stats.get("closed_by_daemon", 0) + 1
                break
        stats["ping_mib_sent"] = stats.get("ping_mib_sent", 0) + sent // 2 ** 20
        ws.close()
    return worker


def continuation_flood(port: int, max_connections: int = 2000):
    empty = frames.encode_frame(frames.CONTINUATION, b"", fin=False, mask=b"\x00\x00\x00\x00") * 2000

    def worker(keep_going, stats):
        opened = 0
        while keep_going() and opened < max_connections:
            try:
                ws = WS(port)
            except OSError:
                stats["connect_failed"] = stats.get("connect_failed", 0) + 1
                time.sleep(0.05)
                continue
            opened += 1
            ws.sock.settimeout(0.5)
            try:
                ws.send(frames.encode_frame(frames.TEXT, b"{", fin=False, mask=b"\x00\x00\x00\x00"))
                while keep_going():
                    ws.send(empty)
                    stats["empty_frames_sent"] = stats.get("empty_frames_sent", 0) + 2000
            except (OSError, socket.timeout):
                stats["closed_by_daemon"] = stats.get("closed_by_daemon", 0) + 1
            ws.close()
        stats["connections"] = stats.get("connections", 0) + opened
    return worker


def parked_requests(port: int, max_connections: int = 500):
    small = frames.encode_frame(frames.TEXT, b'{"namespace":"rpc","name":"identify","id":"x","args":""}',
                                mask=b"\x00\x00\x00\x00")
    burst = small * 2000

    def worker(keep_going, stats):
        opened = 0
        while keep_going() and opened < max_connections:
            try:
                ws = WS(port)
            except OSError:
                stats["connect_failed"] = stats.get("connect_failed", 0) + 1
                time.sleep(0.05)
                continue
            opened += 1
            ws.sock.settimeout(0.5)
            try:
                ws.send_text(json.dumps({"namespace": "rpc", "name": "auth", "id": "a",
                                         "args": {"username": "root", "password": "wrong-" + os.urandom(4).hex()}}))
                while keep_going():
                    ws.send(burst)
                    stats["requests_sent"] = stats.get("requests_sent", 0) + 2000
            except (OSError, socket.timeout):
                stats["closed_or_blocked"] = stats.get("closed_or_blocked", 0) + 1
            ws.close()
        stats["connections"] = stats.get("connections", 0) + opened
    return worker


def connection_exhaustion(port: int, max_connections: int = 1100):
    def worker(keep_going, stats):
        held: List[socket.socket] = []
        refused = 0
        attempts = 0
        head = b"GET / HTTP/1.1\r\nHost: localhost\r\n"
        position = 0
        peak = 0
        while keep_going():
            while len(held) < max_connections and attempts < 20 * max_connections and keep_going():
                attempts += 1
                try:
                    s = socket.create_connection(("127.0.0.1", port), timeout=2)
                    s.setblocking(False)
                    held.append(s)
                except OSError:
                    refused += 1
                    break
            alive = []
            for s in held:  # one byte each (plain bytes: they never finish a TLS handshake)
                try:
                    s.send(head[position % len(head):position % len(head) + 1])
                    try:
                        if s.recv(1, socket.MSG_PEEK) == b"":
                            raise ConnectionError
                    except BlockingIOError:
                        pass
                    alive.append(s)
                except OSError:
                    refused += 1
                    s.close()
            held = alive
            peak = max(peak, len(held))
            position += 1
            time.sleep(1.0)
        stats["peak_held"] = peak
        stats["closed_or_refused"] = refused
        stats["attempts"] = attempts
        for s in held:
            s.close()
    return worker


def big_anonymous(port: int, max_messages: int = 200):
    size = 16 * 2 ** 20
    body = b"{" + b" " * (size - 2) + b"}"
    message = frames.encode_frame(frames.TEXT, body, mask=b"\x00\x00\x00\x00")

    def worker(keep_going, stats):
        sent = 0
        while keep_going() and sent < max_messages:
            ws = None
            try:
                ws = WS(port)
                ws.sock.settimeout(5)
                ws.send(message)  # the daemon drops what follows a refused header unbuffered
                op, payload = ws.recv_frame()
                code = frames.parse_close(payload)[0] if op == frames.CLOSE else f"opcode {op}"
                stats[f"closed_{code}"] = stats.get(f"closed_{code}", 0) + 1
            except (OSError, socket.timeout, ConnectionError):
                stats["dropped"] = stats.get("dropped", 0) + 1
            sent += 1
            if ws is not None:
                ws.close()
    return worker


def big_authenticated(unix: str, max_messages: int = 40):
    string_msg = json.dumps({"namespace": "rpc", "name": "identify", "id": "s", "args": {"pad": "p" * (15 * 2 ** 20)}})
    values_msg = json.dumps({"namespace": "rpc", "name": "identify", "id": "v", "args": [{}] * (5 * 2 ** 20 // 3)},
                            separators=(",", ":"))

    def worker(keep_going, stats):
        sent = 0
        ws = WS(unix=unix, timeout=30)
        while keep_going() and sent < max_messages:
            for text, rid in ((string_msg, "s"), (values_msg, "v")):
                ws.send_text(text)
                while True:
                    op, payload = ws.recv_frame()
                    reply = json.loads(payload) if op == frames.TEXT else None
                    # a message refused before it was parsed gets an error without an id
                    if reply is not None and reply.get("id") in (rid, ""):
                        kind = "answered" if reply.get("name") == "response" else "refused"
                        stats[f"{rid}_{kind}"] = stats.get(f"{rid}_{kind}", 0) + 1
                        break
                sent += 1
        ws.close()
    return worker


# --- main -------------------------------------------------------------------------------
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each attack")
    parser.add_argument("--only", default="4,5,7,13,16", help="attacks to run (comma-separated)")
    parser.add_argument("--no-bridge", action="store_true", help="skip the bridge runs of attacks 4 and 5")
    args = parser.parse_args(argv)
    only = {a.strip() for a in args.only.split(",")}
    results: List[Dict[str, Any]] = []

    state = tempdir("soak")
    sock_path = os.path.join(state, "s.sock")
    sysadmd = Child(twistd_argv("sysadmd", "--port", "tcp:0:interface=127.0.0.1", "--state-dir", state,
                                "--socket", sock_path), "sysadmd")
    try:
        for _ in range(100):
            if os.path.exists(sock_path):
                break
            time.sleep(0.1)
        sampler = RssSampler(sysadmd)
        sampler.start()
        probe = Probe(lambda: WS(unix=sock_path),
                      lambda ws, n: ws.call("rpc", "query", {}, f"q{n}"))
        probe.start()
        port = sysadmd.port
        plan = [
            ("4", "sysadmd: 4 ping flood", [ping_flood(port) for _ in range(4)]),
            ("5", "sysadmd: 5 empty continuations", [continuation_flood(port) for _ in range(4)]),
            ("7", "sysadmd: 7 requests behind a login", [parked_requests(port) for _ in range(4)]),
            ("13", "sysadmd: 13 connection exhaustion", [connection_exhaustion(port)]),
            ("16", "sysadmd: 16 big messages", [big_anonymous(port) for _ in range(4)] + [big_authenticated(sock_path)]),
        ]
        for key, name, workers in plan:
            if key in only:
                results.append(run_attack(name, sysadmd, probe, sampler, args.seconds, workers))
        probe.running = False
        sampler.running = False
    finally:
        sysadmd.stop()

    if not args.no_bridge and ({"4", "5"} & only):
        bstate = tempdir("soakb")
        bridge = Child(twistd_argv("sysadm-bridge", "--port", "tcp:0:interface=127.0.0.1", "--state-dir", bstate), "bridge")
        try:
            sampler = RssSampler(bridge)
            sampler.start()
            probe = Probe(lambda: _bridge_probe(bridge.port), lambda ws, n: ws.call("rpc", "identify", "", f"i{n}"))
            probe.start()
            if "4" in only:
                results.append(run_attack("bridge: 4 ping flood", bridge, probe, sampler, args.seconds,
                                          [ping_flood(bridge.port) for _ in range(4)]))
            if "5" in only:
                results.append(run_attack("bridge: 5 empty continuations", bridge, probe, sampler, args.seconds,
                                          [continuation_flood(bridge.port) for _ in range(4)]))
            probe.running = False
            sampler.running = False
        finally:
            bridge.stop()

    save_results("soak_attacks", results)
    return 0


def _bridge_probe(port: int) -> WS:
    ws = WS(port)
    # the bridge speaks first (its identify request); answer as a client would
    ws.call("rpc", "identify", "", "hello")
    return ws


if __name__ == "__main__":
    sys.exit(main())
