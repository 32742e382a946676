"""sysadmd behind sysadm-bridge: rpc/query through the bridge vs direct, login time, relay MB/s.

    python -m bench.bridge_bench [--seconds 5] [--tries 20] [--relay-count 100] [--no-relay]

Real processes on 127.0.0.1: ``twistd -n sysadm-bridge`` and ``twistd -n sysadmd``,
linked the way an operator does it (``sysadmd bridge_add`` / ``bridge_export_key``,
``sysadm-bridge import_ssl_file``), and a Node client (bench/loadgen_bridge.js) so the
load generator is not what is measured; its CPU time is reported beside the bridge's
and the server's.

1. For each shape (connections x requests in flight): rpc/query round trips DIRECT to
   sysadmd and THROUGH the bridge to the same sysadmd, in the same run. Reported:
   req/s, p50/p99, CPU time per request of each process, the throughput ratio
   (target >= 0.6x) and the p50 latency the bridge adds.
2. Login time of a bridged client: wall time from opening the TCP connection to the
   server's token reply (identify, auth_ssl to the bridge, key list, pairing, md5_key
   auth_ssl with the server), median and p90 over --tries (target < 50 ms).
3. bench/bridge_relay_bench.py: 1 MiB frames relayed server -> client, MiB/s.

Results go to bench/results/bridge_bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from typing import List, Optional, Tuple

from bench.common import REPO, Child, child_env, ensure_node_ws, tempdir, twistd_argv
from sysadmd.runtime.crypto import generate_private_key, private_pem, public_pem

SHAPES = [(1, 1), (8, 4), (32, 8)]  # the same shapes as bench/rpc_bench.py
LINKED = "the bridge accepted our key"


def admin(kind: str, state: str, *args: str) -> str:
    module = {"sysadmd": "sysadmd.admin.main", "bridge": "bridge.admin"}[kind]
    proc = subprocess.run([sys.executable, "-m", module, "--state-dir", state, *args], cwd=REPO, env=child_env(),
                          capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


class Setup:
    """Bridge and server state dirs, the client key, both processes started and linked."""

    def __init__(self, base: str):
        self.base = base
        self.bridge_state = os.path.join(base, "bridge")
        self.server_state = os.path.join(base, "server")
        self.key_file = os.path.join(base, "client.pem")
        pub_file = os.path.join(base, "client.pub")
        key = generate_private_key(2048)
        with open(self.key_file, "wb") as f:
            f.write(private_pem(key))
        with open(pub_file, "w") as f:
            f.write(public_pem(key))
        self.config = os.path.join(base, "empty.conf")
        with open(self.config, "w") as f:
            f.write("# defaults\n")
        self.bridge: Optional[Child] = None
        self.server: Optional[Child] = None

    def start(self) -> None:
        base = self.base
        pub_file = os.path.join(base, "client.pub")
        self.bridge = Child(twistd_argv("sysadm-bridge", "--config", self.config, "--port", "tcp:0:interface=127.0.0.1",
                                        "--state-dir", self.bridge_state), "sysadm-bridge")
        server_key = os.path.join(base, "server.key")
        admin("sysadmd", self.server_state, "bridge_export_key", server_key)
        admin("sysadmd", self.server_state, "bridge_add", "bench", f"wss://127.0.0.1:{self.bridge.port}", "--verify", "pin")
        admin("sysadmd", self.server_state, "import_ssl_file", "root", pub_file, "bench")
        admin("bridge", self.bridge_state, "import_ssl_file", "server", server_key, "--role", "server")
        admin("bridge", self.bridge_state, "import_ssl_file", "client", pub_file, "--role", "client")
        self.server = Child(twistd_argv("sysadmd", "--config", self.config, "--port", "tcp:0:interface=127.0.0.1",
                                        "--state-dir", self.server_state, "--socket", "none"), "sysadmd")
        deadline = time.monotonic() + 30
        while not any(LINKED in line for line in self.server.lines):
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not link to the bridge:\n" + "".join(self.server.lines[-20:]))
            time.sleep(0.05)

    @property
    def bridge_url(self) -> str:
        return f"wss://127.0.0.1:{self.bridge.port}/"

    @property
    def server_url(self) -> str:
        return f"wss://127.0.0.1:{self.server.port}/"

    def stop(self) -> None:
        for child in (self.server, self.bridge):
            if child is not None:
                child.stop()


def node(*args: str, timeout: float) -> Tuple[dict, float]:
    """Run the load generator; returns (its JSON summary, its CPU seconds)."""
    env = dict(os.environ, NODE_PATH=ensure_node_ws())
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(["node", os.path.join(REPO, "bench", "loadgen_bridge.js"), *args], env=env,
                          capture_output=True, text=True, timeout=timeout)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed: {proc.stderr.strip()}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return json.loads(proc.stdout.strip().splitlines()[-1]), cpu


def measure(setup: Setup, mode: str, conns: int, inflight: int, seconds: float) -> dict:
    url = setup.bridge_url if mode == "bridge" else setup.server_url
    server0, bridge0 = setup.server.cpu_seconds(), setup.bridge.cpu_seconds()
    summary, client_cpu = node(mode, url, str(conns), str(inflight), str(seconds), setup.key_file, timeout=seconds + 120)
    server_cpu = setup.server.cpu_seconds() - server0
    bridge_cpu = setup.bridge.cpu_seconds() - bridge0
    n = max(1, summary["requests"])
    # CPU counts the connect/login phase and the warm-up second too, the same way for both modes.
    return {
        "rps": summary["requests"] / summary["seconds"],
        "p50_ms": summary["p50_ms"],
        "p90_ms": summary["p90_ms"],
        "p99_ms": summary["p99_ms"],
        "errors": summary["errors"],
        "server_cpu_s": server_cpu,
        "bridge_cpu_s": bridge_cpu,
        "client_cpu_s": client_cpu,
        "server_cpu_us_per_req": server_cpu / n * 1e6,
        "bridge_cpu_us_per_req": bridge_cpu / n * 1e6,
        "client_cpu_us_per_req": client_cpu / n * 1e6,
    }


def percentile(values: List[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def login_times(setup: Setup, tries: int) -> dict:
    summary, _ = node("authtime", setup.bridge_url, str(tries), setup.key_file, timeout=tries * 15 + 60)
    result = {}
    for phase in ("open_ms", "bridge_auth_ms", "paired_ms", "server_identify_ms", "server_challenge_ms", "total_ms"):
        values = summary[phase]
        result[phase] = {"median": statistics.median(values), "p90": percentile(values, 0.9), "max": max(values)}
    result["tries"] = len(summary["total_ms"])
    return result


def relay_bench(count: int) -> dict:
    """Run bench/bridge_relay_bench.py (its own bridge) and pick the MiB/s lines out."""
    proc = subprocess.run([sys.executable, os.path.join(REPO, "bench", "bridge_relay_bench.py"), "--count", str(count)],
                          cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"bridge_relay_bench failed:\n{proc.stdout}{proc.stderr}")
    direct = re.search(r"direct wss \(floor\):\s+([\d.]+) MiB/s", proc.stdout)
    relayed = re.search(r"through the bridge:\s+([\d.]+) MiB/s", proc.stdout)
    return {"direct_mib_s": float(direct.group(1)), "bridge_mib_s": float(relayed.group(1)), "output": proc.stdout}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per shape and mode")
    parser.add_argument("--tries", type=int, default=20, help="bridged logins timed")
    parser.add_argument("--relay-count", type=int, default=100, help="1 MiB frames for the relay bench")
    parser.add_argument("--no-relay", action="store_true", help="skip the relay throughput bench")
    args = parser.parse_args(argv)
    ensure_node_ws()
    base = tempdir("benchbridge")
    results: dict = {"shapes": []}
    setup = None
    try:
        setup = Setup(base)
        setup.start()
        for conns, inflight in SHAPES:
            direct = measure(setup, "direct", conns, inflight, args.seconds)
            bridged = measure(setup, "bridge", conns, inflight, args.seconds)
            row = {"shape": f"{conns}x{inflight}", "direct": direct, "bridge": bridged,
                   "throughput_ratio": bridged["rps"] / direct["rps"],
                   "added_p50_ms": bridged["p50_ms"] - direct["p50_ms"]}
            results["shapes"].append(row)
            print(f"{row['shape']:>5}: direct {direct['rps']:7.0f} req/s p50 {direct['p50_ms']:.2f} ms p99 {direct['p99_ms']:.2f} ms"
                  f" | bridged {bridged['rps']:7.0f} req/s p50 {bridged['p50_ms']:.2f} ms p99 {bridged['p99_ms']:.2f} ms"
                  f" | ratio x{row['throughput_ratio']:.2f}, +{row['added_p50_ms']:.2f} ms p50", flush=True)
            for mode, m in (("direct", direct), ("bridge", bridged)):
                print(f"       {mode:>6} cpu/req: server {m['server_cpu_us_per_req']:5.0f} us, bridge {m['bridge_cpu_us_per_req']:5.0f} us,"
                      f" client {m['client_cpu_us_per_req']:5.0f} us (cpu s: server {m['server_cpu_s']:.1f},"
                      f" bridge {m['bridge_cpu_s']:.1f}, client {m['client_cpu_s']:.1f}); errors {m['errors']}", flush=True)
        login = login_times(setup, args.tries)
        results["login"] = login
        total = login["total_ms"]
        print(f"bridged login (TCP connect -> server token), {login['tries']} tries: median {total['median']:.1f} ms,"
              f" p90 {total['p90']:.1f} ms, max {total['max']:.1f} ms", flush=True)
        print("  phases from connect (median): ws open {open_ms[median]:.1f} ms, bridge token {bridge_auth_ms[median]:.1f} ms,"
              " paired {paired_ms[median]:.1f} ms, server identify {server_identify_ms[median]:.1f} ms,"
              " server challenge {server_challenge_ms[median]:.1f} ms".format(**login), flush=True)
    finally:
        if setup is not None:
            setup.stop()
        shutil.rmtree(base, True)
    if not args.no_relay:
        relay = relay_bench(args.relay_count)
        results["relay"] = {k: v for k, v in relay.items() if k != "output"}
        print("relay bench (bench/bridge_relay_bench.py):")
        print("  " + relay["output"].strip().replace("\n", "\n  "), flush=True)
    out = os.path.join(REPO, "bench", "results")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "bridge_bench.json"), "w") as f:
        json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
