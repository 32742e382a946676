"""sysadm/systemmanager systeminfo, memorystats and cpupercentage over wss: request rate
and server CPU per request with 1 and with 20 concurrent clients.

    python -m bench.sysinfo_bench [--seconds 5]

sysadmd runs as a child process on 127.0.0.1; the load comes from the Node client
(bench/loadgen.js, one request in flight per connection) so the generator costs less
than the server (its CPU time is reported).  In the same run, rpc/query (no /proc work)
is the floor, and each action's uncached reading is timed in this process: with cached
sampling (SYSINFO_CACHE_SECONDS, default 1 s) the CPU per request must stay near the
floor and well under one reading, and must not grow with the number of clients, since
however many clients poll, /proc is read once per period.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from bench.common import Child, run_loadgen, save_results, tempdir, twistd_argv
from bench.rpc_bench import prepare_state

ACTIONS = ("systeminfo", "memorystats", "cpupercentage")
CLIENTS = (1, 20)


def uncached_cost_us(action: str, rounds: int = 200) -> float:
    """CPU microseconds of one real reading (no cache), measured in this process."""
    from twisted.internet import task

    from sysadmd.sysclasses.readings import HostReadings

    clock = task.Clock()
    host = HostReadings(clock, ttl=1.0)
    read = getattr(host, action)
    t0 = time.process_time()
    for _ in range(rounds):
        clock.advance(1.0)  # every call is a miss
        read()
    return (time.process_time() - t0) / rounds * 1e6


def measure(child: Child, url: str, request: dict, clients: int, seconds: float, key_file: str) -> dict:
    os.environ["LOADGEN_REQUEST"] = json.dumps(request)
    cpu0 = child.cpu_seconds()
    summary, client_cpu = run_loadgen(url, clients, 1, seconds, key_file)
    cpu1 = child.cpu_seconds()
    n = max(1, summary["requests"])
    return {"rps": summary["requests"] / summary["seconds"], "p50_ms": summary["p50_ms"], "p99_ms": summary["p99_ms"],
            "errors": summary["errors"], "server_cpu_us_per_req": (cpu1 - cpu0) / n * 1e6,
            "server_cpu_s": cpu1 - cpu0, "client_cpu_s": client_cpu}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args(argv)
    state = tempdir("benchsys")
    key_file = prepare_state(state)
    server = Child(twistd_argv("sysadmd", "--port", "tcp:0:interface=127.0.0.1", "--state-dir", state,
                               "--socket", "none"), "sysadmd")
    url = f"wss://127.0.0.1:{server.port}/"
    requests = [("rpc/query (floor)", {"namespace": "rpc", "name": "query", "args": {}}, None)]
    requests += [(a, {"namespace": "sysadm", "name": "systemmanager", "args": {"action": a}}, a) for a in ACTIONS]
    results = []
    try:
        for label, request, action in requests:
            uncached = uncached_cost_us(action) if action else None
            for clients in CLIENTS:
                r = measure(server, url, request, clients, args.seconds, key_file)
                r.update(label=label, clients=clients, uncached_reading_us=uncached)
                results.append(r)
                extra = f" | one uncached reading {uncached:7.0f} us" if uncached else ""
                print(f"{label:>18} x{clients:<2}: {r['rps']:7.0f} req/s  {r['server_cpu_us_per_req']:6.0f} us CPU/req  "
                      f"p50 {r['p50_ms']:.2f} ms p99 {r['p99_ms']:.2f} ms  errors {r['errors']}  "
                      f"(client cpu {r['client_cpu_s']:.1f}s vs server {r['server_cpu_s']:.1f}s){extra}", flush=True)
    finally:
        server.stop()
    save_results("sysinfo_bench", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
