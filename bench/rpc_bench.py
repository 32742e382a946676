"""rpc/query round trips over wss: sysadmd against a bare Twisted+autobahn floor.

    python -m bench.rpc_bench [--seconds 5]

Both servers run as child processes on 127.0.0.1 with the same TLS certificate; the
load comes from a Node client (bench/loadgen.js) so the generator is not what is
measured (its CPU time is reported too). For each shape (connections x requests in
flight) it reports throughput, latency percentiles and the server's CPU time per
request, then the ratios sysadmd/floor measured in the same run. Targets (issue 2):
throughput >= 0.85x the floor, CPU per request <= 1.25x.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from bench.common import REPO, Child, child_env, run_loadgen, save_results, tempdir, twistd_argv
from sysadmd.runtime.crypto import generate_private_key, private_pem, public_pem

SHAPES = [(1, 1), (8, 4), (32, 8)]


def prepare_state(state: str) -> str:
    """A state dir with a registered key for root; returns the private key file."""
    key = generate_private_key(2048)
    key_file = os.path.join(state, "bench_client.key")
    pub_file = os.path.join(state, "bench_client.pub")
    with open(key_file, "wb") as f:
        f.write(private_pem(key))
    with open(pub_file, "w") as f:
        f.write(public_pem(key))
    subprocess.run([sys.executable, "-c", "import sys; from sysadmd.admin.main import main; sys.exit(main())",
                    "--state-dir", state, "import_ssl_file", "root", pub_file, "bench"],
                   cwd=REPO, env=child_env(), check=True, capture_output=True)
    return key_file


def measure(child: Child, url: str, conns: int, inflight: int, seconds: float, key_file=None) -> dict:
    cpu0 = child.cpu_seconds()
    summary, client_cpu = run_loadgen(url, conns, inflight, seconds, key_file)
    cpu1 = child.cpu_seconds()
    n = max(1, summary["requests"])
    return {
        "rps": summary["requests"] / summary["seconds"],
        "p50_ms": summary["p50_ms"],
        "p99_ms": summary["p99_ms"],
        "errors": summary["errors"],
        # server CPU includes the connect/login phase and the warm-up second; it is
        # counted the same way for both servers.
        "server_cpu_us_per_req": (cpu1 - cpu0) / n * 1e6,
        "client_cpu_s": client_cpu,
        "server_cpu_s": cpu1 - cpu0,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args(argv)
    state = tempdir("benchrpc")
    key_file = prepare_state(state)
    sysadmd = Child(twistd_argv("sysadmd", "--port", "tcp:0:interface=127.0.0.1", "--state-dir", state, "--socket", "none"), "sysadmd")
    try:
        floor = Child([sys.executable, "-m", "bench.floor_server", os.path.join(state, "server.crt"), os.path.join(state, "server.key")], "floor")
    except Exception:
        sysadmd.stop()
        raise
    results = []
    try:
        for conns, inflight in SHAPES:
            f = measure(floor, f"wss://127.0.0.1:{floor.port}/", conns, inflight, args.seconds)
            s = measure(sysadmd, f"wss://127.0.0.1:{sysadmd.port}/", conns, inflight, args.seconds, key_file)
            row = {"shape": f"{conns}x{inflight}", "floor": f, "sysadmd": s,
                   "throughput_ratio": s["rps"] / f["rps"],
                   "cpu_per_req_ratio": s["server_cpu_us_per_req"] / f["server_cpu_us_per_req"]}
            results.append(row)
            print(f"{row['shape']:>6}: floor {f['rps']:8.0f} req/s {f['server_cpu_us_per_req']:6.0f} us/req p50 {f['p50_ms']:.2f} ms | "
                  f"sysadmd {s['rps']:8.0f} req/s {s['server_cpu_us_per_req']:6.0f} us/req p50 {s['p50_ms']:.2f} ms p99 {s['p99_ms']:.2f} ms | "
                  f"throughput x{row['throughput_ratio']:.2f} cpu/req x{row['cpu_per_req_ratio']:.2f} "
                  f"(client cpu {s['client_cpu_s']:.1f}s vs server {s['server_cpu_s']:.1f}s)", flush=True)
    finally:
        sysadmd.stop()
        floor.stop()
    save_results("rpc_bench", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
